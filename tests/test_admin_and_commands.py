from __future__ import annotations

import io

from django.contrib.auth.models import User
from django.core.management import call_command

from backends.models import ApiToken, Gallery, GalleryBackend, Node
from tests.base import BaseTestCase


class AdminTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.root = User.objects.create_superuser("root", password="password")
        self.client.force_login(self.root)
        self.gallery.sync()

    def test_every_model_has_a_working_changelist(self) -> None:
        for model in (
            "gallery",
            "gallerybackend",
            "node",
            "installedbackend",
            "job",
            "knownbackend",
            "apitoken",
        ):
            r = self.client.get(f"/admin/backends/{model}/")
            self.assertEqual(r.status_code, 200, model)

    def test_the_sync_now_action_syncs_and_reports(self) -> None:
        self.gallery_file.write_text("- name: only-one\n  uri: quay.io/x/y:1\n")
        r = self.client.post(
            "/admin/backends/gallery/",
            {"action": "sync_now", "_selected_action": [self.gallery.pk]},
            follow=True,
        )
        self.assertContains(r, "1 entries")
        self.assertEqual(
            list(GalleryBackend.objects.values_list("name", flat=True)), ["only-one"]
        )

    def test_synced_entries_are_read_only(self) -> None:
        entry = GalleryBackend.objects.first()
        assert entry is not None
        r = self.client.post(
            f"/admin/backends/gallerybackend/{entry.pk}/change/", {"name": "x"}
        )
        self.assertEqual(r.status_code, 403)

    def test_a_token_created_in_the_admin_is_shown_once_and_works(self) -> None:
        r = self.client.post(
            "/admin/backends/apitoken/add/",
            {"name": "ci", "user": self.root.pk},
            follow=True,
        )
        message = next(str(m) for m in r.context["messages"] if "Copy it now" in str(m))
        value = message.rsplit(" ", 1)[-1]
        self.assertIsNotNone(ApiToken.objects.authenticate(value))


class CommandsTestCase(BaseTestCase):
    def call(self, *args: str) -> str:
        out = io.StringIO()
        call_command(*args, stdout=out)
        return out.getvalue()

    def test_create_api_token_prints_a_working_token(self) -> None:
        value = self.call("create_api_token", "alice", "--name", "cli").strip()
        r = self.client.get(
            "/backends/known", headers={"Authorization": f"Bearer {value}"}
        )
        self.assertEqual(r.status_code, 200)

    def test_ensure_admin_creates_the_first_superuser_once(self) -> None:
        first = self.call("ensure_admin")
        self.assertIn("password", first)
        self.assertTrue(
            User.objects.filter(username="admin", is_superuser=True).exists()
        )
        self.assertEqual(self.call("ensure_admin"), "")

    def test_probe_hardware_stores_and_prints_the_report(self) -> None:
        out = self.call("probe_hardware")
        self.assertIn("capability:  default", out)
        self.assertIsNotNone(Node.objects.local().probed_at)

    def test_sync_galleries_reports_each_gallery(self) -> None:
        self.assertIn("localai: 6 entries", self.call("sync_galleries"))
        self.assertIn("unchanged", self.call("sync_galleries"))
        Gallery.objects.update(url="file:///nonexistent.yaml")
        self.assertIn("sync failed", self.call("sync_galleries", "--force"))
