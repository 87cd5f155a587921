from __future__ import annotations

from tests.base import BaseTestCase


class AvailableListTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()

    def names(self) -> list[str]:
        return [r["name"] for r in self.api_get("/backends/available").json()]

    def test_it_hides_builds_a_cpu_host_cannot_run(self) -> None:
        names = self.names()
        self.assertIn("cpu-llama-cpp", names)
        self.assertIn("llama-cpp", names)
        self.assertNotIn("cuda12-llama-cpp", names)
        self.assertNotIn("metal-llama-cpp", names)

    def test_it_explains_how_a_meta_resolves_on_this_node(self) -> None:
        rows = {r["name"]: r for r in self.api_get("/backends/available").json()}
        resolution = rows["llama-cpp"]["resolution"]
        self.assertEqual(resolution["concrete"], "cpu-llama-cpp")
        self.assertIn("cpu-llama-cpp", resolution["explanation"])

    def test_it_uses_the_gallery_shape_with_an_id(self) -> None:
        row = self.api_get("/backends/available").json()[0]
        self.assertEqual(row["id"], "localai@llama-cpp")
        self.assertEqual(row["gallery"]["name"], "localai")
        self.assertFalse(row["installed"])

    def test_it_marks_installed_entries(self) -> None:
        self.install_on_disk("cpu-whisper", alias="whisper")
        rows = {r["name"]: r for r in self.api_get("/backends/available").json()}
        self.assertTrue(rows["cpu-whisper"]["installed"])

    def test_it_offers_gpu_builds_to_a_forced_nvidia_node(self) -> None:
        with self.settings(LOCALAI_FORCE_META_BACKEND_CAPABILITY="nvidia-cuda-12"):
            self.assertIn("cuda12-llama-cpp", self.names())
