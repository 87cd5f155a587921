from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from django.conf import settings
from django.test import override_settings

from backends.core import installed
from backends.core.install import Installer
from backends.core.installed import folder_size, human_size
from backends.models import InstalledBackend, Job, Node
from tests.base import BaseTestCase, queued_tasks
from tests.test_models_in_use import write_model

HTMX = {"HX-Request": "true"}


class InstalledTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.node = Node.objects.local()
        build = self.install_on_disk("cpu-llama-cpp", alias="llama-cpp")
        metadata = json.loads((build / "metadata.json").read_text())
        metadata |= {
            "version": "1.2.3",
            "digest": "sha256:0123456789abcdef0123456789abcdef",
            "installed_at": "2026-01-02T03:04:05+00:00",
        }
        (build / "metadata.json").write_text(json.dumps(metadata))
        (build / "lib.so").write_bytes(b"x" * 3000)
        self.install_on_disk("llama-cpp-meta", meta_for="cpu-llama-cpp")
        self.client.force_login(self.bob)

    def test_it_requires_login(self) -> None:
        self.client.logout()
        self.assertRedirects(
            self.client.get("/installed/"), "/accounts/login/?next=/installed/"
        )

    def test_it_lists_builds_and_metas_but_not_aliases_as_rows(self) -> None:
        r = self.client.get("/installed/")
        self.assertContains(r, 'id="installed-cpu-llama-cpp"')
        self.assertContains(r, 'id="installed-llama-cpp-meta"')
        self.assertNotContains(r, 'id="installed-llama-cpp"')
        self.assertContains(r, "alias llama-cpp")
        self.assertContains(r, "→ cpu-llama-cpp")
        self.assertContains(r, "used by llama-cpp-meta")

    def test_it_shows_version_short_digest_size_and_install_time(self) -> None:
        r = self.client.get("/installed/")
        self.assertContains(r, "1.2.3")
        self.assertContains(r, "sha256:0123456789ab…")
        self.assertContains(r, 'title="sha256:0123456789abcdef0123456789abcdef"')
        size = human_size(
            folder_size(self.gallery_file.parent / "backends" / "cpu-llama-cpp")
        )
        self.assertContains(r, size.replace(" ", "\xa0"))
        self.assertContains(r, "2026-01-02 03:04")

    def test_a_meta_shows_the_version_and_digest_of_its_build(self) -> None:
        r = self.client.get("/installed/")
        self.assertContains(r, "<td>1.2.3</td>", count=2, html=True)
        self.assertContains(r, "sha256:0123456789ab…", count=2)

    def test_an_image_installed_without_a_policy_shows_as_not_verified(self) -> None:
        r = self.client.get("/installed/")
        self.assertContains(r, "not verified", count=2)
        self.assertNotContains(r, "signature verified")

    def test_a_verified_image_shows_the_policy_that_verified_it(self) -> None:
        build = self.gallery_file.parent / "backends" / "cpu-llama-cpp"
        metadata = json.loads((build / "metadata.json").read_text())
        metadata["verified_by"] = "gallery localai: key SHA256:0011223344556677"
        (build / "metadata.json").write_text(json.dumps(metadata))
        r = self.client.get("/installed/")
        self.assertContains(r, "signature verified", count=2)
        self.assertContains(r, "gallery localai: key SHA256:0011223344556677")

    def test_it_shows_upgrades_from_the_last_check(self) -> None:
        InstalledBackend.objects.create(
            node=self.node,
            name="cpu-llama-cpp",
            upgrade_available=True,
            available_version="1.3.0",
        )
        self.client.force_login(self.alice)
        r = self.client.get("/installed/")
        self.assertContains(r, "1.3.0 available")
        self.assertContains(r, "Upgrade all (1)")
        # The upgrade starts from its confirmation page, which shows the plan first.
        self.assertContains(r, 'href="/installed/cpu-llama-cpp/upgrade/"')

    def test_it_flags_a_meta_whose_build_is_gone(self) -> None:
        self.install_on_disk("whisper", meta_for="cpu-whisper")
        self.assertContains(self.client.get("/installed/"), "(build missing)")

    def test_it_lists_system_backends_without_actions(self) -> None:
        system = self.gallery_file.parent / "system"
        (system / "piper").mkdir(parents=True)
        (system / "piper" / "run.sh").write_text("#!/bin/sh\n")
        self.client.force_login(self.alice)
        with override_settings(LOCALAI_BACKENDS_SYSTEM_PATH=system):
            r = self.client.get("/installed/")
        self.assertContains(r, ">system</span>")
        self.assertNotContains(r, "/installed/piper/delete/")

    def test_it_hides_every_action_from_non_staff(self) -> None:
        r = self.client.get("/installed/")
        self.assertNotContains(r, "Reinstall</button>")
        self.assertNotContains(r, "/delete/")
        self.assertNotContains(r, "Check for upgrades now")

    def test_it_shows_actions_to_staff(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.get("/installed/")
        self.assertContains(r, 'action="/installed/cpu-llama-cpp/reinstall/"')
        self.assertContains(r, 'href="/installed/llama-cpp-meta/delete/"')
        self.assertContains(r, "Check for upgrades now")

    def test_it_shows_a_running_job_on_its_row(self) -> None:
        job = Job.objects.create(
            kind=Job.Kind.UPGRADE,
            target="cpu-llama-cpp",
            dedup_key="cpu-llama-cpp",
            node=self.node,
            state=Job.State.RUNNING,
        )
        self.assertContains(self.client.get("/installed/"), f'hx-get="/jobs/{job.pk}/"')

    def test_it_leaves_out_jobs_on_other_nodes(self) -> None:
        agent = Node.objects.create(name="gpu-node")
        parent = Job.objects.create(
            kind=Job.Kind.INSTALL, target="cpu-llama-cpp", dedup_key="cpu-llama-cpp"
        )
        child = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="cpu-llama-cpp",
            dedup_key="cpu-llama-cpp",
            node=agent,
            parent=parent,
        )
        r = self.client.get("/installed/")
        self.assertNotContains(r, f'id="job-{parent.pk}"')
        self.assertNotContains(r, f'id="job-{child.pk}"')

    def test_it_returns_the_rows_for_htmx(self) -> None:
        r = self.client.get("/installed/", headers=HTMX)
        self.assertTemplateNotUsed(r, "base.html")
        self.assertTrue(
            r.content.decode().lstrip().startswith('<section id="installed-rows"')
        )

    def test_it_says_so_when_nothing_is_installed(self) -> None:
        for name in ("cpu-llama-cpp", "llama-cpp-meta"):
            for path in sorted(
                (self.gallery_file.parent / "backends" / name).rglob("*"), reverse=True
            ):
                path.unlink()
            (self.gallery_file.parent / "backends" / name).rmdir()
        self.assertContains(self.client.get("/installed/"), "Nothing is installed yet")


class InstalledMutationsTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.node = Node.objects.local()
        self.install_on_disk("cpu-whisper", alias="whisper")
        self.client.force_login(self.alice)

    # Issue 15: GET used to be refused (405); it now shows the confirmation with the plan.
    def test_upgrade_on_get_shows_the_plan_and_starts_nothing(self) -> None:
        self.gallery.sync()
        r = self.client.get("/installed/cpu-whisper/upgrade/")
        self.assertContains(r, "Upgrade cpu-whisper?")
        self.assertContains(r, "<strong>replace</strong>", html=True)
        self.assertContains(r, "backends/cpu-whisper")
        self.assertFalse(Job.objects.exists())

    def test_upgrade_is_forbidden_to_non_staff(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(
            self.client.post("/installed/cpu-whisper/upgrade/").status_code, 403
        )
        self.assertFalse(Job.objects.exists())

    def test_upgrade_sends_anonymous_users_to_log_in(self) -> None:
        self.client.logout()
        r = self.client.post("/installed/cpu-whisper/upgrade/")
        self.assertEqual(r.status_code, 302)
        self.assertTrue(r["Location"].startswith("/accounts/login/"))

    def test_upgrade_starts_an_upgrade_job(self) -> None:
        r = self.client.post("/installed/cpu-whisper/upgrade/")
        self.assertRedirects(r, "/installed/", fetch_redirect_response=False)
        job = Job.objects.get()
        self.assertEqual(
            (job.kind, job.target, job.requested_by),
            ("upgrade", "cpu-whisper", "alice"),
        )

    def test_upgrade_answers_404_for_what_is_not_installed(self) -> None:
        self.assertEqual(self.client.post("/installed/nope/upgrade/").status_code, 404)
        self.assertEqual(
            self.client.post("/installed/whisper/upgrade/").status_code, 404
        )
        self.assertEqual(
            self.client.post("/installed/..%2Fetc/upgrade/").status_code, 404
        )

    def test_reinstall_starts_a_forced_install(self) -> None:
        self.client.post("/installed/cpu-whisper/reinstall/")
        job = Job.objects.get()
        self.assertEqual(
            (job.kind, job.target, job.force), ("install", "cpu-whisper", True)
        )

    def test_a_second_request_reuses_the_active_job(self) -> None:
        self.client.post("/installed/cpu-whisper/upgrade/")
        self.client.post("/installed/cpu-whisper/upgrade/")
        self.assertEqual(Job.objects.count(), 1)

    def test_a_conflicting_request_says_why_it_did_not_start(self) -> None:
        self.client.post("/installed/cpu-whisper/upgrade/")
        r = self.client.post("/installed/cpu-whisper/reinstall/", follow=True)
        self.assertContains(r, "Not started")
        self.assertEqual(Job.objects.count(), 1)

    def test_system_backends_cannot_be_changed(self) -> None:
        system = self.gallery_file.parent / "system"
        (system / "piper").mkdir(parents=True)
        (system / "piper" / "run.sh").write_text("#!/bin/sh\n")
        with override_settings(LOCALAI_BACKENDS_SYSTEM_PATH=system):
            r = self.client.post("/installed/piper/upgrade/", follow=True)
        self.assertContains(r, "system backend &#x27;piper&#x27; cannot be")
        self.assertFalse(Job.objects.exists())

    def test_upgrade_all_starts_a_job_per_upgradable_backend(self) -> None:
        self.install_on_disk("cpu-llama-cpp")
        for name in ("cpu-whisper", "cpu-llama-cpp"):
            InstalledBackend.objects.create(
                node=self.node, name=name, upgrade_available=True
            )
        r = self.client.post("/installed/upgrade-all/", follow=True)
        self.assertContains(r, "Upgrade started for cpu-llama-cpp, cpu-whisper")
        self.assertEqual(
            sorted(Job.objects.values_list("target", flat=True)),
            ["cpu-llama-cpp", "cpu-whisper"],
        )

    def test_upgrade_all_says_when_everything_is_up_to_date(self) -> None:
        r = self.client.post("/installed/upgrade-all/", follow=True)
        self.assertContains(r, "Every backend is up to date")

    def test_check_for_upgrades_runs_the_check(self) -> None:
        r = self.client.post("/installed/check-upgrades/", follow=True)
        self.assertContains(r, "Checking the galleries for upgrades")
        self.assertIsNotNone(
            InstalledBackend.objects.get(name="cpu-whisper").checked_at
        )

    def test_check_for_upgrades_is_forbidden_to_non_staff(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(
            self.client.post("/installed/check-upgrades/").status_code, 403
        )


class InstalledDeleteTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.build = self.install_on_disk("cpu-llama-cpp", alias="llama-cpp")
        self.meta = self.install_on_disk("llama-cpp", meta_for="cpu-llama-cpp")
        self.client.force_login(self.alice)

    def test_the_list_shows_a_meta_named_like_the_alias_of_its_build(self) -> None:
        r = self.client.get("/installed/")
        self.assertContains(r, 'id="installed-llama-cpp"')
        self.assertContains(r, 'href="/installed/llama-cpp/delete/"')

    def test_it_names_the_meta_folder_and_its_build(self) -> None:
        r = self.client.get("/installed/llama-cpp/delete/")
        self.assertContains(r, "Delete llama-cpp?")
        self.assertContains(r, f"<code>{self.meta}</code>", html=True)
        self.assertContains(r, f"<code>{self.build}</code>", html=True)

    def test_it_keeps_a_build_another_meta_still_uses(self) -> None:
        self.install_on_disk("llama-cpp-development", meta_for="cpu-llama-cpp")
        r = self.client.get("/installed/llama-cpp/delete/")
        self.assertContains(
            r, "build cpu-llama-cpp is kept: still used by llama-cpp-development"
        )
        self.assertNotContains(r, f"<code>{self.build}</code>", html=True)

    def test_it_lists_exactly_the_folders_the_installer_removes(self) -> None:
        other_meta = self.install_on_disk("whisper", meta_for="cpu-whisper")
        plan = Installer(self.build.parent).plan_delete("whisper")
        self.assertEqual(plan, [other_meta])  # its build is not there to remove
        r = self.client.get("/installed/whisper/delete/")
        self.assertContains(r, f"<code>{other_meta}</code>", html=True)
        self.assertEqual(r.content.decode().count("<code>"), 1)

    def test_it_warns_that_deleting_a_build_breaks_its_meta(self) -> None:
        r = self.client.get("/installed/cpu-llama-cpp/delete/")
        self.assertContains(r, f"<code>{self.build}</code>", html=True)
        self.assertContains(r, "Meta backend llama-cpp points at this build")

    def test_it_starts_the_delete_on_post(self) -> None:
        r = self.client.post("/installed/llama-cpp/delete/")
        job = Job.objects.get()
        self.assertEqual((job.kind, job.target), ("delete", "llama-cpp"))
        self.assertRedirects(r, f"/jobs/{job.pk}/", fetch_redirect_response=False)
        self.assertTrue(self.meta.exists())  # the job does the work, not the view

    def test_it_is_forbidden_to_non_staff_even_to_look(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(
            self.client.get("/installed/llama-cpp/delete/").status_code, 403
        )
        self.assertEqual(
            self.client.post("/installed/llama-cpp/delete/").status_code, 403
        )

    def test_it_answers_404_for_what_is_not_installed(self) -> None:
        self.assertEqual(self.client.get("/installed/whisper/delete/").status_code, 404)


class ReadsTheDiskOnceTestCase(BaseTestCase):
    """A delete (its plan, its confirmation, the job's start) and a reinstall read this
    host's backends folder once per request, however many rules look at it."""

    def setUp(self) -> None:
        super().setUp()
        self.install_on_disk("cpu-whisper", alias="whisper-alias")
        self.install_on_disk("whisper", meta_for="cpu-whisper")
        self.models = Path(settings.LOCALAI_BACKENDS_PATH).parent / "models"
        write_model(self.models, "chat.yaml", "whisper-alias", name="chat")
        self.client.force_login(self.alice)

    def reads(self, request: Callable[[], Any]) -> tuple[int, Any]:
        with (
            override_settings(LOCALAI_MODELS_PATH=self.models),
            queued_tasks(),
            mock.patch.object(installed, "folders", wraps=installed.folders) as read,
        ):
            response = request()
        return read.call_count, response

    def test_a_delete_plan_reads_the_folders_once(self) -> None:
        count, r = self.reads(
            lambda: self.api_post(
                "/api/backends/plan", {"action": "delete", "id": "whisper"}
            )
        )
        self.assertEqual(r.json()["models"], ["chat"])
        self.assertEqual(count, 1)

    def test_the_delete_confirmation_and_the_delete_read_the_folders_once(
        self,
    ) -> None:
        count, page = self.reads(lambda: self.client.get("/installed/whisper/delete/"))
        self.assertContains(page, "chat")
        self.assertEqual(count, 1)
        count, _ = self.reads(
            lambda: self.client.post("/installed/whisper/delete/", {"force": "on"})
        )
        self.assertEqual(count, 1)
        self.assertTrue(Job.objects.filter(kind=Job.Kind.DELETE).exists())

    def test_a_reinstall_reads_the_folders_once(self) -> None:
        count, _ = self.reads(
            lambda: self.client.post("/installed/cpu-whisper/reinstall/")
        )
        self.assertEqual(count, 1)
        self.assertTrue(Job.objects.filter(kind=Job.Kind.INSTALL).exists())
