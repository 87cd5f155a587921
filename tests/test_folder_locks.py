"""One job at a time per backend folder, whatever name reaches it: a meta's name, its
build's name, or an alias. A meta's jobs change its build's folder (an upgrade replaces
it, a delete removes both), so they lock that folder."""

from __future__ import annotations

from backends.models import Job
from tests.base import PipelineTestCase, queued_tasks


class FolderLockTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.status(self.apply("foo"))  # the meta foo, pointing at cpu-foo
        self.enterContext(queued_tasks())

    def test_deleting_a_build_while_its_meta_upgrades_is_409(self) -> None:
        upgrade = self.api_post("/backends/upgrade/foo")
        self.assertEqual(upgrade.status_code, 200, upgrade.content)

        r = self.api_post("/backends/delete/cpu-foo")

        self.assertEqual(r.status_code, 409, r.content)
        error = r.json()["error"]
        self.assertEqual(r.json()["code"], "backend_busy")
        self.assertEqual(r.json()["job_id"], upgrade.json()["id"])
        self.assertIn("an upgrade of foo is queued", error["message"])
        self.assertIn("wait for it to finish or cancel it", error["message"])
        self.assertEqual(Job.objects.active().count(), 1)

    def test_deleting_a_meta_while_its_build_upgrades_is_409(self) -> None:
        self.api_post("/backends/upgrade/cpu-foo")

        r = self.api_post("/backends/delete/foo")

        self.assertEqual(r.status_code, 409, r.content)
        self.assertIn("an upgrade of cpu-foo is queued", r.json()["error"]["message"])

    def test_a_gallery_install_of_the_meta_locks_its_build(self) -> None:
        self.api_post("/backends/delete/cpu-foo")

        r = self.api_post("/backends/apply", {"id": "foo", "force": True})

        self.assertEqual(r.status_code, 409, r.content)
        self.assertIn("a delete of cpu-foo is queued", r.json()["error"]["message"])

    def test_the_installed_page_says_why_a_delete_did_not_start(self) -> None:
        self.client.force_login(self.alice)
        self.client.post("/installed/foo/upgrade/")

        r = self.client.post("/installed/cpu-foo/delete/", follow=True)

        self.assertContains(r, "Not started: cannot delete cpu-foo now")
        self.assertContains(r, "an upgrade of foo is queued")
        self.assertEqual(Job.objects.active().count(), 1)
        self.assertTrue((self.backends / "cpu-foo" / "run.sh").exists())
