from __future__ import annotations

from django.test import override_settings

from tests.base import BaseTestCase


class InstalledListTestCase(BaseTestCase):
    def test_it_returns_an_empty_list_when_nothing_is_installed(self) -> None:
        self.assertEqual(self.api_get("/backends").json(), [])

    def test_it_lists_concretes_metas_and_aliases_in_localai_shape(self) -> None:
        self.install_on_disk("cpu-llama-cpp", alias="llama-cpp")
        self.install_on_disk("llama-cpp-meta", meta_for="cpu-llama-cpp")
        rows = {r["Name"]: r for r in self.api_get("/backends").json()}
        self.assertEqual(set(rows), {"cpu-llama-cpp", "llama-cpp", "llama-cpp-meta"})
        concrete = rows["cpu-llama-cpp"]
        self.assertEqual(
            set(concrete), {"Name", "RunFile", "IsMeta", "IsSystem", "Metadata"}
        )
        self.assertTrue(concrete["RunFile"].endswith("cpu-llama-cpp/run.sh"))
        self.assertFalse(concrete["IsMeta"])
        self.assertEqual(concrete["Metadata"]["alias"], "llama-cpp")
        meta = rows["llama-cpp-meta"]
        self.assertTrue(meta["IsMeta"])
        self.assertTrue(meta["RunFile"].endswith("cpu-llama-cpp/run.sh"))

    def test_it_lists_system_backends_as_system(self) -> None:
        system = self.gallery_file.parent / "system"
        (system / "piper").mkdir(parents=True)
        (system / "piper" / "run.sh").write_text("#!/bin/sh\n")
        with override_settings(LOCALAI_BACKENDS_SYSTEM_PATH=system):
            rows = self.api_get("/backends").json()
        self.assertEqual(rows[0]["Name"], "piper")
        self.assertTrue(rows[0]["IsSystem"])
        self.assertIsNone(rows[0]["Metadata"])

    def test_it_keeps_listing_when_one_metadata_file_is_broken(self) -> None:
        self.install_on_disk("good")
        broken = self.install_on_disk("broken")
        (broken / "metadata.json").write_text("{not json")
        names = {r["Name"] for r in self.api_get("/backends").json()}
        self.assertEqual(names, {"good", "broken"})

    def test_it_ignores_installer_temporary_folders(self) -> None:
        self.install_on_disk("whisper.install-tmp")
        self.assertEqual(self.api_get("/backends").json(), [])
