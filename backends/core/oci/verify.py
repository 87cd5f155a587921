"""Signature verification of an image before its layers are fetched. No Django here.

A gallery may carry a ``verification`` block (LocalAI's shape). This version checks
key-pair cosign signatures: the signature artifacts referring to the image (OCI 1.1
referrers API, else the referrers tag schema) hold a simple-signing payload as a layer
and its ECDSA P-256 / SHA-256 signature, base64, in the layer's
``dev.cosignproject.cosign/signature`` annotation. A signature counts when it verifies
with the gallery's public key AND its payload names the digest being installed, so a
valid signature of another image cannot be replayed.

Keyless policies (``issuer`` / ``identity``: Fulcio certificates and Rekor entries) are
refused when the policy is parsed rather than accepted and ignored: an admin who writes
one must not believe images are checked against it.

``not_before``: key-pair signatures carry no transparency-log time, so the signed time
is the payload's ``optional.timestamp`` (unix seconds or RFC 3339, inside the signed
bytes: ``cosign sign --key ... -a timestamp=...``); a policy with ``not_before`` refuses
signatures without one, and those signed before it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from backends.core.oci.client import RegistryClient
from backends.core.oci.errors import OCIError, VerificationError
from backends.core.oci.manifest import Descriptor, ResolvedImage
from backends.core.oci.reference import Reference, is_digest
from backends.core.transfer import Watch

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
PAYLOAD_TYPE = "cosign container image signature"
# A payload is a few hundred bytes; a referrer list is bounded so a hostile registry
# cannot make a job fetch thousands of artifacts.
MAX_PAYLOAD_BYTES = 64 << 10
MAX_SIGNATURES = 16
_KNOWN_KEYS = frozenset(
    {"public_key", "issuer", "issuer_regex", "identity", "identity_regex", "not_before"}
)


class PolicyError(ValueError):
    """A verification block that cannot be enforced; the message is for the admin."""


@dataclass(frozen=True)
class VerificationPolicy:
    public_key: str  # PEM
    not_before: datetime | None = None
    # Who declared it (the gallery's name): named in errors and in what was recorded.
    name: str = ""

    @classmethod
    def from_json(cls, data: object, name: str = "") -> VerificationPolicy | None:
        """The policy of a gallery's ``verification`` block; None for an empty one."""
        if data in (None, {}):
            return None
        if not isinstance(data, dict):
            raise PolicyError("verification must be a JSON object")
        unknown = sorted(set(data) - _KNOWN_KEYS)
        if unknown:
            raise PolicyError(f"unknown verification keys: {', '.join(unknown)}")
        for key, value in data.items():
            if not isinstance(value, str):
                raise PolicyError(f"verification {key} must be a string")
        keyless = [
            key
            for key in ("issuer", "issuer_regex", "identity", "identity_regex")
            if data.get(key)
        ]
        if keyless:
            raise PolicyError(
                f"keyless verification ({', '.join(keyless)}) is not supported by this "
                "version: give the public_key of a key-pair cosign signature instead"
            )
        pem = str(data.get("public_key") or "").strip()
        if not pem:
            raise PolicyError("verification needs a public_key")
        load_public_key(pem)
        not_before = None
        if data.get("not_before"):
            not_before = parse_time(str(data["not_before"]), "not_before")
        return cls(pem, not_before, name)

    def to_json(self) -> dict[str, str]:
        data = {"public_key": self.public_key}
        if self.not_before is not None:
            data["not_before"] = self.not_before.isoformat().replace("+00:00", "Z")
        return data

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(load_public_key(self.public_key))

    def describe(self) -> str:
        """What the admin recognises the policy by, e.g. in the Installed page."""
        text = f"key {self.fingerprint}"
        if self.not_before is not None:
            text += f", not before {self.not_before.isoformat()}"
        return f"gallery {self.name}: {text}" if self.name else text


