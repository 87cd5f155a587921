"""Offline kits through the dashboard: upload, a look at what the kit holds, then the
install; each image's digest and signatures checked against this host's policy before
anything is unpacked, with the registry the kit came from stopped."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.contrib.auth.models import AnonymousUser
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory

from backends.models import AuditEvent, Gallery, InstalledBackend, Job
from backends.services.kits import kits_folder
from backends.tasks import prune_kit_leftovers
from backends.web.kits import kit_upload
from tests.base import BaseTestCase
from tests.imagebuild import file, make_layer
from tests.signing import new_key, payload_for, public_pem, push_signature, sign
from tests.test_offline_kits import kit_members, rewrite_kit
from tests.test_registry_mirror import start_registry

pytestmark = pytest.mark.registry

REFUSED = "signature verification failed"
STRICT = (
    "an image from a gallery without a verification policy is refused "
    "(LOCALAI_ADMIN_REQUIRE_INTEGRITY is on)"
)


class KitUploadTestCase(BaseTestCase):
    """A signed image on a registry of the test's own; the kit is exported with the
    gallery's policy in force, then the registry is stopped ("another host")."""

    @pytest.fixture(autouse=True)
    def _registry(self, tmp_path: Path, settings: Any) -> Iterator[None]:
        self.tmp = tmp_path
        self.settings_fixture = settings
        self.registry = start_registry(tmp_path / "registry")
        self.key = new_key()
        self.layer = make_layer([file("run.sh", "#!/bin/sh\necho kit\n", 0o755)])
        self.image = self.registry.push_image("backends/signed", "v1", [self.layer])
        payload = payload_for(self.image.digest)
        push_signature(self.registry, self.image, payload, sign(self.key, payload))
        self.kit = tmp_path / "kit.tar"
        yield
        self.registry.stop()

    def setUp(self) -> None:
        super().setUp()
        self.gallery_file.write_text(
            f"- name: cpu-signed\n  uri: {self.registry.ref('backends/signed', 'v1')}\n"
        )
        self.use_policy(self.key)
        call_command("export_backends", "cpu-signed", output=str(self.kit))
        self.client.force_login(self.alice)

    def use_policy(self, key: ec.EllipticCurvePrivateKey | None) -> None:
        """The host's gallery "localai": with ``key``'s policy, or none."""
        self.gallery.verification = {"public_key": public_pem(key)} if key else {}
        self.gallery.save()
        self.gallery.sync(force=True)

    def move_to_another_host(self) -> Path:
        """The registry stopped, an empty backends folder; the gallery "localai" is
        configured here too (with whatever policy the test gives it)."""
        self.registry.stop()
        self.gallery_file.write_text("[]\n")
        self.gallery.sync(force=True)
        backends = self.tmp / "other-host" / "backends"
        backends.mkdir(parents=True)
        self.settings_fixture.LOCALAI_BACKENDS_PATH = backends
        return backends

    def upload(self, data: bytes | None = None) -> Any:
        content = self.kit.read_bytes() if data is None else data
        return self.client.post(
            "/installed/kits/",
            {"kit": SimpleUploadedFile("kit.tar", content)},
        )

    def preview_url(self, response: Any) -> str:
        self.assertEqual(response.status_code, 302, response.content[:2000])
        url: str = response["Location"]
        self.assertTrue(url.startswith("/installed/kits/"), url)
        return url

    def confirm(self, url: str, *names: str) -> Job:
        with self.captureOnCommitCallbacks(execute=True):
            response = self.client.post(url, {"names": list(names or ["cpu-signed"])})
        self.assertEqual(response.status_code, 302, response.content[:2000])
        return Job.objects.get(target__endswith="@cpu-signed")

    def assert_not_unpacked(self, backends: Path) -> None:
        self.assertEqual(list(backends.iterdir()), [])

    def test_an_uploaded_kit_of_a_signed_image_installs_verified_with_the_registry_stopped(
        self,
    ) -> None:
        backends = self.move_to_another_host()
        url = self.preview_url(self.upload())
        page = self.client.get(url)
        self.assertContains(page, "cpu-signed")
        self.assertContains(page, "verified")
        self.assertContains(page, "gallery localai: key SHA256:")
        job = self.confirm(url)
        self.assertEqual(job.state, Job.State.COMPLETED, job.error)
        self.assertNotIn("warning", job.message)
        self.assertIn("kit", (backends / "cpu-signed" / "run.sh").read_text())
        metadata = json.loads((backends / "cpu-signed" / "metadata.json").read_text())
        self.assertEqual(metadata["digest"], self.image.digest)
        self.assertIn("gallery localai: key SHA256:", metadata["verified_by"])
        self.assertEqual(
            InstalledBackend.objects.get(name="cpu-signed").verified_by,
            metadata["verified_by"],
        )
        self.assertContains(self.client.get("/installed/"), metadata["verified_by"])
        self.assertTrue(
            AuditEvent.objects.filter(
                action="kit_upload", target="kit.tar", outcome="done", username="alice"
            ).exists()
        )

    def test_a_kit_whose_layer_was_changed_is_refused_before_extraction(self) -> None:
        def tamper(members: dict[str, bytes]) -> None:
            name = f"blobs/sha256/{self.layer.digest.removeprefix('sha256:')}"
            data = members[name]
            members[name] = data[:-1] + bytes([data[-1] ^ 0xFF])

        rewrite_kit(self.kit, tamper)
        backends = self.move_to_another_host()
        response = self.upload()
        self.assertContains(response, "does not match its digest", status_code=400)
        self.assert_not_unpacked(backends)
        self.assertEqual(
            [p for p in kits_folder().iterdir() if not p.name.startswith(".")]
            if kits_folder().exists()
            else [],
            [],
        )
        self.assertFalse(Gallery.objects.filter(name__startswith="kit-").exists())
        self.assertTrue(
            AuditEvent.objects.filter(action="kit_upload", outcome="refused").exists()
        )

    def test_a_kit_whose_image_was_rebuilt_around_another_layer_is_refused(
        self,
    ) -> None:
        # Every digest made consistent again: only the signature can tell.
        evil = make_layer([file("run.sh", "#!/bin/sh\necho evil\n", 0o755)])

        def rebuild(members: dict[str, bytes]) -> None:
            old = self.image.digest.removeprefix("sha256:")
            manifest = json.loads(members.pop(f"blobs/sha256/{old}"))
            manifest["layers"] = [
                {"mediaType": evil.media_type, "digest": evil.digest, "size": evil.size}
            ]
            raw = json.dumps(manifest).encode()
            new = hashlib.sha256(raw).hexdigest()
            members[f"blobs/sha256/{new}"] = raw
            members[f"blobs/sha256/{evil.digest.removeprefix('sha256:')}"] = evil.data
            for name in ("index.json", "gallery.yaml"):
                text = members[name].decode().replace(f"sha256:{old}", f"sha256:{new}")
                members[name] = text.replace(
                    f'"size": {len(self.image.manifest)}', f'"size": {len(raw)}'
                ).encode()

        rewrite_kit(self.kit, rebuild)
        backends = self.move_to_another_host()
        url = self.preview_url(self.upload())
        self.assertContains(self.client.get(url), "no signature refers to")
        job = self.confirm(url)
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn(REFUSED, job.error)
        self.assertIn("no signature refers to", job.error)
        self.assert_not_unpacked(backends)

    def test_a_kit_signed_by_another_key_than_the_hosts_policy_is_refused(
        self,
    ) -> None:
        # The kit carries the policy it was signed under; this host trusts another key.
        backends = self.move_to_another_host()
        self.use_policy(new_key())
        url = self.preview_url(self.upload())
        page = self.client.get(url)
        self.assertContains(page, REFUSED)
        self.assertContains(page, "only this host's own policy is trusted")
        job = self.confirm(url)
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn(REFUSED, job.error)
        self.assertIn("backends/signed", job.error)
        self.assertIn("gallery localai: key SHA256:", job.error)
        self.assertIn("does not verify with key", job.error)
        self.assert_not_unpacked(backends)

    def test_strict_integrity_refuses_a_kit_image_without_a_policy(self) -> None:
        backends = self.move_to_another_host()
        self.use_policy(None)
        self.settings_fixture.LOCALAI_ADMIN_REQUIRE_INTEGRITY = True
        url = self.preview_url(self.upload())
        self.assertContains(self.client.get(url), STRICT)
        job = self.confirm(url)
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn(STRICT, job.error)
        self.assert_not_unpacked(backends)

    def test_a_kit_image_without_a_policy_installs_with_a_warning(self) -> None:
        self.move_to_another_host()
        self.use_policy(None)
        url = self.preview_url(self.upload())
        self.assertContains(self.client.get(url), "not verified")
        job = self.confirm(url)
        self.assertEqual(job.state, Job.State.COMPLETED, job.error)
        self.assertIn("not signature-verified", job.message)

    def add_entry(self, entry: str) -> None:
        """The kit with one more gallery entry (index.json, so the kit's id, kept)."""

        def change(members: dict[str, bytes]) -> None:
            members["gallery.yaml"] += entry.encode()

        rewrite_kit(self.kit, change)

    def own_blob(self) -> tuple[Path, str]:
        """Where this host will keep the kit's layer blob, and its sha256."""
        index = hashlib.sha256(kit_members(self.kit)["index.json"]).hexdigest()
        hex_digest = self.layer.digest.removeprefix("sha256:")
        return kits_folder() / index[:16] / "blobs" / "sha256" / hex_digest, hex_digest

    def test_a_kit_whose_gallery_points_outside_the_kit_is_refused_whole(
        self,
    ) -> None:
        # The kit's own layer installed as a tarball from where this host keeps
        # kits, with the sha256 strict integrity asks for: no signature checked.
        backends = self.move_to_another_host()
        self.settings_fixture.LOCALAI_ADMIN_REQUIRE_INTEGRITY = True
        blob, hex_digest = self.own_blob()
        self.add_entry(
            f"- name: cpu-evil\n  uri: {blob.as_uri()}\n  sha256: {hex_digest}\n"
        )
        response = self.upload()
        self.assertContains(
            response,
            "a kit&#x27;s entries may only name its own images",
            status_code=400,
        )
        self.assertFalse(blob.exists())
        self.assertFalse(Gallery.objects.filter(name__startswith="kit-").exists())
        self.assert_not_unpacked(backends)

    def test_a_kit_entry_with_mirrors_is_refused(self) -> None:
        backends = self.move_to_another_host()
        self.add_entry(
            "- name: cpu-mirrored\n  uri: oci-layout:.@" + self.image.digest + "\n"
            "  mirrors: [https://example.com/cpu.tar.gz]\n"
        )
        with self.assertRaisesMessage(CommandError, "gives 'cpu-mirrored' mirrors"):
            call_command("import_backends", str(self.kit), stdout=io.StringIO())
        self.assert_not_unpacked(backends)

    def test_a_kit_over_the_cap_is_refused_while_it_is_received(self) -> None:
        # The request is within the cap and its envelope: the file is not.
        self.settings_fixture.LOCALAI_ADMIN_MAX_KIT_BYTES = 1024
        response = self.upload(b"x" * 4096)
        self.assertContains(response, "LOCALAI_ADMIN_MAX_KIT_BYTES", status_code=413)
        self.assertEqual(list(kits_folder().iterdir()), [])

    def test_a_request_announcing_more_than_the_cap_is_refused_unread(self) -> None:
        self.settings_fixture.LOCALAI_ADMIN_MAX_KIT_BYTES = 1024
        response = self.upload(b"x" * (256 * 1024))
        self.assertContains(response, "LOCALAI_ADMIN_MAX_KIT_BYTES", status_code=413)
        # The upload handler, which makes the folder, never ran.
        self.assertFalse(kits_folder().exists())

    def test_a_file_that_is_not_a_kit_is_refused_with_a_message(self) -> None:
        response = self.upload(b"this is not a tar file" * 100)
        self.assertContains(response, "not a kit (a tar file)", status_code=400)

    def test_uploading_a_kit_again_keeps_the_copy_an_install_may_be_reading(
        self,
    ) -> None:
        first = self.preview_url(self.upload())
        blobs = sorted((kits_folder() / first.split("/")[3] / "blobs").rglob("*"))
        inodes = [blob.stat().st_ino for blob in blobs]
        self.assertEqual(self.preview_url(self.upload()), first)
        self.assertEqual([blob.stat().st_ino for blob in blobs], inodes)

    def test_uploading_a_kit_again_mends_a_copy_that_lost_a_blob(self) -> None:
        url = self.preview_url(self.upload())
        blob = kits_folder() / url.split("/")[3] / "blobs" / "sha256"
        layer = blob / self.layer.digest.removeprefix("sha256:")
        layer.unlink()
        self.assertEqual(self.preview_url(self.upload()), url)
        self.assertTrue(layer.is_file())

    def test_a_tar_without_an_index_is_refused_with_a_message(self) -> None:
        rewrite_kit(self.kit, lambda members: members.pop("index.json"))
        self.assertContains(self.upload(), "the kit has no index.json", status_code=400)

    def test_a_kit_with_malformed_annotations_is_previewed_without_them(
        self,
    ) -> None:
        def garble(members: dict[str, bytes]) -> None:
            index = json.loads(members["index.json"])
            index["annotations"] = ["not", "a", "mapping"]
            for descriptor in index["manifests"]:
                descriptor["annotations"] = "nor this"
            members["index.json"] = json.dumps(index).encode()

        rewrite_kit(self.kit, garble)
        self.move_to_another_host()
        page = self.client.get(self.preview_url(self.upload()))
        # No gallery named: nothing to verify against, and nothing ticked by default.
        self.assertContains(page, "not verified")
        self.assertNotContains(page, 'id="id_names_0" checked')

    def test_in_distributed_mode_the_dashboard_does_not_send_a_kit_to_the_agents(
        self,
    ) -> None:
        url = self.preview_url(self.upload())
        self.settings_fixture.DISTRIBUTED = True
        response = self.client.post(url, {"names": ["cpu-signed"]})
        self.assertContains(response, "run manage.py import_backends")
        self.assertFalse(Job.objects.exists())
        self.assertFalse(Gallery.objects.filter(name__startswith="kit-").exists())

    def test_an_upload_without_the_csrf_token_is_refused(self) -> None:
        browser = Client(enforce_csrf_checks=True)
        browser.force_login(self.alice)
        response = browser.post(
            "/installed/kits/", {"kit": SimpleUploadedFile("kit.tar", b"x" * 10)}
        )
        self.assertEqual(response.status_code, 403)
        self.assertFalse(
            AuditEvent.objects.filter(action="kit_upload").exists(),
            "the view ran",
        )

    def test_only_the_admin_role_may_upload_a_kit(self) -> None:
        for user in (self.bob, self.carol):
            with self.subTest(user=user.username):
                self.client.force_login(user)
                self.assertEqual(self.client.get("/installed/kits/").status_code, 403)
                response = self.upload()
                self.assertContains(
                    response, "backends.install_from_path", status_code=403
                )
        self.assertFalse(kits_folder().exists() and any(kits_folder().iterdir()))

    def test_import_backends_refuses_a_kit_signed_by_another_key(self) -> None:
        backends = self.move_to_another_host()
        self.use_policy(new_key())
        with self.assertRaisesMessage(CommandError, "not installed: kit-"):
            call_command("import_backends", str(self.kit), stdout=io.StringIO())
        self.assert_not_unpacked(backends)


