"""The Installed page's versions, rollback (behind a confirmation) and pin buttons."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from backends.core.versions import VersionStore
from backends.models import InstalledBackend, Job
from backends.services import pipeline
from tests.base import BaseTestCase, make_build, queued_tasks


class VersionPagesTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(queued_tasks())
        self.install_on_disk("cpu-whisper")
        backends = Path(settings.LOCALAI_BACKENDS_PATH)
        old = make_build(backends / "old-whisper", "old")
        (old / "metadata.json").write_text('{"name": "cpu-whisper", "version": "0.9"}')
        kept = VersionStore(backends).keep(old, "cpu-whisper", 1)
        assert kept is not None
        self.kept = kept
        pipeline.reconcile(None)

    def test_the_installed_page_links_each_backend_to_its_versions(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get("/installed/")
        self.assertContains(r, "/installed/cpu-whisper/versions/")
        self.assertNotContains(r, "/installed/cpu-whisper/pin/")

    def test_the_versions_page_lists_kept_versions_with_a_rollback_link(self) -> None:
        self.client.force_login(self.carol)
        r = self.client.get("/installed/cpu-whisper/versions/")
        self.assertContains(r, "0.9")
        self.assertContains(r, f"/installed/cpu-whisper/rollback/{self.kept.id}/")

    def test_viewers_see_versions_without_rollback(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get("/installed/cpu-whisper/versions/")
        self.assertContains(r, "0.9")
        self.assertNotContains(r, "/rollback/")

    def test_rollback_asks_for_confirmation_first(self) -> None:
        self.client.force_login(self.carol)
        r = self.client.get(f"/installed/cpu-whisper/rollback/{self.kept.id}/")
        self.assertContains(r, "Roll cpu-whisper back?")
        self.assertContains(r, 'method="post"')
        self.assertFalse(Job.objects.exists())

    def test_the_rollback_confirmation_shows_the_plan_first(self) -> None:
        models = Path(settings.LOCALAI_BACKENDS_PATH).parent / "models"
        models.mkdir()
        (models / "stt.yaml").write_text("name: stt\nbackend: cpu-whisper\n")
        self.client.force_login(self.carol)
        with self.settings(LOCALAI_MODELS_PATH=models):
            r = self.client.get(f"/installed/cpu-whisper/rollback/{self.kept.id}/")
        self.assertContains(r, "cpu-whisper goes back to 0.9")
        self.assertContains(r, "<strong>replace</strong>")
        self.assertContains(r, "moves into the kept versions")
        self.assertContains(r, "Models using it: stt.")
        self.assertFalse(Job.objects.exists())

    def test_confirming_starts_a_rollback_job(self) -> None:
        self.client.force_login(self.carol)
        r = self.client.post(f"/installed/cpu-whisper/rollback/{self.kept.id}/")
        job = Job.objects.get()
        self.assertEqual((job.kind, job.version_ref), ("rollback", self.kept.id))
        self.assertRedirects(r, f"/jobs/{job.pk}/", fetch_redirect_response=False)

    def test_rollback_to_an_unknown_version_is_404(self) -> None:
        self.client.force_login(self.carol)
        r = self.client.get("/installed/cpu-whisper/rollback/20260101T000000000000Z/")
        self.assertEqual(r.status_code, 404)

    def test_pin_marks_the_row_and_replaces_upgrade_with_unpin(self) -> None:
        InstalledBackend.objects.filter(name="cpu-whisper").update(
            upgrade_available=True
        )
        self.client.force_login(self.carol)
        page = self.client.get("/installed/")
        self.assertContains(page, "/installed/cpu-whisper/upgrade/")
        r = self.client.post("/installed/cpu-whisper/pin/", follow=True)
        self.assertContains(r, "cpu-whisper is pinned")
        self.assertContains(r, '<span class="badge pinned"')
        self.assertContains(r, "/installed/cpu-whisper/unpin/")
        self.assertNotContains(r, "/installed/cpu-whisper/upgrade/")
        self.client.post("/installed/cpu-whisper/unpin/")
        self.assertFalse(InstalledBackend.objects.get(name="cpu-whisper").pinned)

    def test_pin_rejects_get(self) -> None:
        self.client.force_login(self.carol)
        self.assertEqual(
            self.client.get("/installed/cpu-whisper/pin/").status_code, 405
        )