def load_public_key(pem: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"public_key is not a PEM public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise PolicyError("public_key must be an ECDSA P-256 key (cosign's key pairs)")
    return key


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + hashlib.sha256(der).hexdigest()[:16]


def parse_time(value: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PolicyError(
            f"{what} must be an RFC 3339 time such as 2026-05-01T00:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise PolicyError(f"{what} needs a time zone (e.g. a trailing Z)")
    return moment.astimezone(UTC)


def verify_image(
    client: RegistryClient,
    image: ResolvedImage,
    policy: VerificationPolicy,
    *,
    watch: Watch | None = None,
) -> str:
    """Raise VerificationError unless a signature of ``image`` (of the digest its
    reference points to, or of the platform's manifest) satisfies ``policy``.
    Returns what verified it, to be recorded."""
    ref = image.reference
    key = load_public_key(policy.public_key)
    failures: list[str] = []
    subjects = dict.fromkeys((image.digest, image.manifest_digest))
    for subject in subjects:
        try:
            referrers = client.referrers(ref, subject, watch=watch)
        except OCIError as exc:
            failures.append(f"listing the signatures of {subject}: {exc}")
            continue
        signatures = [
            entry
            for entry in referrers
            if entry.get("artifactType") in (None, COSIGN_SIGNATURE_ARTIFACT)
        ][:MAX_SIGNATURES]
        for entry in signatures:
            try:
                found = _check_signature(
                    client, ref, subject, entry, key, policy, watch
                )
            except _Mismatch as exc:
                failures.append(str(exc))
                continue
            except OCIError as exc:
                failures.append(f"reading signature {entry.get('digest')}: {exc}")
                continue
            return f"{policy.describe()} (signature {found[:19]})"
    if not failures:
        failures.append(f"no signature refers to {' or '.join(subjects)}")
    raise VerificationError(
        f"{ref}: signature verification failed (policy {policy.describe()}): "
        + "; ".join(failures)
    )


class _Mismatch(Exception):
    pass


def _check_signature(
    client: RegistryClient,
    ref: Reference,
    subject: str,
    entry: dict[str, Any],
    key: ec.EllipticCurvePublicKey,
    policy: VerificationPolicy,
    watch: Watch | None,
) -> str:
    digest = entry.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        raise _Mismatch(f"malformed signature descriptor {entry!r}")
    manifest = client.get_manifest(ref, digest, watch=watch).body
    declared = manifest.get("subject")
    if isinstance(declared, dict) and declared.get("digest") not in (None, subject):
        raise _Mismatch(f"signature {digest[:19]} is about {declared.get('digest')}")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise _Mismatch(f"signature {digest[:19]} has no layers")
    reasons = []
    for layer in layers[:MAX_SIGNATURES]:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
            continue
        annotations = layer.get("annotations")
        encoded = (
            annotations.get(SIGNATURE_ANNOTATION)
            if isinstance(annotations, dict)
            else None
        )
        if not isinstance(encoded, str):
            reasons.append("a payload without a signature annotation")
            continue
        descriptor = Descriptor.from_json(layer, ref)
        payload = client.read_small_blob(
            ref, descriptor, MAX_PAYLOAD_BYTES, watch=watch
        )
        try:
            _check_payload(payload, encoded, subject, key, policy)
        except _Mismatch as exc:
            reasons.append(str(exc))
            continue
        return digest
    raise _Mismatch(
        f"signature {digest[:19]}: "
        + ("; ".join(reasons) or "no simple-signing payload")
    )


def _check_payload(
    payload: bytes,
    encoded: str,
    subject: str,
    key: ec.EllipticCurvePublicKey,
    policy: VerificationPolicy,
) -> None:
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _Mismatch("the signature is not base64") from None
    try:
        key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _Mismatch(
            f"the signature does not verify with key {key_fingerprint(key)}"
        ) from None
    # Only now is the payload trusted enough to read.
    try:
        body = json.loads(payload)
        critical = body["critical"]
        signed_digest = critical["image"]["docker-manifest-digest"]
        kind = critical.get("type")
    except (ValueError, KeyError, TypeError):
        raise _Mismatch(
            "the signed payload is not a cosign simple-signing payload"
        ) from None
    if kind != PAYLOAD_TYPE:
        raise _Mismatch(f"the signed payload has type {kind!r}")
    if signed_digest != subject:
        raise _Mismatch(f"the signed payload is for {signed_digest}, not {subject}")
    if policy.not_before is not None:
        signed_at = _signed_time(body.get("optional"))
        if signed_at is None:
            raise _Mismatch(
                "the signed payload has no timestamp, and the policy has not_before"
            )
        if signed_at < policy.not_before:
            raise _Mismatch(
                f"signed at {signed_at.isoformat()}, before not_before "
                f"{policy.not_before.isoformat()}"
            )


def _signed_time(optional: object) -> datetime | None:
    if not isinstance(optional, dict):
        return None
    value = optional.get("timestamp")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value.strip():
        if value.strip().isdigit():
            return datetime.fromtimestamp(int(value), UTC)
        try:
            return parse_time(value, "timestamp")
        except PolicyError:
            raise _Mismatch(f"the signed timestamp {value!r} is not a time") from None
    return None
