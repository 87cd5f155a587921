"""Plans: what an install, upgrade, delete or rollback would do, without doing it."""

from __future__ import annotations

import hashlib
import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import override_settings

from backends.core.versions import VersionStore
from backends.models import InstalledBackend, Job
from tests.base import PipelineTestCase, make_build
from tests.imagebuild import file, make_layer
from tests.registry_fixtures import RegistryProcess
from tests.test_models_in_use import write_model


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a digest of its content: equal means untouched."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
    return found


def database() -> tuple[list[tuple[object, ...]], ...]:
    return (
        list(Job.objects.values_list("pk", "state")),
        list(InstalledBackend.objects.values_list("name", "version", "digest")),
    )


class PlanTestCase(PipelineTestCase):
    def plan(self, action: str, target: str, **extra: object):
        return self.api_post(
            "/api/backends/plan", {"action": action, "id": target, **extra}
        )

    def test_a_meta_install_plan_names_the_chosen_build_and_why(self) -> None:
        body = self.plan("install", "foo").json()
        self.assertEqual(body["backend"], "foo")
        self.assertEqual(body["build"], "cpu-foo")
        self.assertIn("cpu-foo chosen for default", body["explanation"])
        self.assertEqual(
            [(f["action"], f["name"]) for f in body["folders"]],
            [("create", "cpu-foo"), ("create", "foo")],
        )
        self.assertTrue(body["changes"])
        source = body["download"]["sources"][0]
        self.assertEqual(source["how"], "local")
        self.assertGreater(body["download"]["bytes"], 0)
        self.assertTrue(body["disk"]["enough"])

    def test_a_plan_warns_of_the_disk_space_the_job_then_lacks(self) -> None:
        free = shutil.disk_usage(self.backends).free
        with override_settings(LOCALAI_ADMIN_DISK_RESERVE_BYTES=free + (1 << 30)):
            body = self.plan("install", "cpu-foo").json()
            job = self.status(self.apply("cpu-foo"))
        self.assertFalse(body["disk"]["enough"])
        self.assertTrue(any("not enough disk space" in w for w in body["warnings"]))
        self.assertEqual(job["state"], "failed")
        self.assertIn("not enough disk space", job["error"])

    def test_a_delete_plan_lists_the_folders_removed_and_kept(self) -> None:
        self.status(self.apply("foo"))
        self.status(self.apply("foo-twin"))
        body = self.plan("delete", "foo").json()
        self.assertEqual(
            [(f["action"], f["name"]) for f in body["folders"]],
            [("remove", "foo"), ("keep", "cpu-foo")],
        )
        self.assertIn("foo-twin", body["folders"][1]["note"])
        self.assertEqual(body["download"]["bytes"], 0)

    def test_a_delete_plan_names_the_models_that_would_break(self) -> None:
        models = self.gallery_file.parent / "models"
        self.status(self.apply("foo"))
        write_model(models, "chat.yaml", "foo", name="chat")
        with override_settings(LOCALAI_MODELS_PATH=models):
            body = self.plan("delete", "foo").json()
            forced = self.plan("delete", "foo", force=True).json()
        self.assertEqual(body["models"], ["chat"])
        self.assertFalse(body["changes"])
        self.assertTrue(forced["changes"])

    def test_a_rollback_plan_names_the_version_coming_back_and_the_one_kept(
        self,
    ) -> None:
        self.status(self.apply("cpu-bar"))
        old = make_build(self.backends / "old-bar", "old")
        (old / "metadata.json").write_text('{"name": "cpu-bar", "version": "0.9"}')
        kept = VersionStore(self.backends).keep(old, "cpu-bar", 1)
        assert kept is not None
        models = self.gallery_file.parent / "models"
        write_model(models, "chat.yaml", "cpu-bar", name="chat")
        before = snapshot(self.backends), database()
        with override_settings(LOCALAI_MODELS_PATH=models):
            body = self.plan("rollback", "cpu-bar", version="0.9").json()
            newest = self.plan("rollback", "cpu-bar").json()
        self.assertEqual((body["backend"], body["build"]), ("cpu-bar", "cpu-bar"))
        self.assertIn("cpu-bar goes back to 0.9", body["explanation"])
        self.assertEqual(
            [(f["action"], f["name"]) for f in body["folders"]],
            [("replace", "cpu-bar"), ("keep", "cpu-bar")],
        )
        self.assertIn(kept.id, body["folders"][0]["note"])
        self.assertEqual(body["models"], ["chat"])
        self.assertEqual(newest["folders"], body["folders"])
        self.assertEqual((snapshot(self.backends), database()), before)

    def test_a_rollback_plan_without_a_kept_version_is_404(self) -> None:
        self.status(self.apply("cpu-bar"))
        r = self.plan("rollback", "cpu-bar")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json()["code"], "version_not_found")
        r = self.plan("rollback", "cpu-bar", version="7.7")
        self.assertEqual(r.status_code, 404)

    def test_a_plan_never_changes_anything(self) -> None:
        self.status(self.apply("cpu-bar"))
        before = snapshot(self.backends), database()
        for action, target in (
            ("install", "foo"),
            ("install", "cpu-bar"),
            ("upgrade", "cpu-bar"),
            ("delete", "cpu-bar"),
        ):
            for force in (False, True):
                r = self.plan(action, target, force=force)
                self.assertEqual(r.status_code, 200, r.content)
        self.assertEqual((snapshot(self.backends), database()), before)

    def test_an_installed_backend_plans_nothing_without_force(self) -> None:
        self.status(self.apply("cpu-bar"))
        body = self.plan("install", "cpu-bar").json()
        self.assertFalse(body["changes"])
        self.assertEqual(body["folders"], [])
        forced = self.plan("install", "cpu-bar", force=True).json()
        self.assertEqual(forced["folders"][0]["action"], "replace")

    def test_an_unknown_backend_or_action_is_a_clear_error(self) -> None:
        r = self.plan("install", "nope")
        self.assertEqual(r.status_code, 404)
        self.assertIn("nope", r.json()["error"]["message"])
        self.assertEqual(self.plan("delete", "cpu-bar").status_code, 404)
        r = self.plan("explode", "cpu-bar")
        self.assertEqual(r.status_code, 400)
        self.assertIn("action", r.json()["error"]["message"])

    def test_a_viewer_may_ask_for_a_plan(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.post(
            "/api/backends/plan",
            {"action": "install", "id": "foo"},
            content_type="application/json",
        )
        self.assertEqual(r.status_code, 200)


@pytest.mark.registry
class RegistryPlanTestCase(PipelineTestCase):
    @pytest.fixture(autouse=True)
    def _registry(self, registry: RegistryProcess) -> None:
        self.registry = registry

    def test_the_download_size_comes_from_the_image_manifest(self) -> None:
        layer = make_layer([file("run.sh", "#!/bin/sh\necho hi\n", 0o755)])
        self.registry.push_image("backends/plan", "v1", [layer])
        ref = self.registry.ref("backends/plan", "v1")
        self.gallery_file.write_text(f"- name: cpu-plan\n  uri: {ref}\n")
        self.gallery.sync(force=True)
        body = self.api_post(
            "/api/backends/plan", {"action": "install", "id": "cpu-plan"}
        ).json()
        self.assertEqual(body["download"]["sources"][0]["how"], "manifest")
        self.assertEqual(body["download"]["bytes"], len(layer.data))
        self.assertEqual(body["disk"]["needed"], len(layer.data))


class DryRunTestCase(PipelineTestCase):
    def test_dry_run_prints_the_plan_and_changes_nothing(self) -> None:
        out = StringIO()
        call_command("install_backend", "foo", "--dry-run", stdout=out)
        self.assertIn("Plan: install foo", out.getvalue())
        self.assertIn("create", out.getvalue())
        self.assertIn("cpu-foo chosen", out.getvalue())
        self.assertEqual(list(self.backends.iterdir()), [])
        self.assertFalse(Job.objects.exists())

    def test_delete_and_upgrade_dry_runs_print_their_plans(self) -> None:
        self.status(self.apply("cpu-bar"))
        out = StringIO()
        call_command("delete_backend", "cpu-bar", "--dry-run", stdout=out)
        self.assertIn("remove", out.getvalue())
        call_command("upgrade_backend", "cpu-bar", "--dry-run", stdout=out)
        self.assertIn("Plan: upgrade cpu-bar", out.getvalue())
        self.assertTrue((self.backends / "cpu-bar" / "run.sh").exists())


class MetaPointerTestCase(PipelineTestCase):
    """A meta's build is found by one pointer rule: its plan, its job's lock and the
    upgrade job itself name the same build, whatever its folder is called."""

    def test_an_upgrade_of_a_meta_replaces_the_build_its_plan_names(self) -> None:
        self.status(self.apply("foo-twin"))
        # A meta folder named apart from its backend (metadata.json names it).
        (self.backends / "foo-twin").rename(self.backends / "twin-meta")
        plan = self.api_post(
            "/api/backends/plan", {"action": "upgrade", "id": "foo-twin"}
        ).json()
        with self.captureOnCommitCallbacks(execute=True):
            started = self.api_post("/backends/upgrade/foo-twin")
        job = self.status(started)
        self.assertEqual(plan["build"], "cpu-foo")
        self.assertEqual(job["state"], "completed", job)
        self.assertIn("upgraded cpu-foo", job["outcome"])
