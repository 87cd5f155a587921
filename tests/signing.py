"""Cosign key-pair signatures made by the tests: an ECDSA P-256 signature over a
simple-signing payload, pushed as an OCI 1.1 artifact whose subject is the image and
listed under the referrers tag schema (``sha256-<hex>``): Debian's docker-registry has
no referrers API."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
    config = Blob("application/vnd.oci.empty.v1+json", b"{}")
    layer = Blob(SIMPLE_SIGNING, payload)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": COSIGN_SIGNATURE_ARTIFACT,
            "config": config.descriptor(),
            "layers": [
                {**layer.descriptor(), "annotations": {SIGNATURE_ANNOTATION: signature}}
            ],
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
            http, registry.url, image.repository, "sig", manifest, OCI_MANIFEST
        )
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "artifactType": COSIGN_SIGNATURE_ARTIFACT,
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
