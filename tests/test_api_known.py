from __future__ import annotations

import json

from backends.core.known import BUNDLED
from tests.base import BaseTestCase


class KnownBackendsTestCase(BaseTestCase):
    def test_it_equals_the_registry_when_nothing_is_installed(self) -> None:
        expected = json.loads(BUNDLED.read_text())
        for row in expected:
            del row["source"]
        got = self.api_get("/backends/known").json()
        self.assertTrue(all(row.pop("installed") is False for row in got))
        self.assertEqual(got, expected)

    def test_it_marks_installed_backends_and_keeps_their_metadata(self) -> None:
        self.install_on_disk("whisper")
        rows = {r["name"]: r for r in self.api_get("/backends/known").json()}
        self.assertTrue(rows["whisper"]["installed"])
        self.assertTrue(rows["whisper"]["auto_detect"])
        self.assertEqual(rows["whisper"]["modality"], "asr")
        self.assertFalse(rows["sglang"]["installed"])

    def test_it_adds_unknown_installed_backends_with_empty_modality_first(self) -> None:
        self.install_on_disk("custom-local-backend")
        rows = self.api_get("/backends/known").json()
        self.assertEqual(
            rows[0],
            {
                "name": "custom-local-backend",
                "modality": "",
                "auto_detect": False,
                "installed": True,
            },
        )

    def test_it_lists_each_name_once_sorted_by_modality_then_name(self) -> None:
        self.install_on_disk("cpu-whisper", alias="whisper")
        rows = self.api_get("/backends/known").json()
        names = [r["name"] for r in rows]
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(rows, sorted(rows, key=lambda r: (r["modality"], r["name"])))
