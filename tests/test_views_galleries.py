from __future__ import annotations

from backends.models import Gallery
from tests.base import BaseTestCase


class GalleryListTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)

    def test_it_requires_login(self) -> None:
        self.client.logout()
        self.assertRedirects(
            self.client.get("/galleries/"), "/accounts/login/?next=/galleries/"
        )

    def test_it_shows_a_gallery_that_was_never_synced(self) -> None:
        r = self.client.get("/galleries/")
        self.assertContains(r, self.gallery.url)
        self.assertContains(r, "never")
        self.assertContains(r, "not synced yet")

    def test_it_shows_entry_count_and_last_sync(self) -> None:
        self.gallery.sync()
        r = self.client.get("/galleries/")
        self.assertContains(r, '<td class="num">6</td>', html=True)
        self.assertContains(r, ">OK</span>")
        self.assertContains(r, "just now</time>")

    def test_it_shows_the_last_error_and_the_problems(self) -> None:
        self.gallery.sync()
        self.gallery.last_error = "HTTP 503 from index.example"
        self.gallery.problems = ["entry #3 has no name", "duplicate name whisper"]
        self.gallery.save()
        r = self.client.get("/galleries/")
        self.assertContains(r, "HTTP 503 from index.example")
        self.assertContains(r, "2 problems")
        self.assertContains(r, "<li>entry #3 has no name</li>", html=True)

    def test_it_hides_sync_and_edit_from_non_staff(self) -> None:
        r = self.client.get("/galleries/")
        self.assertNotContains(r, "Sync now")
        self.assertNotContains(r, "/admin/backends/gallery/")

    def test_it_offers_sync_and_edit_in_the_admin_to_staff(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.get("/galleries/")
        self.assertContains(r, f'action="/galleries/{self.gallery.pk}/sync/"')
        self.assertContains(
            r, f'href="/admin/backends/gallery/{self.gallery.pk}/change/"'
        )


class GallerySyncTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.url = f"/galleries/{self.gallery.pk}/sync/"

    def test_it_rejects_get(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(self.url).status_code, 405)

    def test_it_is_forbidden_to_non_staff(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(self.url).status_code, 403)
        self.gallery.refresh_from_db()
        self.assertIsNone(self.gallery.last_synced_at)

    def test_it_syncs_and_says_so(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, follow=True)
        # The Galleries page, watching this gallery's row until its sync has run.
        self.assertTrue(r.redirect_chain[-1][0].startswith("/galleries/?syncing="))
        self.assertContains(r, "Sync of localai queued")
        self.gallery.refresh_from_db()
        self.assertEqual(self.gallery.entry_count, 6)

    def test_it_answers_404_for_an_unknown_gallery(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.post("/galleries/999/sync/").status_code, 404)
        self.assertFalse(Gallery.objects.filter(pk=999).exists())
