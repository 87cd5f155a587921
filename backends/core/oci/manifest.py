"""Image manifests and indexes (OCI and Docker media types): what the registry's JSON
documents say, and which image of an index fits a platform. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backends.core.oci.errors import (
    PlatformNotFoundError,
    RegistryError,
    UnsupportedMediaTypeError,
)
from backends.core.oci.reference import Platform, Reference, is_digest
from backends.core.text import with_article

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST]
)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None

    @classmethod
    def from_json(cls, data: Any, ref: Reference) -> Descriptor:
        try:
            media_type, digest, size = data["mediaType"], data["digest"], data["size"]
        except (KeyError, TypeError):
            raise RegistryError(
                f"{ref}: malformed descriptor in manifest: {data!r}"
            ) from None
        if not isinstance(digest, str) or not is_digest(digest):
            raise RegistryError(f"{ref}: unsupported or malformed digest {digest!r}")
        if not isinstance(size, int) or size < 0:
            raise RegistryError(f"{ref}: malformed size {size!r} for {digest}")
        platform = None
        spec = data.get("platform")
        if isinstance(spec, dict) and spec.get("os") and spec.get("architecture"):
            platform = Platform(
                spec["os"], spec["architecture"], spec.get("variant") or None
            )
        return cls(str(media_type), digest, size, platform)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    body: dict[str, Any]
    # The bytes as served (their digest is ``digest``): what an offline kit stores.
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class ResolvedImage:
    reference: Reference
    digest: str  # what the reference points to (an index for multi-platform tags)
    manifest_digest: str  # the platform's image manifest
    layers: tuple[Descriptor, ...]


def media_type_of(body: dict[str, Any], content_type: str) -> str:
    """The document's media type: its own ``mediaType``, else the Content-Type header,
    else its shape (``mediaType`` is optional in OCI documents)."""
    media_type = body.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    header = content_type.split(";")[0].strip()
    if header in INDEX_TYPES or header in MANIFEST_TYPES:
        return header
    return OCI_INDEX if "manifests" in body else OCI_MANIFEST


def select_platform(index: Manifest, platform: Platform, ref: Reference) -> Descriptor:
    """The index entry built for ``platform``."""
    entries = index.body.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(f"{ref}: index {index.digest} has no manifest list")
    descriptors = [Descriptor.from_json(entry, ref) for entry in entries]
    candidates = [
        descriptor
        for descriptor in descriptors
        if descriptor.platform is not None
        and descriptor.platform.os == platform.os
        and descriptor.platform.architecture == platform.architecture
    ]
    wanted = platform.normalized_variant()
    for descriptor in candidates:
        assert descriptor.platform is not None
        if descriptor.platform.normalized_variant() == wanted:
            return descriptor
    # No variant asked for (e.g. plain "arm"): any build of the architecture will do.
    if candidates and platform.variant is None:
        return candidates[0]
    available = sorted({str(d.platform) for d in descriptors if d.platform is not None})
    raise PlatformNotFoundError(
        f"{ref}: no image for platform {platform} (available: {', '.join(available) or 'none'})"
    )


def image_layers(manifest: Manifest, ref: Reference) -> tuple[Descriptor, ...]:
    """The layers of an image manifest; anything but an image (a Helm chart, say) is
    refused here rather than half-extracted."""
    if manifest.media_type not in MANIFEST_TYPES:
        raise UnsupportedMediaTypeError(
            f"{ref}: cannot pull {with_article(manifest.media_type)}"
        )
    layers = manifest.body.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"{ref}: manifest {manifest.digest} has no layer list")
    descriptors = tuple(Descriptor.from_json(layer, ref) for layer in layers)
    for layer in descriptors:
        if layer.media_type not in LAYER_TYPES:
            raise UnsupportedMediaTypeError(
                f"{ref}: layer {layer.digest} has unsupported media type {layer.media_type}"
            )
    return descriptors
