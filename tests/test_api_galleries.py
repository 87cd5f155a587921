from __future__ import annotations

from tests.base import BaseTestCase


class GalleryListTestCase(BaseTestCase):
    def test_it_lists_enabled_galleries_in_localai_shape(self) -> None:
        self.gallery.mirrors = ["github:mudler/LocalAI/backend/index.yaml@master"]
        self.gallery.save()
        rows = self.api_get("/backends/galleries").json()
        self.assertEqual(
            rows,
            [
                {
                    "name": "localai",
                    "url": self.gallery.url,
                    "mirrors": self.gallery.mirrors,
                }
            ],
        )

    def test_it_leaves_out_disabled_galleries(self) -> None:
        self.gallery.enabled = False
        self.gallery.save()
        self.assertEqual(self.api_get("/backends/galleries").json(), [])

    def test_it_shows_a_gallerys_verification_policy(self) -> None:
        block = {
            "public_key": "-----BEGIN PUBLIC KEY-----\n...",
            "not_before": "2026-05-01T00:00:00Z",
        }
        self.gallery.verification = block
        self.gallery.save()
        (row,) = self.api_get("/backends/galleries").json()
        self.assertEqual(row["verification"], block)
