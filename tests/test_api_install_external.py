from __future__ import annotations

import io
import json
import tarfile

from tests.base import PipelineTestCase


class InstallExternalTestCase(PipelineTestCase):
    def post(self, body):
        with self.captureOnCommitCallbacks(execute=True):
            return self.api_post("/api/backends/install-external", body)

    def test_a_local_folder_installs_under_its_folder_name(self) -> None:
        r = self.post({"uri": str(self.sources / "cpu-bar"), "alias": "bar"})
        self.assertEqual(r.status_code, 200, r.content)
        self.assertEqual(r.json()["message"], "External backend installation started")
        status = self.api_get(f"/backends/jobs/{r.json()['jobID']}").json()
        self.assertEqual(status["state"], "completed", status)
        metadata = json.loads((self.backends / "cpu-bar" / "metadata.json").read_text())
        self.assertEqual(metadata["alias"], "bar")

    # LocalAI's tarball backends never extract: the rename into staging fails (backends 4.4).
    def test_a_tarball_file_url_installs_with_a_name(self) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            data = b"#!/bin/sh\necho tar\n"
            info = tarfile.TarInfo("run.sh")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        tarball = self.sources / "custom.tar.gz"
        tarball.write_bytes(buffer.getvalue())
        r = self.post({"uri": tarball.as_uri(), "name": "custom"})
        status = self.api_get(f"/backends/jobs/{r.json()['id']}").json()
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("tar", (self.backends / "custom" / "run.sh").read_text())

    def test_a_missing_uri_is_400(self) -> None:
        r = self.post({"name": "x"})
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["message"], "uri is required")

    def test_invalid_json_is_400(self) -> None:
        r = self.client.post(
            "/api/backends/install-external",
            "nope",
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.token_value}"},
        )
        self.assertEqual(r.status_code, 400)

    def test_an_oci_reference_needs_a_name(self) -> None:
        r = self.post({"uri": "quay.io/example/backend:latest"})
        self.assertEqual(r.status_code, 400)
        self.assertIn("name is required", r.json()["error"]["message"])

    def test_a_gallery_name_refuses_a_custom_name(self) -> None:
        r = self.post({"uri": "cpu-bar", "name": "other"})
        self.assertEqual(r.status_code, 400)
        self.assertIn(
            "not supported for gallery backends", r.json()["error"]["message"]
        )

    def test_a_gallery_name_installs_from_the_gallery(self) -> None:
        r = self.post({"uri": "cpu-bar"})
        status = self.api_get(f"/backends/jobs/{r.json()['id']}").json()
        self.assertEqual(status["state"], "completed", status)

    # LocalAI validates no backend name: "../x" installs outside the folder (backends 7).
    def test_an_unsafe_name_is_400(self) -> None:
        r = self.post({"uri": str(self.sources / "cpu-bar"), "name": "../escape"})
        self.assertEqual(r.status_code, 400)
        self.assertFalse((self.backends.parent / "escape").exists())
