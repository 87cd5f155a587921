"""Offline kits: backend images in an OCI image layout, in one tar, for hosts with no
network.

A kit holds ``oci-layout``, ``index.json`` (one descriptor per exported image, named by
its backend with ``org.opencontainers.image.ref.name``), ``blobs/sha256/<hex>`` (every
manifest, index, config and layer, and the artifacts referring to each image, found
through the registry's referrers API or its referrers tag and listed in the kit under
the referrers tag schema ``sha256-<hex>``, so signatures travel with it), and
``gallery.yaml``, a gallery whose entries point into the kit as
``oci-layout:.@sha256:<hex>`` ("." is the kit's folder). Each image's descriptor also
names the gallery it was exported from and that gallery's verification block.

Those names are claims, not trust: an installing host verifies a kit's image against
the policy of its own gallery of that name (``Layout`` reads signatures for
``oci.verify`` as a registry would), never against the block the kit carries, which
whoever made the kit wrote.

Importing extracts only those names, each blob checked against its digest as it is
written, then checks that everything ``index.json`` reaches is there. Installing reads
``oci-layout:<folder>@<digest>``: the folder is a local source, under the source
policy's local roots like any ``file://`` path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from backends.core.oci.client import RegistryClient, refuse_oversized
from backends.core.oci.errors import DigestMismatchError, OCIError
from backends.core.oci.manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    Manifest,
    ResolvedImage,
    image_layers,
    media_type_of,
    select_platform,
)
from backends.core.oci.reference import Platform, Reference, as_reference, digest_of
from backends.core.transfer import Watch
from backends.core.trees import remove_tree

SCHEME = "oci-layout:"
GALLERY_FILE = "gallery.yaml"
REF_NAME = "org.opencontainers.image.ref.name"
# The image an entry came from, and the backends the kit was made for.
SOURCE_ANNOTATION = "io.localai-admin.kit.source"
BACKENDS_ANNOTATION = "io.localai-admin.kit.backends"
# The gallery an image was exported from, and that gallery's verification block (JSON):
# shown before an install, never trusted (see the module's docstring).
GALLERY_ANNOTATION = "io.localai-admin.kit.gallery"
VERIFICATION_ANNOTATION = "io.localai-admin.kit.verification"
REFERRERS_PREFIX = "sha256-"
# As many signatures per image as oci.verify reads, and a few more artifacts.
_MAX_REFERRERS = 64
LAYOUT_FILE = "oci-layout"
_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_CHUNK = 1 << 20
# index.json and gallery.yaml are read whole: bound them.
_MAX_DOCUMENT = 16 << 20


class KitError(ValueError):
    """A kit that cannot be written, read or trusted; the message says which part."""


@dataclass(frozen=True)
class KitImage:
    name: str  # the backend (gallery entry) the image is the build of
    reference: str
    gallery: str = ""  # the gallery the entry came from
    verification: dict[str, str] | None = None  # that gallery's block, if any


def layout_uri(digest: str, folder: str = ".") -> str:
    return f"{SCHEME}{folder}@{digest}"


def parse_layout_uri(uri: str) -> tuple[str, str]:
    """(folder, digest) of ``oci-layout:<folder>@sha256:<hex>``."""
    folder, at, digest = uri.removeprefix(SCHEME).rpartition("@")
    if not at or not folder or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise KitError(f"{uri!r} is not oci-layout:<folder>@sha256:<hex>")
    return folder, digest


# -- writing ------------------------------------------------------------------------


def write_kit(
    output: Path,
    images: Sequence[KitImage],
    entries: list[dict[str, Any]],
    *,
    backends: Sequence[str],
    client: RegistryClient,
    watch: Watch | None = None,
) -> dict[str, str]:
    """Write the kit to ``output`` (through a temporary file: a failed export leaves
    nothing behind); ``entries`` are the gallery entries, those named like an image
    get its ``oci-layout:`` URI; ``backends`` are what an import installs by
    default (the names asked for: a meta, not all its builds). Returns each image's digest by backend name."""
    watch = watch or client.watch()
    partial = output.with_name(f".{output.name}.partial")
    digests: dict[str, str] = {}
    try:
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            writer = _KitWriter(tar, client, watch)
            descriptors = []
            for image in images:
                ref = as_reference(image.reference)
                top = writer.manifest(ref, ref.reference)
                digests[image.name] = top.digest
                annotations = {REF_NAME: image.name, SOURCE_ANNOTATION: str(ref)}
                if image.gallery:
                    annotations[GALLERY_ANNOTATION] = image.gallery
                if image.verification:
                    annotations[VERIFICATION_ANNOTATION] = json.dumps(
                        image.verification, sort_keys=True
                    )
                descriptors.append(
                    {
                        "mediaType": top.media_type,
                        "digest": top.digest,
                        "size": len(top.raw),
                        "annotations": annotations,
                    }
                )
                for referrers in writer.referrers:
                    descriptors.append(referrers)
                writer.referrers.clear()
            index = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": descriptors,
                "annotations": {BACKENDS_ANNOTATION: ",".join(backends)},
            }
            for entry in entries:
                if entry["name"] in digests:
                    entry["uri"] = layout_uri(digests[entry["name"]])
            _add_bytes(tar, LAYOUT_FILE, b'{"imageLayoutVersion": "1.0.0"}')
            _add_bytes(tar, "index.json", json.dumps(index, indent=1).encode())
            _add_bytes(
                tar, GALLERY_FILE, yaml.safe_dump(entries, sort_keys=False).encode()
            )
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return digests


