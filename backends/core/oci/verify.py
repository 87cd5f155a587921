"""Signature verification of an image before its layers are fetched. No Django here.

A gallery may carry a ``verification`` block (LocalAI's shape, plus ``public_key``).
The artifacts referring to the image are listed (OCI 1.1 referrers API, else the
referrers tag schema); a signature counts only when it is about the digest being
installed (the tag's, or the platform manifest's), so a valid signature of another
image cannot be replayed.

* Key-pair (``public_key``): cosign signature artifacts hold a simple-signing payload as
  a layer and its ECDSA P-256 / SHA-256 signature, base64, in the layer's
  ``dev.cosignproject.cosign/signature`` annotation. No transparency-log time exists,
  so ``not_before`` compares the payload's signed ``optional.timestamp`` (unix seconds
  or RFC 3339: ``cosign sign --key ... -a timestamp=...``); none is a refusal.
* Keyless (``issuer``/``issuer_regex`` and ``identity``/``identity_regex``): Sigstore
  bundle artifacts (LocalAI's layout: the bundle is the artifact's first layer),
  verified by sigstore-python against a trusted_root.json (Fulcio CA, CT log, Rekor
  log; default the public-good root): the certificate chain, its SCT, the Rekor
  inclusion proof and promise, then the signature over the image digest (message
  signature) or an in-toto statement naming it (DSSE). ``not_before`` compares the
  Fulcio certificate's start, which precedes the verified log time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import sigstore.errors
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from backends.core.oci.errors import OCIError, VerificationError
from backends.core.oci.manifest import Descriptor, Manifest, ResolvedImage
from backends.core.oci.reference import Reference, is_digest
from backends.core.transfer import Watch

if TYPE_CHECKING:
    from sigstore.verify import Verifier

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"
SIGSTORE_BUNDLE_PREFIX = "application/vnd.dev.sigstore.bundle."
IN_TOTO = "application/vnd.in-toto+json"
MAX_BUNDLE_BYTES = 1 << 20
# Fulcio's OIDC issuer extensions: the DER UTF8String form, then the legacy raw one.
_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
PAYLOAD_TYPE = "cosign container image signature"
# A payload is a few hundred bytes; a referrer list is bounded so a hostile registry
# cannot make a job fetch thousands of artifacts.
MAX_PAYLOAD_BYTES = 64 << 10
MAX_SIGNATURES = 16
_KNOWN_KEYS = frozenset(
    {"public_key", "issuer", "issuer_regex", "identity", "identity_regex", "not_before"}
)


class ArtifactStore(Protocol):
    """Where an image's signatures are read: a registry (``RegistryClient``) or an
    offline kit's image layout (``backends.core.kits.Layout``). The same checks run on
    both; only where the bytes come from differs."""

    def referrers(
        self, ref: Reference, digest: str, *, watch: Watch | None = None
    ) -> list[dict[str, Any]]: ...

    def get_manifest(
        self,
        ref: Reference,
        reference: str | None = None,
        *,
        watch: Watch | None = None,
    ) -> Manifest: ...

    def read_small_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        limit: int,
        *,
        watch: Watch | None = None,
    ) -> bytes: ...


class PolicyError(ValueError):
    """A verification block that cannot be enforced; the message is for the admin."""


@dataclass(frozen=True)
class VerificationPolicy:
    public_key: str = ""  # PEM; empty for a keyless policy
    not_before: datetime | None = None
    # Who declared it (the gallery's name): named in errors and in what was recorded.
    name: str = ""
    issuer: str = ""
    issuer_regex: str = ""
    identity: str = ""
    identity_regex: str = ""

    @property
    def keyless(self) -> bool:
        return not self.public_key

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
        keyless = {
            key: str(data.get(key) or "").strip()
            for key in ("issuer", "issuer_regex", "identity", "identity_regex")
        }
        not_before = None
        if data.get("not_before"):
            not_before = parse_time(str(data["not_before"]), "not_before")
        pem = str(data.get("public_key") or "").strip()
        if pem:
            if any(keyless.values()):
                raise PolicyError(
                    "give either public_key (key-pair signatures) or issuer and "
                    "identity (keyless signatures), not both"
                )
            load_public_key(pem)
            return cls(pem, not_before, name)
        for part in ("issuer", "identity"):
            if not keyless[part] and not keyless[f"{part}_regex"]:
                raise PolicyError(
                    f"verification needs a public_key, or {part} or {part}_regex "
                    "(keyless signatures)"
                )
            if keyless[part] and keyless[f"{part}_regex"]:
                raise PolicyError(f"give {part} or {part}_regex, not both")
            if keyless[f"{part}_regex"]:
                try:
                    re.compile(keyless[f"{part}_regex"])
                except re.error as exc:
                    raise PolicyError(
                        f"{part}_regex is not a regular expression ({exc})"
                    ) from None
        return cls("", not_before, name, **keyless)

    def to_json(self) -> dict[str, str]:
        data = {
            "public_key": self.public_key,
            "issuer": self.issuer,
            "issuer_regex": self.issuer_regex,
            "identity": self.identity,
            "identity_regex": self.identity_regex,
        }
        if self.not_before is not None:
            data["not_before"] = self.not_before.isoformat().replace("+00:00", "Z")
        return {key: value for key, value in data.items() if value}

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(load_public_key(self.public_key))

    def describe(self) -> str:
        """What the admin recognises the policy by, e.g. in the Installed page."""
        if self.keyless:
            issuer = self.issuer or f"/{self.issuer_regex}/"
            identity = self.identity or f"/{self.identity_regex}/"
            text = f"keyless, issuer {issuer}, identity {identity}"
        else:
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
    client: ArtifactStore,
    image: ResolvedImage,
    policy: VerificationPolicy,
    *,
    trust_root: str = "",
    watch: Watch | None = None,
) -> str:
    """Raise VerificationError unless a signature of ``image`` (of the digest its
    reference points to, or of the platform's manifest) satisfies ``policy``;
    ``trust_root`` is the trusted_root.json keyless signatures chain to ("": the
    public-good root). Returns what verified it, to be recorded."""
    if policy.keyless:
        return _verify_keyless(client, image, policy, trust_root, watch)
    ref = image.reference
    key = load_public_key(policy.public_key)
    failures: list[str] = []
    for subject, referrers in _referrers(client, image, failures, watch):
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
    raise _failed(image, policy, failures, "signature")


def _referrers(
    client: ArtifactStore,
    image: ResolvedImage,
    failures: list[str],
    watch: Watch | None,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(subject, its referrers) for the image's digest and its platform manifest's;
    a listing that fails is added to ``failures``."""
    for subject in dict.fromkeys((image.digest, image.manifest_digest)):
        try:
            yield subject, client.referrers(image.reference, subject, watch=watch)
        except OCIError as exc:
            failures.append(f"listing the signatures of {subject}: {exc}")


def _failed(
    image: ResolvedImage, policy: VerificationPolicy, failures: list[str], what: str
) -> VerificationError:
    """The error naming the image, the policy and every failure (or that no ``what``
    refers to the image)."""
    if not failures:
        subjects = dict.fromkeys((image.digest, image.manifest_digest))
        failures = [f"no {what} refers to {' or '.join(subjects)}"]
    return VerificationError(
        f"{image.reference}: signature verification failed "
        f"(policy {policy.describe()}): " + "; ".join(failures)
    )


class _Mismatch(Exception):
    pass


def _check_signature(
    client: ArtifactStore,
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


# -- keyless -------------------------------------------------------------------------


def _verify_keyless(
    client: ArtifactStore,
    image: ResolvedImage,
    policy: VerificationPolicy,
    trust_root: str,
    watch: Watch | None,
) -> str:
    ref = image.reference
    verifier = _sigstore_verifier(trust_root, policy)
    failures: list[str] = []
    for subject, referrers in _referrers(client, image, failures, watch):
        bundles = [
            entry
            for entry in referrers
            if str(entry.get("artifactType", "")).startswith(SIGSTORE_BUNDLE_PREFIX)
        ][:MAX_SIGNATURES]
        for entry in bundles:
            digest = str(entry.get("digest", ""))
            try:
                _check_bundle(client, ref, subject, digest, verifier, policy, watch)
            except _Mismatch as exc:
                failures.append(f"bundle {digest[:19]}: {exc}")
                continue
            except OCIError as exc:
                failures.append(f"reading bundle {digest[:19]}: {exc}")
                continue
            return f"{policy.describe()} (bundle {digest[:19]})"
    raise _failed(image, policy, failures, "Sigstore bundle")


def _sigstore_verifier(trust_root: str, policy: VerificationPolicy) -> Verifier:
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier

    try:
        if trust_root:
            return Verifier(trusted_root=TrustedRoot.from_file(trust_root))
        # The public-good root as sigstore-python ships and caches it: no network.
        return Verifier.production(offline=True)
    except (OSError, ValueError, sigstore.errors.Error) as exc:
        raise VerificationError(
            f"cannot load the Sigstore trust root {trust_root or '(public-good)'} "
            f"for policy {policy.describe()}: {exc}"
        ) from exc


def _check_bundle(
    client: ArtifactStore,
    ref: Reference,
    subject: str,
    digest: str,
    verifier: Verifier,
    policy: VerificationPolicy,
    watch: Watch | None,
) -> None:
    from sigstore.hashes import Hashed
    from sigstore.models import Bundle
    from sigstore_models.common.v1 import HashAlgorithm

    if not is_digest(digest):
        raise _Mismatch("malformed descriptor")
    manifest = client.get_manifest(ref, digest, watch=watch).body
    declared = manifest.get("subject")
    if isinstance(declared, dict) and declared.get("digest") not in (None, subject):
        raise _Mismatch(f"is about {declared.get('digest')}")
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _Mismatch("no layers")
    raw = client.read_small_blob(
        ref, Descriptor.from_json(layers[0], ref), MAX_BUNDLE_BYTES, watch=watch
    )
    try:
        document = json.loads(raw)
        bundle = Bundle.from_json(raw)
    except (ValueError, sigstore.errors.Error) as exc:
        raise _Mismatch(f"not a Sigstore bundle ({exc})") from None
    identity = _IdentityPolicy(policy)
    algorithm, _, hex_digest = subject.partition(":")
    try:
        if isinstance(document, dict) and "dsseEnvelope" in document:
            payload_type, payload = verifier.verify_dsse(bundle, identity)
            _check_statement(payload_type, payload, algorithm, hex_digest)
        else:
            hashed = Hashed(
                algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(hex_digest)
            )
            verifier.verify_artifact(hashed, bundle, identity)
    except sigstore.errors.Error as exc:
        raise _Mismatch(str(exc)) from None
    if policy.not_before is not None:
        issued = bundle.signing_certificate.not_valid_before_utc
        if issued < policy.not_before:
            raise _Mismatch(
                f"signed at {issued.isoformat()}, before not_before "
                f"{policy.not_before.isoformat()}"
            )


def _check_statement(
    payload_type: str, payload: bytes, algorithm: str, hex_digest: str
) -> None:
    """The envelope's signature holds (sigstore checked it): now its content must be
    an in-toto statement naming the image being installed among its subjects. Any
    predicate counts (cosign's signature predicate, or an attestation such as build
    provenance), as with LocalAI's verifier: the policy's identity made a claim about
    exactly this digest."""
    if payload_type != IN_TOTO:
        raise _Mismatch(f"DSSE payload type {payload_type!r}, not {IN_TOTO}")
    try:
        subjects = json.loads(payload)["subject"]
        digests = [entry["digest"].get(algorithm) for entry in subjects]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _Mismatch("the signed statement has no subject list") from None
    if hex_digest not in digests:
        # A few, cut to a digest's length, tell which image it signed: a hostile
        # statement may list many, or long ones.
        named = ", ".join(
            f"{algorithm}:{str(found)[:64]}" for found in digests[:3] if found
        )
        raise _Mismatch(
            f"the signed statement is about {named or 'no ' + algorithm + ' digest'}, "
            f"not {algorithm}:{hex_digest}"
        )


class _IdentityPolicy:
    """sigstore's identity check with LocalAI's exact-or-regex choice for both parts
    (a regex matches anywhere, as Go's MatchString does: anchor it)."""

    def __init__(self, policy: VerificationPolicy) -> None:
        self._policy = policy

    def verify(self, cert: x509.Certificate) -> None:
        policy = self._policy
        issuer = _cert_issuer(cert)
        if not _matches(issuer, policy.issuer, policy.issuer_regex):
            raise sigstore.errors.VerificationError(
                f"certificate issuer {issuer!r} does not match the policy"
            )
        sans = _cert_identities(cert)
        if not any(
            _matches(san, policy.identity, policy.identity_regex) for san in sans
        ):
            raise sigstore.errors.VerificationError(
                f"certificate identities {sorted(sans)} do not match the policy"
            )


def _matches(value: str, exact: str, pattern: str) -> bool:
    if exact:
        return value == exact
    return re.search(pattern, value) is not None


def _cert_issuer(cert: x509.Certificate) -> str:
    for oid in (_ISSUER_V2, _ISSUER_V1):
        try:
            value = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        if oid == _ISSUER_V2 and raw[:1] == b"\x0c":
            # DER UTF8String: tag, length (short or long form), text.
            length_byte = raw[1]
            start = 2 if length_byte < 0x80 else 2 + (length_byte & 0x7F)
            raw = raw[start:]
        return raw.decode(errors="replace")
    return ""


def _cert_identities(cert: x509.Certificate) -> set[str]:
    try:
        sans = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return set()
    found = set(sans.get_values_for_type(x509.RFC822Name))
    found.update(sans.get_values_for_type(x509.UniformResourceIdentifier))
    return found
