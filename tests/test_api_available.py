from __future__ import annotations

import json

from django.core.serializers.json import DjangoJSONEncoder

from backends.core import resolve
from backends.models import Gallery, GalleryBackend
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


# Characters json.dumps escapes that a database may keep as they are (PostgreSQL's
# jsonb keeps non-ASCII text and DEL unescaped), and secrets in every URI field.
SHAPED_GALLERY = """
- name: tts-meta
  description: "Synthèse vocale \\u007f"
  tags: [tts, "del\\u007f"]
  urls: ["https://example.com/ünïcode"]
  mirrors: ["https://mirror-user:mirror-pw@mirror.example/tts?token=s3cret"]
  capabilities:
    default: cpu-tts
- name: cpu-tts
  uri: "https://user:pw@downloads.example/cpu-tts.tar?X-Amz-Signature=abc"
  license: MIT
  version: "1.2"
  sha256: "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
- name: LLAMA-CPP
  description: "a later gallery's entry of a name the first gallery has"
  uri: quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp-copy
"""


class AvailableShapeTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        shaped = self.gallery_file.with_name("shaped.yaml")
        shaped.write_text(SHAPED_GALLERY)
        self.second = Gallery.objects.create(
            name="second",
            url=shaped.as_uri(),
            position=1,
            mirrors=["https://u:p@gallery-mirror.example/index.yaml?sig=zz"],
        )
        self.second.sync()
        self.install_on_disk("cpu-tts")

    def expected_body(self) -> bytes:
        """The answer as ``GalleryBackend.to_localai`` rows, json-encoded one by one."""
        entries = resolve.first_by_name(
            GalleryBackend.objects.enabled().select_related("gallery")
        )
        concretes = resolve.concretes_by_name(entries)
        rows = []
        for entry in entries:
            if not resolve.verdict(entry, concretes, "default").runs_here:
                continue
            row = entry.to_localai(installed=entry.name == "cpu-tts")
            if entry.is_meta:
                resolution = resolve.resolve_meta(entry, "default")
                row["resolution"] = {
                    "concrete": resolution.concrete,
                    "explanation": resolution.explanation,
                }
            rows.append(DjangoJSONEncoder().encode(row))
        return f"[{','.join(rows)}]".encode()

    def test_each_row_is_the_entry_in_localais_shape_byte_for_byte(self) -> None:
        body = self.api_get("/backends/available").content
        self.assertEqual(body, self.expected_body())
        names = [row["name"] for row in json.loads(body)]
        self.assertEqual(
            names,
            ["llama-cpp", "cpu-llama-cpp", "whisper", "cpu-whisper"]
            + ["tts-meta", "cpu-tts"],
        )

    def test_it_never_shows_the_secrets_of_entries_or_galleries(self) -> None:
        body = self.api_get("/backends/available").text
        for secret in ("mirror-pw", "s3cret", ":pw@", "abc", "zz", "u:p@"):
            self.assertNotIn(secret, body)

    def test_it_lists_the_first_gallerys_entry_of_a_name_only(self) -> None:
        rows = self.api_get("/backends/available").json()
        llamas = [r["id"] for r in rows if r["name"].lower() == "llama-cpp"]
        self.assertEqual(llamas, ["localai@llama-cpp"])

    def test_it_follows_the_galleries_order_after_a_reorder(self) -> None:
        self.gallery.position = 5
        self.gallery.save()
        body = self.api_get("/backends/available").content
        self.assertEqual(body, self.expected_body())
        self.assertEqual(json.loads(body)[0]["name"], "tts-meta")
        llamas = [r["id"] for r in json.loads(body) if r["name"].lower() == "llama-cpp"]
        self.assertEqual(llamas, ["second@LLAMA-CPP"])