class _KitWriter:
    def __init__(self, tar: tarfile.TarFile, client: RegistryClient, watch: Watch):
        self.tar, self.client, self.watch = tar, client, watch
        self.written: set[str] = set()
        # Referrers indexes found on the way, for index.json.
        self.referrers: list[dict[str, Any]] = []

    def manifest(self, ref: Reference, reference: str) -> Manifest:
        """Store a manifest or index, what it points to, and its referrers."""
        manifest = self.client.get_manifest(ref, reference, watch=self.watch)
        self.children(ref, manifest)
        self.add(manifest.digest, manifest.raw)
        self.find_referrers(ref, manifest.digest)
        return manifest

    def children(self, ref: Reference, manifest: Manifest) -> None:
        body = manifest.body
        if manifest.media_type in INDEX_TYPES:
            for entry in body.get("manifests") or []:
                child = Descriptor.from_json(entry, ref)
                if child.digest not in self.written:
                    self.manifest(ref, child.digest)
            return
        for entry in [body.get("config"), *(body.get("layers") or [])]:
            if isinstance(entry, dict):
                self.blob(ref, Descriptor.from_json(entry, ref))

    def find_referrers(self, ref: Reference, digest: str) -> None:
        """Store the artifacts referring to ``digest`` (the registry's referrers API,
        else its referrers tag) and an index listing them, named by the referrers tag
        schema: the kit's own form, whichever the registry had."""
        found = self.client.referrers(ref, digest, watch=self.watch)[:_MAX_REFERRERS]
        if not found:
            return
        for entry in found:
            artifact = Descriptor.from_json(entry, ref)
            if artifact.digest not in self.written:
                manifest = self.client.get_manifest(
                    ref, artifact.digest, watch=self.watch
                )
                self.children(ref, manifest)
                self.add(manifest.digest, manifest.raw)
        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": found,
            },
            indent=1,
        ).encode()
        index = digest_of(raw)
        if index in self.written:
            return
        self.add(index, raw)
        self.referrers.append(
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index,
                "size": len(raw),
                "annotations": {REF_NAME: REFERRERS_PREFIX + digest.partition(":")[2]},
            }
        )

    def blob(self, ref: Reference, descriptor: Descriptor) -> None:
        if descriptor.digest in self.written:
            return
        info = tarfile.TarInfo(_blob_name(descriptor.digest))
        info.size = descriptor.size
        info.mode = 0o644
        # iter_blob checks the digest at the end: a bad blob fails the whole export.
        stream = _Reader(self.client.iter_blob(ref, descriptor, watch=self.watch))
        self.tar.addfile(info, stream)
        self.written.add(descriptor.digest)

    def add(self, digest: str, data: bytes) -> None:
        if digest not in self.written:
            _add_bytes(self.tar, _blob_name(digest), data)
            self.written.add(digest)


