from __future__ import annotations

import json

from django.test import override_settings

from backends.models import InstalledBackend, Job
from tests.base import PipelineTestCase, make_build


class DeleteTestCase(PipelineTestCase):
    def delete(self, name: str):
        with self.captureOnCommitCallbacks(execute=True):
            return self.api_post(f"/backends/delete/{name}")

    def test_deleting_a_meta_removes_it_and_its_build(self) -> None:
        self.status(self.apply("foo"))
        status = self.status(self.delete("foo"))
        self.assertEqual(status["state"], "completed", status)
        self.assertTrue(status["deletion"])
        self.assertEqual(list(self.backends.iterdir()), [])
        self.assertFalse(InstalledBackend.objects.exists())

    def test_a_build_another_meta_uses_is_kept(self) -> None:
        self.status(self.apply("foo"))
        self.status(self.apply("foo-twin"))
        self.status(self.delete("foo"))
        self.assertEqual(
            sorted(p.name for p in self.backends.iterdir()), ["cpu-foo", "foo-twin"]
        )

    def test_deleting_by_gallery_id_and_by_alias_works(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.assertEqual(
            self.status(self.delete("localai@cpu-bar"))["state"], "completed"
        )
        self.status(self.apply("cpu-foo"))
        self.assertEqual(self.status(self.delete("foo"))["state"], "completed")
        self.assertFalse((self.backends / "cpu-foo").exists())

    def test_deleting_something_not_installed_is_404(self) -> None:
        r = self.delete("cpu-bar")
        self.assertEqual(r.status_code, 404)
        self.assertFalse(Job.objects.exists())

    def test_system_backends_cannot_be_deleted(self) -> None:
        system = self.gallery_file.parent / "system"
        make_build(system / "piper")
        with override_settings(LOCALAI_BACKENDS_SYSTEM_PATH=system):
            r = self.delete("piper")
        self.assertEqual(r.status_code, 409)
        self.assertTrue((system / "piper" / "run.sh").exists())

    # LocalAI's meta delete follows meta_backend_for outside the root (backends 7).
    def test_a_meta_pointing_outside_the_folder_never_deletes_outside(self) -> None:
        victim = make_build(self.gallery_file.parent / "victim")
        meta = self.backends / "evil"
        meta.mkdir()
        (meta / "metadata.json").write_text(
            json.dumps({"name": "evil", "meta_backend_for": "../victim"})
        )
        self.status(self.delete("evil"))
        self.assertTrue((victim / "run.sh").exists())


class UpgradeTestCase(PipelineTestCase):
    def upgrade(self, name: str):
        with self.captureOnCommitCallbacks(execute=True):
            return self.api_post(f"/backends/upgrade/{name}")

    def test_it_detects_and_installs_a_new_gallery_version(self) -> None:
        self.write_gallery(version="1.0.0")
        self.gallery.sync(force=True)
        self.status(self.apply("foo"))
        self.write_gallery(version="2.0.0")
        self.gallery.sync(force=True)
        make_build(self.sources / "cpu-foo", "v2")
        with self.captureOnCommitCallbacks(execute=True):
            self.api_post("/backends/upgrades/check")
        info = self.api_get("/backends/upgrades").json()
        self.assertEqual(info["cpu-foo"]["installed_version"], "1.0.0")
        self.assertEqual(info["cpu-foo"]["available_version"], "2.0.0")

        status = self.status(self.upgrade("foo"))
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("v2", (self.backends / "cpu-foo" / "run.sh").read_text())
        metadata = json.loads((self.backends / "cpu-foo" / "metadata.json").read_text())
        self.assertEqual(metadata["version"], "2.0.0")
        self.assertEqual(metadata["alias"], "foo")
        self.assertEqual(self.api_get("/backends/upgrades").json(), {})

    def test_a_failed_upgrade_keeps_the_old_build(self) -> None:
        self.status(self.apply("cpu-bar"))
        (self.sources / "cpu-bar" / "run.sh").unlink()
        status = self.status(self.upgrade("cpu-bar"))
        self.assertEqual(status["state"], "failed")
        self.assertIn("v1", (self.backends / "cpu-bar" / "run.sh").read_text())
        self.assertEqual([p.name for p in self.backends.iterdir()], ["cpu-bar"])

    def test_upgrading_something_not_installed_is_404(self) -> None:
        self.assertEqual(self.upgrade("cpu-bar").status_code, 404)

    def test_equal_versions_are_not_an_upgrade(self) -> None:
        self.write_gallery(version="1.0.0")
        self.gallery.sync(force=True)
        self.status(self.apply("cpu-foo"))
        self.api_post("/backends/upgrades/check")
        self.assertEqual(self.api_get("/backends/upgrades").json(), {})
