"""Signature verification per gallery and strict integrity, on a real registry.

The tests sign their images themselves the way ``cosign sign --key`` does
(tests/signing.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.test import override_settings

from backends.core import oci
from backends.core.oci.manifest import OCI_INDEX
from backends.core.oci.verify import SIMPLE_SIGNING
from backends.models import InstalledBackend, Job
from tests.base import PipelineTestCase
from tests.imagebuild import PushedImage, file, make_layer
from tests.registry_fixtures import FaultProxy, RegistryProcess
from tests.signing import (
    GITHUB_ISSUER,
    SigstoreInstance,
    new_key,
    payload_for,
    public_pem,
    push_bundle,
    push_signature,
    sign,
)

pytestmark = pytest.mark.registry

_numbers = itertools.count()


@dataclass
class Signed:
    image: PushedImage
    layer: str
    key: ec.EllipticCurvePrivateKey


class SignedImageCase(PipelineTestCase):
    """Images pushed per test to the real registry, reached through the fault proxy
    (which records whether a layer was ever fetched). No tests of its own."""

    @pytest.fixture(autouse=True)
    def _registry(self, registry: RegistryProcess, fault_proxy: FaultProxy) -> None:
        self.registry, self.proxy = registry, fault_proxy

    def new_image(self) -> Signed:
        # A repository per test: each has its own referrers tag.
        repository = f"signed/b{next(_numbers)}-{id(self)}"
        layer = make_layer([file("run.sh", "#!/bin/sh\necho signed\n", 0o755)])
        image = self.registry.push_image(repository, "v1", [layer])
        return Signed(image, layer.digest, new_key())

    def use(self, signed: Signed, **verification: str) -> None:
        ref = signed.image.ref(self.proxy.host)
        self.gallery_file.write_text(f"- name: cpu-signed\n  uri: {ref}\n")
        self.gallery.verification = verification
        self.gallery.save()
        self.gallery.sync(force=True)

    def install(self) -> dict[str, Any]:
        return self.status(self.apply("cpu-signed"))

    def assert_refused_before_extraction(
        self, signed: Signed, status: dict[str, Any], reason: str
    ) -> None:
        self.assertEqual(status["state"], "failed", status)
        self.assertIn("signature verification failed", status["error"])
        self.assertIn(signed.image.repository, status["error"])
        self.assertIn(f"gallery {self.gallery.name}: key SHA256:", status["error"])
        self.assertIn(reason, status["error"])
        # The layer was never downloaded, so nothing of it reached a staging folder.
        self.assertEqual(self.proxy.requests_for(signed.layer), [])
        self.assertFalse((self.backends / "cpu-signed").exists())


class SignatureTestCase(SignedImageCase):
    def test_an_image_signed_with_the_gallerys_key_installs_and_records_the_policy(
        self,
    ) -> None:
        signed = self.new_image()
        payload = payload_for(signed.image.digest)
        push_signature(self.registry, signed.image, payload, sign(signed.key, payload))
        self.use(signed, public_key=public_pem(signed.key))
        status = self.install()
        self.assertEqual(status["state"], "completed", status)
        self.assertNotIn("warning", status["outcome"])
        metadata = json.loads(
            (self.backends / "cpu-signed" / "metadata.json").read_text()
        )
        self.assertIn(
            f"gallery {self.gallery.name}: key SHA256:", metadata["verified_by"]
        )
        self.assertEqual(
            InstalledBackend.objects.get(name="cpu-signed").verified_by,
            metadata["verified_by"],
        )

    def test_a_multi_platform_image_is_verified_by_the_signature_of_its_index(
        self,
    ) -> None:
        signed = self.new_image()
        platform = oci.Platform.host()
        index = self.registry.push_index(
            signed.image.repository,
            "multi",
            [(signed.image, f"linux/{platform.architecture}")],
        )
        payload = payload_for(index.digest)
        push_signature(self.registry, index, payload, sign(signed.key, payload))
        self.use(
            Signed(index, signed.layer, signed.key), public_key=public_pem(signed.key)
        )
        status = self.install()
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("signed", (self.backends / "cpu-signed" / "run.sh").read_text())

    def test_signatures_are_found_through_the_referrers_api_when_it_exists(
        self,
    ) -> None:
        signed = self.new_image()
        payload = payload_for(signed.image.digest)
        index = push_signature(
            self.registry, signed.image, payload, sign(signed.key, payload), tag=False
        )
        api = f"/v2/{signed.image.repository}/referrers/{signed.image.digest}"
        self.proxy.answer(api, index, "application/vnd.oci.image.index.v1+json")
        self.use(signed, public_key=public_pem(signed.key))
        self.assertEqual(self.install()["state"], "completed")
        self.assertTrue(self.proxy.requests_for(api))
        tag = signed.image.digest.replace(":", "-")
        self.assertEqual(self.proxy.requests_for(f"/manifests/{tag}"), [])

    def test_the_image_verified_is_the_image_installed_when_the_tag_moves(
        self,
    ) -> None:
        signed = self.new_image()
        payload = payload_for(signed.image.digest)
        push_signature(self.registry, signed.image, payload, sign(signed.key, payload))
        # An unsigned image in the same repository, which a hostile registry serves
        # for the signed tag from its second request on: after the check.
        unsigned = self.registry.push_image(
            signed.image.repository,
            "unsigned",
            [make_layer([file("run.sh", "#!/bin/sh\necho unsigned\n", 0o755)])],
        )
        self.proxy.answer(
            f"/v2/{signed.image.repository}/manifests/v1",
            unsigned.manifest,
            unsigned.media_type,
            after=1,
        )
        self.use(signed, public_key=public_pem(signed.key))
        status = self.install()
        self.assertEqual(status["state"], "completed", status)
        self.assertIn(
            "echo signed", (self.backends / "cpu-signed" / "run.sh").read_text()
        )
        self.assertEqual(self.proxy.requests_for(unsigned.layers[0].digest), [])

    def test_a_platform_manifest_named_by_sha512_must_match_that_digest(
        self,
    ) -> None:
        # A signed index naming its platform manifest by sha512, and a hostile
        # registry answering that digest with an unsigned image: the signature
        # covers the index, so only the index's digest chains to what is installed.
        signed = self.new_image()
        unsigned = self.registry.push_image(
            signed.image.repository,
            "unsigned",
            [make_layer([file("run.sh", "#!/bin/sh\necho unsigned\n", 0o755)])],
        )
        sha512 = "sha512:" + hashlib.sha512(signed.image.manifest).hexdigest()
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": signed.image.media_type,
                        "digest": sha512,
                        "size": len(signed.image.manifest),
                        "platform": {
                            "os": "linux",
                            "architecture": oci.Platform.host().architecture,
                        },
                    }
                ],
            }
        ).encode()
        index = PushedImage(
            signed.image.repository,
            "v512",
            "sha256:" + hashlib.sha256(body).hexdigest(),
            body,
            OCI_INDEX,
        )
        payload = payload_for(index.digest)
        push_signature(self.registry, index, payload, sign(signed.key, payload))
        repository = f"/v2/{signed.image.repository}/manifests"
        self.proxy.answer(f"{repository}/v512", body, OCI_INDEX)
        self.proxy.answer(
            f"{repository}/{sha512}", unsigned.manifest, unsigned.media_type
        )
        self.use(
            Signed(index, signed.layer, signed.key), public_key=public_pem(signed.key)
        )
        status = self.install()
        self.assertEqual(status["state"], "failed", status)
        self.assertIn(f"digest mismatch for manifest {sha512}", status["error"])
        self.assertEqual(self.proxy.requests_for(unsigned.layers[0].digest), [])
        self.assertFalse((self.backends / "cpu-signed").exists())

        # The genuine manifest under that digest installs.
        self.proxy.answer(
            f"{repository}/{sha512}", signed.image.manifest, signed.image.media_type
        )
        status = self.install()
        self.assertEqual(status["state"], "completed", status)
        self.assertIn(
            "echo signed", (self.backends / "cpu-signed" / "run.sh").read_text()
        )

    def test_a_signature_by_another_key_is_refused(self) -> None:
        signed = self.new_image()
        payload = payload_for(signed.image.digest)
        push_signature(self.registry, signed.image, payload, sign(new_key(), payload))
        self.use(signed, public_key=public_pem(signed.key))
        self.assert_refused_before_extraction(
            signed, self.install(), "does not verify with key"
        )

    def test_a_tampered_payload_is_refused(self) -> None:
        signed = self.new_image()
        payload = payload_for(signed.image.digest)
        tampered = payload_for(signed.image.digest, note="changed")
        push_signature(self.registry, signed.image, tampered, sign(signed.key, payload))
        self.use(signed, public_key=public_pem(signed.key))
        self.assert_refused_before_extraction(
            signed, self.install(), "does not verify with key"
        )

    def test_a_signature_of_another_digest_is_refused(self) -> None:
        signed = self.new_image()
        other = "sha256:" + "ab" * 32
        payload = payload_for(other)
        push_signature(self.registry, signed.image, payload, sign(signed.key, payload))
        self.use(signed, public_key=public_pem(signed.key))
        self.assert_refused_before_extraction(
            signed, self.install(), f"the signed payload is for {other}"
        )

    def test_an_unsigned_image_is_refused_by_a_gallery_with_a_policy(self) -> None:
        signed = self.new_image()
        self.use(signed, public_key=public_pem(signed.key))
        self.assert_refused_before_extraction(
            signed, self.install(), "no signature refers to"
        )

    def test_a_signature_older_than_not_before_is_refused(self) -> None:
        signed = self.new_image()
        payload = payload_for(signed.image.digest, timestamp="2026-01-01T00:00:00Z")
        push_signature(self.registry, signed.image, payload, sign(signed.key, payload))
        self.use(
            signed,
            public_key=public_pem(signed.key),
            not_before="2026-05-01T00:00:00Z",
        )
        self.assert_refused_before_extraction(
            signed, self.install(), "before not_before"
        )

    def test_a_signature_newer_than_not_before_installs(self) -> None:
        signed = self.new_image()
        payload = payload_for(signed.image.digest, timestamp="2026-06-01T00:00:00Z")
        push_signature(self.registry, signed.image, payload, sign(signed.key, payload))
        self.use(
            signed,
            public_key=public_pem(signed.key),
            not_before="2026-05-01T00:00:00Z",
        )
        self.assertEqual(self.install()["state"], "completed")

    def test_a_refused_reinstall_keeps_the_installed_build(self) -> None:
        signed = self.new_image()
        self.use(signed)
        self.assertEqual(self.install()["state"], "completed")
        run_sh = (self.backends / "cpu-signed" / "run.sh").read_text()
        self.use(signed, public_key=public_pem(signed.key))
        status = self.status(self.apply("cpu-signed", force=True))
        self.assertEqual(status["state"], "failed", status)
        self.assertIn("no signature refers to", status["error"])
        self.assertEqual((self.backends / "cpu-signed" / "run.sh").read_text(), run_sh)
        self.assertTrue(InstalledBackend.objects.filter(name="cpu-signed").exists())

    def test_an_unverified_image_installs_with_a_warning(self) -> None:
        signed = self.new_image()
        self.use(signed)
        status = self.install()
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("warning: cpu-signed not signature-verified", status["outcome"])
        self.assertEqual(
            InstalledBackend.objects.get(name="cpu-signed").verified_by, ""
        )

    def signed_image_and_tarball(self) -> tuple[Signed, Path, str]:
        """A gallery with a key policy, and a sound tarball with its sha256."""
        signed = self.new_image()
        tarball = self.sources / "cpu-signed.tar.gz"
        tarball.write_bytes(
            make_layer([file("run.sh", "#!/bin/sh\necho tar\n", 0o755)]).data
        )
        self.use(signed, public_key=public_pem(signed.key))
        return signed, tarball, hashlib.sha256(tarball.read_bytes()).hexdigest()

    def test_a_gallery_with_a_policy_does_not_install_a_tarball(self) -> None:
        # The tarball is sound and matches the gallery's sha256, which whoever
        # changed the gallery wrote too: only a signature would say who built it.
        signed, tarball, sha256 = self.signed_image_and_tarball()
        self.gallery_file.write_text(
            f"- name: cpu-signed\n  uri: {tarball.as_uri()}\n  sha256: {sha256}\n"
        )
        self.gallery.sync(force=True)
        status = self.install()
        self.assertEqual(status["state"], "failed", status)
        self.assertIn(
            "a gallery with a policy installs signed images only", status["error"]
        )
        self.assertIn(f"gallery {self.gallery.name}: key SHA256:", status["error"])
        self.assertFalse((self.backends / "cpu-signed").exists())

    def test_a_registry_failing_the_image_does_not_fall_back_to_a_tarball_mirror(
        self,
    ) -> None:
        signed, tarball, sha256 = self.signed_image_and_tarball()
        ref = signed.image.ref(self.proxy.host)
        self.gallery_file.write_text(
            f"- name: cpu-signed\n  uri: {ref}\n  sha256: {sha256}\n"
            f"  mirrors: [{tarball.as_uri()}]\n"
        )
        self.gallery.sync(force=True)
        self.proxy.fail_next(50, 404, f"/v2/{signed.image.repository}/manifests/v1")
        status = self.install()
        self.assertEqual(status["state"], "failed", status)
        self.assertIn(
            "a gallery with a policy installs signed images only", status["error"]
        )
        self.assertFalse((self.backends / "cpu-signed").exists())

    @override_settings(LOCALAI_ADMIN_REQUIRE_INTEGRITY=True)
    def test_strict_integrity_refuses_an_image_from_a_gallery_without_a_policy(
        self,
    ) -> None:
        signed = self.new_image()
        self.use(signed)
        status = self.install()
        self.assertEqual(status["state"], "failed", status)
        self.assertIn("without a verification policy is refused", status["error"])
        self.assertEqual(self.proxy.requests_for(signed.layer), [])

    @override_settings(LOCALAI_ADMIN_REQUIRE_INTEGRITY=True)
    def test_strict_integrity_fails_a_gallery_tarball_without_a_sha256(self) -> None:
        tarball = self.sources / "custom.tar.gz"
        tarball.write_bytes(b"never read")
        self.gallery_file.write_text(f"- name: cpu-tarred\n  uri: {tarball.as_uri()}\n")
        self.gallery.sync(force=True)
        status = self.status(self.apply("cpu-tarred"))
        self.assertEqual(status["state"], "failed", status)
        self.assertIn("a tarball without a sha256 is refused", status["error"])
        self.assertFalse((self.backends / "cpu-tarred").exists())

    @override_settings(LOCALAI_ADMIN_REQUIRE_INTEGRITY=True)
    def test_strict_integrity_refuses_external_images_and_tarballs_before_queueing(
        self,
    ) -> None:
        tarball = self.sources / "custom.tar.gz"
        tarball.write_bytes(b"never read")
        for uri in (
            tarball.as_uri(),
            "http://127.0.0.1:1/build.tar.gz",
            self.registry.ref("signed/any", "v1"),
        ):
            with self.subTest(uri=uri):
                response = self.api_post(
                    "/api/backends/install-external", {"uri": uri, "name": "custom"}
                )
                self.assertEqual(response.status_code, 400, response.content)
                self.assertEqual(response.json()["code"], "integrity_required")
                self.assertIn(
                    "LOCALAI_ADMIN_REQUIRE_INTEGRITY is on",
                    response.json()["error"]["message"],
                )
        self.assertFalse(Job.objects.exists())


IDENTITY = (
    "https://github.com/example/backends/.github/workflows/build.yaml@refs/heads/master"
)


class KeylessSignatureTestCase(SignedImageCase):
    """Keyless bundles verified by sigstore-python against a trust root made here."""

    def setUp(self) -> None:
        super().setUp()
        self.sigstore = SigstoreInstance()
        trust_root = self.gallery_file.parent / "trusted_root.json"
        trust_root.write_text(json.dumps(self.sigstore.trusted_root()))
        self.enterContext(
            override_settings(LOCALAI_ADMIN_SIGSTORE_TRUST_ROOT=str(trust_root))
        )

    def signed_keyless(
        self, sigstore: SigstoreInstance | None = None, **kw: Any
    ) -> Signed:
        signed = self.new_image()
        bundle = (sigstore or self.sigstore).bundle(signed.image.digest, IDENTITY, **kw)
        push_bundle(self.registry, signed.image, bundle)
        return signed

    def assert_keyless_refused(self, signed: Signed, reason: str) -> None:
        status = self.install()
        self.assertEqual(status["state"], "failed", status)
        self.assertIn("signature verification failed", status["error"])
        self.assertIn(f"gallery {self.gallery.name}: keyless, issuer", status["error"])
        self.assertIn(reason, status["error"])
        self.assertEqual(self.proxy.requests_for(signed.layer), [])
        self.assertFalse((self.backends / "cpu-signed").exists())

    def test_a_keyless_signature_by_the_expected_workflow_installs(self) -> None:
        signed = self.signed_keyless()
        self.use(signed, issuer=GITHUB_ISSUER, identity=IDENTITY)
        status = self.install()
        self.assertEqual(status["state"], "completed", status)
        self.assertIn(
            f"keyless, issuer {GITHUB_ISSUER}, identity {IDENTITY}",
            InstalledBackend.objects.get(name="cpu-signed").verified_by,
        )

    def test_a_long_identity_pattern_is_recorded_whole(self) -> None:
        signed = self.signed_keyless()
        alternatives = "|".join(f"^https://github\\.com/team{n}/" for n in range(40))
        pattern = f"{alternatives}|^{re.escape(IDENTITY)}$"
        self.use(signed, issuer=GITHUB_ISSUER, identity_regex=pattern)
        status = self.install()
        self.assertEqual(status["state"], "completed", status)
        self.assertIn(
            pattern, InstalledBackend.objects.get(name="cpu-signed").verified_by
        )

    def test_a_keyless_signature_by_another_identity_is_refused(self) -> None:
        signed = self.signed_keyless()
        self.use(
            signed,
            issuer=GITHUB_ISSUER,
            identity_regex=r"^https://github\.com/other/",
        )
        self.assert_keyless_refused(signed, "do not match the policy")

    def test_a_bundle_from_an_untrusted_sigstore_is_refused(self) -> None:
        signed = self.signed_keyless(SigstoreInstance())
        self.use(signed, issuer=GITHUB_ISSUER, identity=IDENTITY)
        self.assert_keyless_refused(signed, "certificate chain")

    def test_a_keyless_signature_older_than_not_before_is_refused(self) -> None:
        signed = self.signed_keyless()
        self.use(
            signed,
            issuer=GITHUB_ISSUER,
            identity=IDENTITY,
            not_before=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        )
        self.assert_keyless_refused(signed, "before not_before")

    # cosign sign 3's form: a DSSE envelope around an in-toto statement whose
    # subject is the image's digest.
    def signed_dsse(self, about: str = "", **kw: Any) -> Signed:
        signed = self.new_image()
        bundle = self.sigstore.dsse_bundle(about or signed.image.digest, IDENTITY, **kw)
        push_bundle(self.registry, signed.image, bundle)
        return signed

    def test_a_dsse_statement_about_the_image_by_the_expected_workflow_installs(
        self,
    ) -> None:
        signed = self.signed_dsse()
        self.use(signed, issuer=GITHUB_ISSUER, identity=IDENTITY)
        status = self.install()
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("signed", (self.backends / "cpu-signed" / "run.sh").read_text())
        self.assertIn(
            f"keyless, issuer {GITHUB_ISSUER}, identity {IDENTITY}",
            InstalledBackend.objects.get(name="cpu-signed").verified_by,
        )

    def test_a_dsse_statement_about_another_image_is_refused(self) -> None:
        # A genuine bundle of another image, listed as a referrer of this one.
        layer = make_layer([file("run.sh", "#!/bin/sh\necho other\n", 0o755)])
        other = self.registry.push_image("signed/other", "v1", [layer]).digest
        signed = self.signed_dsse(about=other)
        self.use(signed, issuer=GITHUB_ISSUER, identity=IDENTITY)
        self.assert_keyless_refused(
            signed,
            f"the signed statement is about {other}, not {signed.image.digest}",
        )

    def test_a_dsse_statement_by_another_identity_is_refused(self) -> None:
        signed = self.signed_dsse()
        self.use(
            signed,
            issuer=GITHUB_ISSUER,
            identity="https://github.com/other/backends/.github/workflows/b.yaml@refs/heads/master",
        )
        self.assert_keyless_refused(signed, "do not match the policy")

    def test_a_dsse_envelope_that_is_not_an_in_toto_statement_is_refused(
        self,
    ) -> None:
        signed = self.signed_dsse(payload_type=SIMPLE_SIGNING)
        self.use(signed, issuer=GITHUB_ISSUER, identity=IDENTITY)
        self.assert_keyless_refused(signed, f"DSSE payload type '{SIMPLE_SIGNING}'")
