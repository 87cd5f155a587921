"""Signatures made by the tests, pushed as OCI 1.1 artifacts whose subject is the image
and listed under the referrers tag schema (``sha256-<hex>``): Debian's docker-registry
has no referrers API.

* Key-pair: cosign's ECDSA P-256 signature over a simple-signing payload.
* Keyless: ``SigstoreInstance``, a Fulcio CA, CT log and Rekor log of the tests' own,
  and the Sigstore bundles they would give: a message signature over the image digest,
  or a DSSE envelope around an in-toto statement naming it (``cosign sign`` 3)."""

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
    IN_TOTO,
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
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
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

    def _certificate(
        self, key: ec.EllipticCurvePrivateKey, identity: str, issuer: str, at: datetime
    ) -> x509.Certificate:
        """A Fulcio leaf for ``key`` with its SCT embedded, as the CT log signed it."""
        serial = x509.random_serial_number()
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
        return (
            self._leaf(key, identity, issuer, at, serial)
            .add_extension(x509.UnrecognizedExtension(_SCT_LIST, octets), False)
            .sign(self.ca_key, hashes.SHA256())
        )

    def _log_entry(
        self, kind: str, spec: dict[str, Any], at: datetime
    ) -> dict[str, Any]:
        """The Rekor entry of a ``kind`` 0.0.1 body: a one-leaf tree, its inclusion
        proof and signed checkpoint, and the log's promise."""
        body = json.dumps({"apiVersion": "0.0.1", "kind": kind, "spec": spec}).encode()
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
        return {
            "logIndex": "0",
            "logId": {"keyId": _b64(rekor_id)},
            "kindVersion": {"kind": kind, "version": "0.0.1"},
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

    def bundle(
        self,
        digest: str,
        identity: str,
        issuer: str = GITHUB_ISSUER,
        *,
        at: datetime | None = None,
    ) -> bytes:
        """A message signature over ``digest`` (``cosign sign-blob``'s form, which
        ``cosign sign`` 2.x also wrote for images), in a hashedrekord entry."""
        at = (at or datetime.now(UTC)).replace(microsecond=0)
        key = new_key()
        leaf = self._certificate(key, identity, issuer, at)
        message = bytes.fromhex(digest.partition(":")[2])
        signature = key.sign(message, ec.ECDSA(Prehashed(hashes.SHA256())))
        spec = {
            "data": {"hash": {"algorithm": "sha256", "value": message.hex()}},
            "signature": {
                "content": _b64(signature),
                "publicKey": {
                    "content": _b64(leaf.public_bytes(serialization.Encoding.PEM))
                },
            },
        }
        return self._bundle(
            leaf,
            self._log_entry("hashedrekord", spec, at),
            {
                "messageSignature": {
                    "messageDigest": {
                        "algorithm": "SHA2_256",
                        "digest": _b64(message),
                    },
                    "signature": _b64(signature),
                }
            },
        )

    def dsse_bundle(
        self,
        digest: str,
        identity: str,
        issuer: str = GITHUB_ISSUER,
        *,
        payload_type: str = IN_TOTO,
    ) -> bytes:
        """What ``cosign sign`` with the new bundle format writes for an image: a DSSE
        envelope around an in-toto statement whose subject is ``digest`` (predicate:
        cosign's signature type), in a dsse entry recording the payload's hash and the
        signature."""
        at = datetime.now(UTC).replace(microsecond=0)
        key = new_key()
        leaf = self._certificate(key, identity, issuer, at)
        statement = json.dumps(
            {
                "_type": "https://in-toto.io/Statement/v1",
                "subject": [
                    {
                        "name": "example/backend",
                        "digest": {"sha256": digest.partition(":")[2]},
                    }
                ],
                "predicateType": COSIGN_SIGN_PREDICATE,
                "predicate": {},
            }
        ).encode()
        type_bytes = payload_type.encode()
        # DSSE's pre-authentication encoding: what the key signs.
        pae = b"DSSEv1 %d %s %d %s" % (
            len(type_bytes),
            type_bytes,
            len(statement),
            statement,
        )
        signature = key.sign(pae, ec.ECDSA(hashes.SHA256()))
        envelope = {
            "payload": _b64(statement),
            "payloadType": payload_type,
            "signatures": [{"sig": _b64(signature), "keyid": ""}],
        }
        spec = {
            "envelopeHash": {
                "algorithm": "sha256",
                "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest(),
            },
            "payloadHash": {
                "algorithm": "sha256",
                "value": hashlib.sha256(statement).hexdigest(),
            },
            "signatures": [
                {
                    "signature": _b64(signature),
                    "verifier": _b64(leaf.public_bytes(serialization.Encoding.PEM)),
                }
            ],
        }
        return self._bundle(
            leaf, self._log_entry("dsse", spec, at), {"dsseEnvelope": envelope}
        )

    @staticmethod
    def _bundle(
        leaf: x509.Certificate, entry: dict[str, Any], content: dict[str, Any]
    ) -> bytes:
        return json.dumps(
            {
                "mediaType": SIGSTORE_BUNDLE,
                "verificationMaterial": {
                    "certificate": {
                        "rawBytes": _b64(leaf.public_bytes(serialization.Encoding.DER))
                    },
                    "tlogEntries": [entry],
                },
                **content,
            }
        ).encode()


def push_bundle(registry: RegistryProcess, image: PushedImage, bundle: bytes) -> None:
    """Push a Sigstore bundle artifact of ``image`` (LocalAI's layout: the bundle is the
    first layer) and list it under the referrers tag."""
    _push_referrer(
        registry, image, SIGSTORE_BUNDLE, Blob(SIGSTORE_BUNDLE, bundle), {}, "bundle"
    )
