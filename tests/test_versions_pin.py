"""Kept versions, rollback and pins (issue 15 item 2): upgrades keep the build they
replace where LocalAI does not look, a rollback puts it back atomically, a pin keeps a
backend out of unattended upgrades."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from backends.core import installed
from backends.core.install import BACKUP_SUFFIX, Installer
from backends.core.versions import VERSIONS_DIR, VersionStore
from backends.models import InstalledBackend, Job, Node
from backends.services import jobs, pipeline
from tests.base import PipelineTestCase, make_build
from tests.imagebuild import file, make_layer
from tests.registry_fixtures import RegistryProcess


class VersionsTestCase(PipelineTestCase):
    def upgrade(self, name: str, **body: Any) -> Any:
        with self.captureOnCommitCallbacks(execute=True):
            return self.api_post(f"/backends/upgrade/{name}", body or None)

    def rollback(self, name: str, version: str) -> Any:
        with self.captureOnCommitCallbacks(execute=True):
            return self.api_post(f"/api/backends/{name}/rollback", {"version": version})

    def versions(self, name: str) -> dict[str, Any]:
        r = self.api_get(f"/api/backends/{name}/versions")
        self.assertEqual(r.status_code, 200, r.content)
        body: dict[str, Any] = r.json()
        return body

    def new_build(self, name: str, text: str) -> None:
        make_build(self.sources / name, text)

    def reinstall(self, name: str) -> dict[str, Any]:
        status = self.status(self.apply(name, force=True))
        self.assertEqual(status["state"], "completed", status)
        return status

    def kept_run_files(self, name: str) -> list[str]:
        return [
            (k.folder / "run.sh").read_text()
            for k in VersionStore(self.backends).kept(name)
        ]


class KeepingVersionsTestCase(VersionsTestCase):
    def test_a_reinstall_keeps_the_previous_build_out_of_localais_listing(
        self,
    ) -> None:
        self.status(self.apply("cpu-bar"))
        self.new_build("cpu-bar", "v2")
        self.reinstall("cpu-bar")
        self.assertIn("v2", (self.backends / "cpu-bar" / "run.sh").read_text())
        self.assertEqual(len(self.kept_run_files("cpu-bar")), 1)
        self.assertIn("v1", self.kept_run_files("cpu-bar")[0])
        names = [row["Name"] for row in self.api_get("/backends").json()]
        self.assertEqual(names, ["cpu-bar"])
        self.assertEqual(
            sorted(p.name for p in self.backends.iterdir()), [VERSIONS_DIR, "cpu-bar"]
        )
        # LocalAI lists each direct subfolder with a run.sh: the store has none.
        self.assertFalse((self.backends / VERSIONS_DIR / "run.sh").exists())
        self.assertFalse((self.backends / VERSIONS_DIR / "metadata.json").exists())

    def test_an_upgrade_keeps_the_previous_version_with_its_metadata(self) -> None:
        self.write_gallery(version="1.0.0")
        self.gallery.sync(force=True)
        self.status(self.apply("foo"))
        self.write_gallery(version="2.0.0")
        self.gallery.sync(force=True)
        self.new_build("cpu-foo", "v2")
        self.assertEqual(self.status(self.upgrade("foo"))["state"], "completed")
        body = self.versions("foo")
        self.assertEqual(body["build"], "cpu-foo")
        self.assertEqual([v["version"] for v in body["versions"]], ["1.0.0"])
        kept = body["versions"][0]
        self.assertEqual(
            set(kept), {"id", "version", "digest", "installed_at", "kept_at", "size"}
        )
        self.assertGreater(kept["size"], 0)
        self.assertEqual(self.versions("cpu-foo")["versions"], body["versions"])

    def test_crash_recovery_leaves_kept_versions_alone(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.new_build("cpu-bar", "v2")
        self.reinstall("cpu-bar")
        actions = Installer(self.backends, keep_versions=1).recover()
        self.assertEqual(actions, [])
        self.assertEqual(len(self.kept_run_files("cpu-bar")), 1)

    def test_crash_recovery_keeps_a_backup_left_beside_its_new_build(self) -> None:
        self.status(self.apply("cpu-bar"))
        make_build(self.backends / ("cpu-bar" + BACKUP_SUFFIX), "old")
        actions = Installer(self.backends, keep_versions=1).recover()
        self.assertEqual(len(actions), 1, actions)
        self.assertIn("old", self.kept_run_files("cpu-bar")[0])

    @override_settings(LOCALAI_ADMIN_KEEP_VERSIONS=0)
    def test_keeping_zero_versions_keeps_none(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.new_build("cpu-bar", "v2")
        self.reinstall("cpu-bar")
        self.assertEqual([p.name for p in self.backends.iterdir()], ["cpu-bar"])
        self.assertEqual(self.versions("cpu-bar")["versions"], [])

    @override_settings(LOCALAI_ADMIN_KEEP_VERSIONS=2)
    def test_keeping_two_versions_prunes_the_oldest(self) -> None:
        self.status(self.apply("cpu-bar"))
        for text in ("v2", "v3", "v4"):
            self.new_build("cpu-bar", text)
            self.reinstall("cpu-bar")
        kept = self.kept_run_files("cpu-bar")
        self.assertEqual(len(kept), 2)
        self.assertIn("v3", kept[0])
        self.assertIn("v2", kept[1])

    def test_deleting_a_backend_removes_its_kept_versions(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.reinstall("cpu-bar")
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post("/backends/delete/cpu-bar")
        self.assertEqual(self.status(r)["state"], "completed")
        self.assertEqual(list(self.backends.iterdir()), [])

    def test_versions_of_a_backend_not_installed_is_404(self) -> None:
        r = self.api_get("/api/backends/cpu-bar/versions")
        self.assertEqual(r.status_code, 404)
        self.assertIn("not installed", r.json()["error"]["message"])


class RollbackTestCase(VersionsTestCase):
    def test_rollback_restores_the_previous_build_and_keeps_the_one_it_replaced(
        self,
    ) -> None:
        self.status(self.apply("cpu-bar"))
        self.new_build("cpu-bar", "v2")
        self.reinstall("cpu-bar")
        kept_id = self.versions("cpu-bar")["versions"][0]["id"]
        r = self.rollback("cpu-bar", kept_id)
        status = self.status(r)
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("v1", (self.backends / "cpu-bar" / "run.sh").read_text())
        self.assertIn("v2", self.kept_run_files("cpu-bar")[0])
        self.assertEqual(Job.objects.get(pk=r.json()["id"]).kind, Job.Kind.ROLLBACK)

    def test_rollback_of_an_unknown_version_is_404_and_starts_nothing(self) -> None:
        self.status(self.apply("cpu-bar"))
        jobs_before = Job.objects.count()
        r = self.rollback("cpu-bar", "20260101T000000000000Z")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json()["code"], "version_not_found")
        self.assertEqual(Job.objects.count(), jobs_before)
        self.assertIn("v1", (self.backends / "cpu-bar" / "run.sh").read_text())

    def test_rollback_without_a_version_is_400(self) -> None:
        self.status(self.apply("cpu-bar"))
        r = self.api_post("/api/backends/cpu-bar/rollback", {})
        self.assertEqual(r.status_code, 400)
        self.assertIn("version", r.json()["error"]["message"])

    def test_rollback_names_a_version_by_its_version_string(self) -> None:
        self.write_gallery(version="1.0.0")
        self.gallery.sync(force=True)
        self.status(self.apply("cpu-foo"))
        self.write_gallery(version="2.0.0")
        self.gallery.sync(force=True)
        self.status(self.upgrade("cpu-foo"))
        status = self.status(self.rollback("foo", "1.0.0"))
        self.assertEqual(status["state"], "completed", status)
        metadata = installed.read_metadata(self.backends / "cpu-foo")
        assert metadata is not None
        self.assertEqual(metadata.version, "1.0.0")
        self.assertEqual(InstalledBackend.objects.get(name="cpu-foo").version, "1.0.0")


@pytest.mark.registry
class RegistryRollbackTestCase(VersionsTestCase):
    @pytest.fixture(autouse=True)
    def _registry(self, registry: RegistryProcess) -> None:
        self.registry = registry

    def test_rollback_restores_the_previous_image_and_its_digest(self) -> None:
        run = "#!/bin/sh\necho {}\n"
        first = self.registry.push_image(
            "backends/rolling",
            "latest",
            [make_layer([file("run.sh", run.format("one"), 0o755)])],
        )
        ref = self.registry.ref("backends/rolling", "latest")
        self.gallery_file.write_text(f"- name: cpu-rolling\n  uri: {ref}\n")
        self.gallery.sync(force=True)
        self.status(self.apply("cpu-rolling"))
        second = self.registry.push_image(
            "backends/rolling",
            "latest",
            [make_layer([file("run.sh", run.format("two"), 0o755)])],
        )
        self.assertEqual(self.status(self.upgrade("cpu-rolling"))["state"], "completed")
        kept = self.versions("cpu-rolling")["versions"]
        self.assertEqual([v["digest"] for v in kept], [first.digest])

        status = self.status(self.rollback("cpu-rolling", kept[0]["id"]))
        self.assertEqual(status["state"], "completed", status)
        folder = self.backends / "cpu-rolling"
        self.assertIn("one", (folder / "run.sh").read_text())
        self.assertEqual(
            json.loads((folder / "metadata.json").read_text())["digest"], first.digest
        )
        self.assertEqual(
            InstalledBackend.objects.get(name="cpu-rolling").digest, first.digest
        )
        self.assertEqual(
            [v["digest"] for v in self.versions("cpu-rolling")["versions"]],
            [second.digest],
        )


class PinTestCase(VersionsTestCase):
    def flag_upgradable(self, *names: str) -> None:
        InstalledBackend.objects.filter(name__in=names).update(upgrade_available=True)

    def pin(self, name: str) -> Any:
        return self.api_post(f"/api/backends/{name}/pin")

    def test_pin_and_unpin_answer_the_new_state(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.assertEqual(
            self.pin("cpu-bar").json(), {"name": "cpu-bar", "pinned": True}
        )
        self.assertTrue(self.versions("cpu-bar")["pinned"])
        r = self.api_post("/api/backends/cpu-bar/unpin")
        self.assertEqual(r.json(), {"name": "cpu-bar", "pinned": False})

    def test_pinning_a_backend_not_installed_is_404(self) -> None:
        self.assertEqual(self.pin("cpu-bar").status_code, 404)

    def test_a_pinned_backend_is_refused_an_upgrade_without_force(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.pin("cpu-bar")
        r = self.upgrade("cpu-bar")
        self.assertEqual(r.status_code, 409)
        self.assertEqual(r.json()["code"], "pinned")
        self.assertFalse(Job.objects.filter(kind=Job.Kind.UPGRADE).exists())
        self.assertEqual(
            self.status(self.upgrade("cpu-bar", force=True))["state"], "completed"
        )

    def test_a_pinned_meta_holds_its_build_too(self) -> None:
        self.status(self.apply("foo"))
        self.pin("foo")
        self.assertEqual(self.upgrade("cpu-foo").json()["code"], "pinned")

    def test_upgrade_all_leaves_pinned_backends_out(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.status(self.apply("cpu-foo"))
        self.pin("cpu-bar")
        self.flag_upgradable("cpu-bar", "cpu-foo")
        with self.captureOnCommitCallbacks(execute=True):
            started, refused = jobs.upgrade_all(requested_by="alice")
        self.assertEqual((started, refused), (["cpu-foo"], []))

    def test_a_pin_survives_a_reconcile_from_disk(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.pin("cpu-bar")
        self.new_build("cpu-bar", "v2")
        self.status(self.upgrade("cpu-bar", force=True))
        pipeline.reconcile(Node.objects.local())
        self.assertTrue(InstalledBackend.objects.get(name="cpu-bar").pinned)


class CommandsTestCase(VersionsTestCase):
    def call(self, *args: str) -> str:
        out = io.StringIO()
        call_command(*args, stdout=out, stderr=io.StringIO())
        return out.getvalue()

    def test_rollback_backend_lists_kept_versions_then_rolls_back(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.new_build("cpu-bar", "v2")
        self.reinstall("cpu-bar")
        kept_id = VersionStore(self.backends).kept("cpu-bar")[0].id
        self.assertIn(kept_id, self.call("rollback_backend", "cpu-bar"))
        self.assertIn(
            "rolled cpu-bar back",
            self.call("rollback_backend", "cpu-bar", "--to", kept_id),
        )
        self.assertIn("v1", (self.backends / "cpu-bar" / "run.sh").read_text())

    def test_upgrade_backend_of_a_pinned_backend_needs_force(self) -> None:
        self.status(self.apply("cpu-bar"))
        self.api_post("/api/backends/cpu-bar/pin")
        with self.assertRaisesMessage(CommandError, "pinned"):
            self.call("upgrade_backend", "cpu-bar")
        self.assertIn("upgraded", self.call("upgrade_backend", "cpu-bar", "--force"))