class _Reader:
    """A file object over an iterator of byte pieces, for ``tarfile.addfile``."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buffer += piece
        if size < 0:
            size = len(self._buffer)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


def _blob_name(digest: str) -> str:
    return f"blobs/sha256/{digest.removeprefix('sha256:')}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, _Reader(iter([data])))


# -- importing ----------------------------------------------------------------------


def extract_kit(kit: Path | IO[bytes], kits_folder: Path, max_bytes: int) -> Layout:
    """Extract and verify a kit into ``kits_folder/<digest of its index.json>``.

    Only the layout's own names are accepted, as regular files; each blob is hashed as
    it is written and refused unless it matches its name; at most ``max_bytes`` are
    written; every blob ``index.json`` reaches must be there with its size. A kit
    already imported (same index, so the same content) keeps its first copy, which an
    install may be reading: the new one is checked, then dropped."""
    kits_folder.mkdir(parents=True, exist_ok=True)
    partial = kits_folder / f".import-{os.getpid()}-{id(kit)}"
    remove_tree(partial)
    (partial / "blobs" / "sha256").mkdir(parents=True)
    try:
        try:
            # Closed by the ``with tar`` below.
            tar = (
                tarfile.open(kit, "r:*")  # noqa: SIM115
                if isinstance(kit, Path)
                else tarfile.open(fileobj=kit, mode="r|*")  # noqa: SIM115
            )
        except (tarfile.TarError, OSError) as exc:
            raise KitError(f"not a kit (a tar file): {exc}") from None
        with tar:
            _extract_members(tar, partial, max_bytes)
        layout = Layout(partial)
        index_digest = layout.check()
        layout.gallery_entries()  # a kit whose gallery is refused is not kept
        final = kits_folder / index_digest.removeprefix("sha256:")[:16]
        if not _sound(final):
            remove_tree(final)
            os.replace(partial, final)
        return Layout(final)
    finally:
        remove_tree(partial)


def _sound(root: Path) -> bool:
    """A kit was extracted at ``root`` and every blob it needs is still there."""
    try:
        Layout(root).check()
    except (KitError, OSError, ValueError):
        return False
    return True


def _extract_members(tar: tarfile.TarFile, dest: Path, max_bytes: int) -> None:
    written = 0
    try:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if member.isdir() and name in ("", "blobs", "blobs/sha256"):
                continue
            blob = _BLOB.fullmatch(name)
            if not member.isreg() or not (
                blob or name in (LAYOUT_FILE, "index.json", GALLERY_FILE)
            ):
                raise KitError(f"unexpected member {member.name!r} in the kit")
            written += member.size
            if written > max_bytes:
                raise KitError(
                    f"the kit holds more than {max_bytes} bytes "
                    "(LOCALAI_ADMIN_MAX_KIT_BYTES)"
                )
            if not blob and member.size > _MAX_DOCUMENT:
                raise KitError(f"{name} in the kit is too large")
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            hasher = hashlib.sha256()
            with open(dest / name, "xb") as out:
                while data := source.read(_CHUNK):
                    hasher.update(data)
                    out.write(data)
            if blob and hasher.hexdigest() != blob[1]:
                raise KitError(
                    f"blob sha256:{blob[1]} in the kit does not match its digest "
                    f"(got sha256:{hasher.hexdigest()})"
                )
    except FileExistsError as exc:
        raise KitError(f"{exc.filename} is twice in the kit") from None
    except (tarfile.TarError, EOFError) as exc:
        raise KitError(f"the kit is damaged: {exc}") from None


@dataclass(frozen=True)
class Layout:
    """An OCI image layout on disk (an extracted kit)."""

    root: Path

    def blob_path(self, digest: str) -> Path:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise KitError(f"unsupported digest {digest!r} in the kit")
        return self.root / _blob_name(digest)

    def index(self) -> dict[str, Any]:
        return _json_object(self.root / "index.json", "index.json")

    def backends(self) -> list[str]:
        names = _annotations(self.index()).get(BACKENDS_ANNOTATION, "")
        return [name for name in names.split(",") if name]

    def images(self) -> list[dict[str, Any]]:
        """index.json's image descriptors (not the referrers indexes)."""
        return [
            descriptor
            for descriptor in self._descriptors()
            if not _annotations(descriptor)
            .get(REF_NAME, "")
            .startswith(REFERRERS_PREFIX)
        ]

    def _descriptors(self) -> list[dict[str, Any]]:
        found = self.index().get("manifests")
        return (
            [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []
        )

    def annotations(self, digest: str) -> dict[str, str]:
        """The annotations index.json gives the image ``digest`` ({} if none)."""
        for descriptor in self.images():
            if descriptor.get("digest") == digest:
                return _annotations(descriptor)
        return {}

    def gallery_entries(self) -> list[dict[str, Any]]:
        """The kit's gallery, its ``oci-layout:.`` URIs made absolute."""
        path = self.root / GALLERY_FILE
        try:
            entries = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise KitError(f"the kit's {GALLERY_FILE} cannot be read: {exc}") from None
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) for e in entries
        ):
            raise KitError(f"the kit's {GALLERY_FILE} is not a list of entries")
        for entry in entries:
            _refuse_outside_sources(entry)
            uri = entry.get("uri")
            if isinstance(uri, str) and uri.startswith(SCHEME):
                _, digest = parse_layout_uri(uri)
                self.blob_path(digest).stat()
                entry["uri"] = layout_uri(digest, str(self.root))
        return entries

    def manifest(self, digest: str, ref: Reference) -> Manifest:
        path = self.blob_path(digest)
        try:
            raw = path.read_bytes() if path.stat().st_size <= _MAX_DOCUMENT else b""
        except FileNotFoundError:
            raise KitError(f"{ref}: manifest {digest} is not in the kit") from None
        if digest_of(raw) != digest:
            raise DigestMismatchError(f"{ref}: manifest {digest} does not match")
        try:
            body = json.loads(raw)
        except ValueError:
            raise KitError(f"{ref}: manifest {digest} is not JSON") from None
        if not isinstance(body, dict):
            raise KitError(f"{ref}: manifest {digest} is not a JSON object")
        return Manifest(media_type_of(body, ""), digest, body, raw)

    def reference(self, digest: str) -> Reference:
        """How messages name an image of the kit: the kit, then the image it was
        exported from."""
        try:
            source = as_reference(self.annotations(digest).get(SOURCE_ANNOTATION, ""))
            repository = f"{source.registry}/{source.repository}"
        except OCIError:
            repository = "image"
        return Reference(f"kit {self.root.name}", repository, digest=digest)

    def resolve(self, digest: str, platform: Platform) -> ResolvedImage:
        ref = self.reference(digest)
        top = manifest = self.manifest(digest, ref)
        for _ in range(3):
            if manifest.media_type not in INDEX_TYPES:
                break
            child = select_platform(manifest, platform, ref)
            manifest = self.manifest(child.digest, ref)
        return ResolvedImage(
            ref, top.digest, manifest.digest, image_layers(manifest, ref)
        )

    # -- read by oci.verify as a registry would be (verify.ArtifactStore) --

    def referrers(
        self, ref: Reference, digest: str, *, watch: Watch | None = None
    ) -> list[dict[str, Any]]:
        """The artifacts the kit lists as referring to ``digest``."""
        tag = REFERRERS_PREFIX + digest.partition(":")[2]
        for descriptor in self._descriptors():
            if _annotations(descriptor).get(REF_NAME) == tag:
                body = self.get_manifest(ref, str(descriptor.get("digest"))).body
                entries = body.get("manifests")
                if not isinstance(entries, list):
                    raise _KitReadError(f"{ref}: the kit's {tag} is not an index")
                return [entry for entry in entries if isinstance(entry, dict)]
        return []

    def get_manifest(
        self,
        ref: Reference,
        reference: str | None = None,
        *,
        watch: Watch | None = None,
    ) -> Manifest:
        try:
            return self.manifest(reference or ref.reference, ref)
        except KitError as exc:
            raise _KitReadError(str(exc)) from None

    def read_small_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        limit: int,
        *,
        watch: Watch | None = None,
    ) -> bytes:
        refuse_oversized(ref, descriptor, limit)
        try:
            return b"".join(self.iter_blob(descriptor))
        except KitError as exc:
            raise _KitReadError(str(exc)) from None

    def iter_blob(self, descriptor: Descriptor) -> Iterator[bytes]:
        """The blob's bytes; DigestMismatchError at the end if they are not the
        descriptor's (the kit was changed on disk since its import)."""
        hasher = hashlib.sha256()
        size = 0
        try:
            with open(self.blob_path(descriptor.digest), "rb") as blob:
                while data := blob.read(_CHUNK):
                    hasher.update(data)
                    size += len(data)
                    yield data
        except FileNotFoundError:
            raise KitError(f"blob {descriptor.digest} is not in the kit") from None
        if (
            size != descriptor.size
            or "sha256:" + hasher.hexdigest() != descriptor.digest
        ):
            raise DigestMismatchError(
                f"blob {descriptor.digest} in the kit was changed"
            )

    def check(self) -> str:
        """Every blob the index reaches is present with its size; returns the index's
        digest (the kit's identity)."""
        if not (self.root / LAYOUT_FILE).is_file():
            raise KitError(f"the kit has no {LAYOUT_FILE} file")
        raw = (
            (self.root / "index.json").read_bytes()
            if (self.root / "index.json").is_file()
            else b""
        )
        if not raw:
            raise KitError("the kit has no index.json")
        ref = Reference("oci-layout", "kit")
        pending = [
            Descriptor.from_json(d, ref) for d in self.index().get("manifests") or []
        ]
        seen: set[str] = set()
        while pending:
            descriptor = pending.pop()
            if descriptor.digest in seen:
                continue
            seen.add(descriptor.digest)
            path = self.blob_path(descriptor.digest)
            if not path.is_file() or path.stat().st_size != descriptor.size:
                raise KitError(f"blob {descriptor.digest} is missing from the kit")
            if descriptor.media_type in INDEX_TYPES | MANIFEST_TYPES:
                body = self.manifest(descriptor.digest, ref).body
                pending += [
                    Descriptor.from_json(entry, ref)
                    for entry in [
                        *(body.get("manifests") or []),
                        *(
                            [body["config"]]
                            if isinstance(body.get("config"), dict)
                            else []
                        ),
                        *(body.get("layers") or []),
                    ]
                    if isinstance(entry, dict)
                ]
        return digest_of(raw)


