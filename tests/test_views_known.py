from __future__ import annotations

from backends.models import KnownBackend
from tests.base import BaseTestCase

HTMX = {"HX-Request": "true"}


class KnownListTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)

    def test_it_requires_login(self) -> None:
        self.client.logout()
        self.assertRedirects(
            self.client.get("/known/"), "/accounts/login/?next=/known/"
        )

    def test_it_lists_the_whole_registry_sorted_by_modality_then_name(self) -> None:
        r = self.client.get("/known/")
        self.assertContains(r, f"{KnownBackend.objects.count()} backends")
        body = r.content.decode()
        self.assertLess(body.index(">trellis2cpp<"), body.index(">faster-whisper<"))
        self.assertLess(body.index(">faster-whisper<"), body.index(">whisper<"))

    def test_it_marks_installed_backends_and_adds_unknown_ones(self) -> None:
        self.install_on_disk("whisper")
        self.install_on_disk("custom-local-backend")
        r = self.client.get("/known/")
        self.assertContains(r, ">installed</span>", count=2)
        self.assertContains(r, '<td class="name">custom-local-backend</td>', html=True)

    def test_it_filters_by_modality(self) -> None:
        r = self.client.get("/known/?modality=asr")
        asr = KnownBackend.objects.filter(modality="asr").count()
        self.assertContains(r, f"{asr} backends")
        self.assertNotContains(r, ">trellis2cpp<")
        self.assertContains(r, '<option value="asr" selected>asr</option>', html=True)

    def test_it_ignores_an_unknown_modality(self) -> None:
        r = self.client.get("/known/?modality=smell")
        self.assertContains(r, f"{KnownBackend.objects.count()} backends")

    def test_it_returns_a_self_refreshing_table_for_htmx(self) -> None:
        r = self.client.get("/known/?modality=asr", headers=HTMX)
        self.assertTemplateNotUsed(r, "base.html")
        body = r.content.decode().lstrip()
        self.assertTrue(body.startswith('<section id="known-table"'))
        self.assertIn('hx-get="/known/?modality=asr"', body)
        self.assertIn('hx-trigger="every 10s, job-finished from:body"', body)