def test_the_daily_sweep_removes_what_interrupted_uploads_left_behind() -> None:
    folder = kits_folder()
    folder.mkdir(parents=True, exist_ok=True)
    stale_upload, stale_import = folder / ".upload-stale", folder / ".import-1-2"
    fresh_upload = folder / ".upload-fresh"
    stale_upload.write_bytes(b"half a kit")
    (stale_import / "blobs").mkdir(parents=True)
    fresh_upload.write_bytes(b"being received")
    a_day_ago = time.time() - 86400 - 60
    for path in (stale_upload, stale_import):
        os.utime(path, (a_day_ago, a_day_ago))
    assert prune_kit_leftovers.call_local() == 2
    assert sorted(p.name for p in folder.iterdir()) == [".upload-fresh"]


def test_a_refused_upload_is_read_to_its_end_so_the_proxy_delivers_the_answer() -> None:
    # Behind nginx (uploads streamed to the app), an answer sent over an unread body
    # reaches the client as a 502: the worker's close resets the connection.
    request = RequestFactory().post(
        "/installed/kits/", {"kit": SimpleUploadedFile("kit.tar", b"\0" * 2**21)}
    )
    request.user = AnonymousUser()
    response = kit_upload(request)
    assert response.status_code == 302
    assert request.read() == b""