def _refuse_outside_sources(entry: dict[str, Any]) -> None:
    """A kit's entry installs an image of the kit, or is a meta over such builds.

    Its gallery is added as a local one (a file on this host), which may name local
    paths and any network source: an entry pointing elsewhere (a tarball with the
    kit maker's own sha256, a file of this host, another image, a mirror) would
    install what no signature in the kit covers, strict integrity on or not."""
    name = entry.get("name")
    uri = entry.get("uri")
    if uri not in (None, "") and not (isinstance(uri, str) and uri.startswith(SCHEME)):
        raise KitError(
            f"the kit's {GALLERY_FILE} points {name!r} at {uri!r}: "
            f"a kit's entries may only name its own images ({SCHEME})"
        )
    if entry.get("mirrors"):
        raise KitError(
            f"the kit's {GALLERY_FILE} gives {name!r} mirrors: "
            "a kit's entries may only name its own images"
        )


class _KitReadError(OCIError):
    """A signature artifact the kit lacks or holds damaged: for oci.verify, a failure
    to read it, as a registry's would be."""


def _annotations(item: dict[str, Any]) -> dict[str, str]:
    """An index's or descriptor's annotations, as strings ({} when malformed: a kit's
    JSON is input like any other)."""
    found = item.get("annotations")
    if not isinstance(found, dict):
        return {}
    return {str(key): str(value) for key, value in found.items()}


def _json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        body = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KitError(f"the kit's {what} cannot be read: {exc}") from None
    if not isinstance(body, dict):
        raise KitError(f"the kit's {what} is not a JSON object")
    return body
