"""Cosign key-pair signatures made by the tests: an ECDSA P-256 signature over a
simple-signing payload, pushed as an OCI 1.1 artifact whose subject is the image and
listed under the referrers tag schema (``sha256-<hex>``): Debian's docker-registry has
no referrers API."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from backends.core.oci.verify import (
    COSIGN_SIGNATURE_ARTIFACT,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
)
from tests.imagebuild import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    PushedImage,
    push_blob,
    push_manifest,
)
from tests.registry_fixtures import RegistryProcess


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        .decode()
    )


def payload_for(digest: str, **optional: Any) -> bytes:
    body: dict[str, Any] = {
        "critical": {
            "identity": {"docker-reference": "example/backend"},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": optional or None,
    }
    return json.dumps(body).encode()


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def push_signature(
    registry: RegistryProcess,
    image: PushedImage,
    payload: bytes,
    signature: str,
    *,
    tag: bool = True,
) -> bytes:
    """Push a signature artifact of ``image``; list it under the referrers tag unless
    ``tag`` is False. Returns the referrers index that lists it."""
    return _push_referrer(
        registry,
        image,
        COSIGN_SIGNATURE_ARTIFACT,
        Blob(SIMPLE_SIGNING, payload),
        {SIGNATURE_ANNOTATION: signature},
        "sig",
        tag=tag,
    )


def _push_referrer(
    registry: RegistryProcess,
    image: PushedImage,
    artifact_type: str,
    layer: Blob,
    annotations: dict[str, str],
    name: str,
    *,
    tag: bool = True,
) -> bytes:
    """Push an artifact whose subject is ``image`` (one layer, an empty config) under
    the tag ``name``, and, with ``tag``, the referrers index listing it under the
    referrers tag schema (``sha256-<hex>``). Returns that index."""
    config = Blob("application/vnd.oci.empty.v1+json", b"{}")
    described = layer.descriptor()
    if annotations:
        described["annotations"] = annotations
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config.descriptor(),
            "layers": [described],
            "subject": {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": len(image.manifest),
            },
        }
    ).encode()
    with httpx.Client() as http:
        for blob in (config, layer):
            push_blob(http, registry.url, image.repository, blob)
        digest = push_manifest(
            http, registry.url, image.repository, name, manifest, OCI_MANIFEST
        )
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "artifactType": artifact_type,
                        "digest": digest,
                        "size": len(manifest),
                    }
                ],
            }
        ).encode()
        if tag:
            push_manifest(
                http,
                registry.url,
                image.repository,
                image.digest.replace(":", "-"),
                index,
                OCI_INDEX,
            )
    return index


# --- keyless: a Sigstore instance of our own -----------------------------------------

SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
_SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _der_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


class SigstoreInstance:
    """A Fulcio CA, a CT log and a Rekor log, as keys: ``trusted_root()`` is the
    trusted_root.json that names them, ``bundle()`` what ``cosign sign`` would get
    from them (a message signature over the image digest, with an embedded SCT and a
    Rekor entry carrying its inclusion proof, checkpoint and promise)."""

    def __init__(self) -> None:
        self.ca_key, self.ct_key, self.rekor_key = new_key(), new_key(), new_key()
        self.start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test fulcio")])
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(1)
            .not_valid_before(self.start)
            .not_valid_after(self.start + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()),
                False,
            )
            .add_extension(
                x509.KeyUsage(
                    False, False, False, False, False, True, True, False, False
                ),
                True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )

    def trusted_root(self) -> dict[str, Any]:
        valid = {"start": self.start.isoformat().replace("+00:00", "Z")}

        def log(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
            return {
                "baseUrl": "http://127.0.0.1",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": _b64(_spki(key)),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": valid,
                },
                "logId": {"keyId": _b64(hashlib.sha256(_spki(key)).digest())},
            }

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.rekor_key)],
            "ctlogs": [log(self.ct_key)],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "test", "commonName": "test fulcio"},
                    "uri": "http://127.0.0.1",
                    "certChain": {
                        "certificates": [
                            {
                                "rawBytes": _b64(
                                    self.ca.public_bytes(serialization.Encoding.DER)
                                )
                            }
                        ]
                    },
                    "validFor": valid,
                }
            ],
            "timestampAuthorities": [],
        }

    def _leaf(
        self,
        key: ec.EllipticCurvePrivateKey,
        identity: str,
        issuer: str,
        at: datetime,
        serial: int,
    ) -> x509.CertificateBuilder:
        issuer_der = b"\x0c" + _der_length(len(issuer)) + issuer.encode()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(at)
            .not_valid_after(at + timedelta(minutes=10))
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.ca_key.public_key()
                ),
                False,
            )
            .add_extension(
                x509.KeyUsage(
                    True, False, False, False, False, False, False, False, False
                ),
                True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                True,
            )
            .add_extension(x509.UnrecognizedExtension(_ISSUER_V2, issuer_der), False)
        )

    def bundle(
        self,
        digest: str,
        identity: str,
        issuer: str = GITHUB_ISSUER,
        *,
        at: datetime | None = None,
    ) -> bytes:
        at = (at or datetime.now(UTC)).replace(microsecond=0)
        key, serial = new_key(), x509.random_serial_number()
        # The precertificate's TBS is what the CT log signs; the final certificate is
        # the same with the SCT list added last (cryptography's tbs_precertificate_bytes
        # gives that TBS back).
        tbs = (
            self._leaf(key, identity, issuer, at, serial)
            .sign(self.ca_key, hashes.SHA256())
            .tbs_certificate_bytes
        )
        when = int(at.timestamp() * 1000) + 1000
        ct_id = hashlib.sha256(_spki(self.ct_key)).digest()
        signed = (
            struct.pack("!BBQH", 0, 0, when, 1)
            + hashlib.sha256(_spki(self.ca_key)).digest()
            + struct.pack("!I", len(tbs))[1:]
            + tbs
            + struct.pack("!H", 0)
        )
        sct_signature = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            b"\x00"
            + ct_id
            + struct.pack("!QH", when, 0)
            + struct.pack("!BBH", 4, 3, len(sct_signature))
            + sct_signature
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        octets = b"\x04" + _der_length(len(sct_list)) + sct_list
        leaf = (
            self._leaf(key, identity, issuer, at, serial)
            .add_extension(x509.UnrecognizedExtension(_SCT_LIST, octets), False)
            .sign(self.ca_key, hashes.SHA256())
        )
        message = bytes.fromhex(digest.partition(":")[2])
        signature = key.sign(message, ec.ECDSA(Prehashed(hashes.SHA256())))
        body = json.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": message.hex()}},
                    "signature": {
                        "content": _b64(signature),
                        "publicKey": {
                            "content": _b64(
                                leaf.public_bytes(serialization.Encoding.PEM)
                            )
                        },
                    },
                },
            }
        ).encode()
        rekor_id = hashlib.sha256(_spki(self.rekor_key)).digest()
        integrated = int(at.timestamp()) + 2
        promise = json.dumps(
            {
                "body": _b64(body),
                "integratedTime": integrated,
                "logID": rekor_id.hex(),
                "logIndex": 0,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        root = hashlib.sha256(b"\x00" + body).digest()
        note = f"test-rekor - 1\n1\n{_b64(root)}\n"
        note_signature = self.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = (
            f"{note}\n\u2014 test-rekor {_b64(rekor_id[:4] + note_signature)}\n"
        )
        bundle = {
            "mediaType": SIGSTORE_BUNDLE,
            "verificationMaterial": {
                "certificate": {
                    "rawBytes": _b64(leaf.public_bytes(serialization.Encoding.DER))
                },
                "tlogEntries": [
                    {
                        "logIndex": "0",
                        "logId": {"keyId": _b64(rekor_id)},
                        "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
                        "integratedTime": str(integrated),
                        "inclusionPromise": {
                            "signedEntryTimestamp": _b64(
                                self.rekor_key.sign(promise, ec.ECDSA(hashes.SHA256()))
                            )
                        },
                        "inclusionProof": {
                            "logIndex": "0",
                            "rootHash": _b64(root),
                            "treeSize": "1",
                            "hashes": [],
                            "checkpoint": {"envelope": checkpoint},
                        },
                        "canonicalizedBody": _b64(body),
                    }
                ],
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(message)},
                "signature": _b64(signature),
            },
        }
        return json.dumps(bundle).encode()


def push_bundle(registry: RegistryProcess, image: PushedImage, bundle: bytes) -> None:
    """Push a Sigstore bundle artifact of ``image`` (LocalAI's layout: the bundle is the
    first layer) and list it under the referrers tag."""
    _push_referrer(
        registry, image, SIGSTORE_BUNDLE, Blob(SIGSTORE_BUNDLE, bundle), {}, "bundle"
    )
