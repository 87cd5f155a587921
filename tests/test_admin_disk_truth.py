"""The Django admin never says it deleted what is still on disk: rows that mirror a
disk (installed backends), a worker's record (jobs) or a registered host (nodes) are
read-only there, and their actions go through the same services as the dashboard."""

from __future__ import annotations

from django.contrib.auth.models import User

from backends.models import InstalledBackend, Job, Node
from backends.services import jobs, pipeline
from tests.base import BaseTestCase, queued_tasks


class AdminDiskTruthTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.root = User.objects.create_superuser("root", password="password")
        self.client.force_login(self.root)
        self.folder = self.install_on_disk("cpu-whisper")
        pipeline.reconcile(Node.objects.local())
        self.row = InstalledBackend.objects.get(name="cpu-whisper")

    def actions(self, model: str) -> list[str]:
        r = self.client.get(f"/admin/backends/{model}/")
        return [value for value, _ in r.context["action_form"].fields["action"].choices]

    def test_it_offers_no_row_delete_for_what_the_disk_or_a_worker_owns(self) -> None:
        for model in ("installedbackend", "job", "node"):
            self.assertNotIn("delete_selected", self.actions(model), model)

    def test_it_refuses_the_delete_page_of_an_installed_backend(self) -> None:
        r = self.client.post(
            f"/admin/backends/installedbackend/{self.row.pk}/delete/", {"post": "yes"}
        )
        self.assertEqual(r.status_code, 403)
        self.assertTrue(self.folder.exists())
        self.assertTrue(InstalledBackend.objects.filter(pk=self.row.pk).exists())

    def test_it_refuses_to_delete_a_job_record(self) -> None:
        job = Job.objects.create(kind=Job.Kind.INSTALL, target="whisper")
        r = self.client.post(f"/admin/backends/job/{job.pk}/delete/", {"post": "yes"})
        self.assertEqual(r.status_code, 403)
        self.assertTrue(Job.objects.filter(pk=job.pk).exists())

    def test_it_refuses_to_delete_or_edit_a_node(self) -> None:
        node = Node.objects.local()
        r = self.client.post(f"/admin/backends/node/{node.pk}/delete/", {"post": "yes"})
        self.assertEqual(r.status_code, 403)
        r = self.client.post(
            f"/admin/backends/node/{node.pk}/change/", {"status": "draining"}
        )
        self.assertEqual(r.status_code, 403)

    def test_the_delete_action_starts_a_delete_job_that_removes_the_folder(
        self,
    ) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(
                "/admin/backends/installedbackend/",
                {"action": "delete_from_disk", "_selected_action": [self.row.pk]},
                follow=True,
            )
        job = Job.objects.get(kind=Job.Kind.DELETE)
        self.assertContains(r, f"/jobs/{job.pk}/")
        self.assertContains(r, "Delete of cpu-whisper on")
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.COMPLETED)
        self.assertFalse(self.folder.exists())

    def test_the_delete_action_says_why_it_started_nothing(self) -> None:
        with queued_tasks(), self.captureOnCommitCallbacks(execute=True):
            upgrade = jobs.upgrade("cpu-whisper")
        with queued_tasks():
            r = self.client.post(
                "/admin/backends/installedbackend/",
                {"action": "delete_from_disk", "_selected_action": [self.row.pk]},
                follow=True,
            )
        self.assertContains(r, "not started")
        self.assertContains(r, str(upgrade.pk))
        self.assertFalse(Job.objects.filter(kind=Job.Kind.DELETE).exists())
        self.assertTrue(self.folder.exists())

    def test_the_delete_action_is_not_offered_without_the_delete_role(self) -> None:
        self.client.force_login(self.carol)
        carol = User.objects.get(username="carol")
        carol.is_staff = True
        carol.save()
        r = self.client.get("/admin/backends/installedbackend/")
        if r.status_code == 200:
            choices = [v for v, _ in r.context["action_form"].fields["action"].choices]
            self.assertNotIn("delete_from_disk", choices)
        else:
            self.assertEqual(r.status_code, 403)

    def test_the_cancel_action_cancels_a_queued_job(self) -> None:
        job = Job.objects.create(kind=Job.Kind.INSTALL, target="whisper")
        self.client.post(
            "/admin/backends/job/",
            {"action": "cancel", "_selected_action": [job.pk]},
            follow=True,
        )
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.CANCELLED)

    def test_the_drain_action_drains_through_the_node_rules(self) -> None:
        local = Node.objects.local()
        agent = Node.objects.create(name="gpu-1", is_local=False)
        r = self.client.post(
            "/admin/backends/node/",
            {"action": "drain", "_selected_action": [local.pk, agent.pk]},
            follow=True,
        )
        agent.refresh_from_db()
        self.assertEqual(agent.status, Node.Status.DRAINING)
        self.assertContains(r, "it is never drained")
