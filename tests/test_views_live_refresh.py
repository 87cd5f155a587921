"""After "Sync now" and "Check for upgrades now" the page updates itself: a poller on
the gallery row / the Installed upgrade state, answered 286 once the work has run."""

from __future__ import annotations

import time
from datetime import timedelta

from django.utils import timezone

from backends.models import InstalledBackend, Node
from backends.services import pipeline, upgrades
from tests.base import BaseTestCase, queued_tasks

HTMX = {"HX-Request": "true"}


class GallerySyncRefreshTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)
        self.enterContext(queued_tasks())

    def test_sync_now_leads_to_a_row_that_polls_until_the_sync_ran(self) -> None:
        r = self.client.post(f"/galleries/{self.gallery.pk}/sync/", follow=True)
        self.assertContains(r, "its row updates when it is done")
        self.assertContains(r, "syncing…")
        self.assertContains(r, 'hx-trigger="every 2s"')
        url = r.redirect_chain[-1][0]
        r = self.client.get(url, headers=HTMX)
        self.assertEqual(r.status_code, 200)
        self.assertTrue(r.content.decode().lstrip().startswith("<tr"))

    def test_the_row_poller_stops_with_286_once_the_sync_ran(self) -> None:
        since = time.time()
        self.gallery.sync()
        r = self.client.get(
            f"/galleries/?syncing={self.gallery.pk}&since={since}", headers=HTMX
        )
        self.assertEqual(r.status_code, 286)
        self.assertContains(r, ">OK</span>", status_code=286)
        self.assertNotContains(r, "every 2s", status_code=286)

    def test_the_row_poller_gives_up_and_says_why_when_no_worker_ran_it(
        self,
    ) -> None:
        since = (timezone.now() - timedelta(minutes=10)).timestamp()
        r = self.client.get(
            f"/galleries/?syncing={self.gallery.pk}&since={since}", headers=HTMX
        )
        self.assertEqual(r.status_code, 286)
        self.assertContains(
            r, "is <code>manage.py run_worker</code> running?", status_code=286
        )

    def test_a_garbled_since_shows_the_plain_page(self) -> None:
        r = self.client.get(f"/galleries/?syncing={self.gallery.pk}&since=nan")
        self.assertEqual(r.status_code, 200)
        self.assertNotContains(r, "every 2s")


class UpgradeCheckRefreshTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)
        self.gallery.sync()
        self.install_on_disk("cpu-whisper", alias="whisper")
        pipeline.reconcile(Node.objects.local())
        self.enterContext(queued_tasks())

    def test_check_now_leads_to_an_upgrade_state_that_polls(self) -> None:
        r = self.client.post("/installed/check-upgrades/", follow=True)
        self.assertContains(r, "this page updates when the check is done")
        self.assertContains(r, "checking…")
        url = r.redirect_chain[-1][0]
        r = self.client.get(url, headers=HTMX)
        self.assertEqual(r.status_code, 200)
        self.assertTrue(
            r.content.decode().lstrip().startswith('<div id="upgrade-state"')
        )

    def test_the_poller_stops_with_286_and_redraws_the_rows_once_checked(
        self,
    ) -> None:
        since = time.time()
        # What the check writes on every row it has looked at.
        InstalledBackend.objects.update(checked_at=timezone.now())
        r = self.client.get(f"/installed/?checking={since}", headers=HTMX)
        self.assertEqual(r.status_code, 286)
        self.assertEqual(r.headers["HX-Trigger"], '{"upgrades-checked": {}}')
        self.assertContains(r, "Upgrades last checked just now", status_code=286)
        self.assertNotContains(r, "every 2s", status_code=286)

    def test_the_rows_listen_for_the_end_of_the_check(self) -> None:
        r = self.client.get("/installed/")
        self.assertContains(r, "upgrades-checked from:body")

    def test_nothing_installed_means_nothing_to_wait_for(self) -> None:
        InstalledBackend.objects.all().delete()
        self.assertFalse(upgrades.check_pending(Node.objects.local(), timezone.now()))
