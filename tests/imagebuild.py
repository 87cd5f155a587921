"""Build small OCI images in Python and push them through the registry HTTP API.

    layer = make_layer({"run.sh": ("#!/bin/sh\\necho hi\\n", 0o755), "lib/a.so": b"..."})
    image = push_image(registry_url, "backends/demo", "latest", [layer])
    index = push_index(registry_url, "backends/demo", "multi", [(amd64_image, "linux/amd64"), ...])

Entries are given as a mapping ``name -> bytes | str | (content, mode)`` for plain files,
or as a list of ``Entry`` (see ``file``, ``directory``, ``symlink``, ``hardlink``,
``whiteout``, ``opaque``, ``special``) when the test needs links, whiteouts, odd modes or
hostile names. Nothing here touches the disk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


@dataclass(frozen=True)
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0


def file(name: str, data: bytes | str = b"", mode: int = 0o644) -> Entry:
    return Entry(
        name, tarfile.REGTYPE, data.encode() if isinstance(data, str) else data, mode
    )


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target)


def whiteout(path: str) -> Entry:
    """The entry that deletes ``path`` from lower layers."""
    parent, _, leaf = path.rpartition("/")
    return file(f"{parent}/.wh.{leaf}" if parent else f".wh.{leaf}")


def opaque(directory_path: str) -> Entry:
    """The entry that hides everything lower layers put in ``directory_path``."""
    return file(f"{directory_path}/.wh..wh..opq" if directory_path else ".wh..wh..opq")


def special(name: str, kind: bytes) -> Entry:
    """A device node or FIFO (tarfile.CHRTYPE, BLKTYPE, FIFOTYPE)."""
    return Entry(name, kind, mode=0o644, devmajor=1, devminor=3)


Content = bytes | str | tuple[bytes | str, int]
Entries = Mapping[str, Content] | Iterable[Entry]


def _entries(entries: Entries) -> list[Entry]:
    if isinstance(entries, Mapping):
        result = []
        for name, value in entries.items():
            content, mode = value if isinstance(value, tuple) else (value, 0o644)
            result.append(file(name, content, mode))
        return result
    return list(entries)


def make_tar(entries: Entries) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in _entries(entries):
            info = tarfile.TarInfo(entry.name)
            info.type = entry.type
            info.mode = entry.mode
            info.mtime = 1_700_000_000
            info.linkname = entry.linkname
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            if entry.type == tarfile.REGTYPE:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes
    diff_id: str = ""  # digest of the uncompressed tar, for the image config

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def make_layer(
    entries: Entries, compression: str = "gzip", *, media_type: str | None = None
) -> Blob:
    tar = make_tar(entries)
    return Blob(
        media_type or LAYER_TYPES[compression],
        compress(tar, compression),
        sha256_digest(tar),
    )


@dataclass(frozen=True)
class PushedImage:
    repository: str
    tag: str
    digest: str
    manifest: bytes
    media_type: str
    layers: tuple[Blob, ...] = field(default=())

    def ref(self, host: str) -> str:
        return f"{host}/{self.repository}:{self.tag}"


def _platform_dict(platform: str) -> dict[str, str]:
    os_name, architecture, *variant = platform.split("/")
    result = {"os": os_name, "architecture": architecture}
    if variant:
        result["variant"] = variant[0]
    return result


def push_blob(http: httpx.Client, base_url: str, repository: str, blob: Blob) -> None:
    if http.head(f"{base_url}/v2/{repository}/blobs/{blob.digest}").status_code == 200:
        return
    start = http.post(f"{base_url}/v2/{repository}/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = httpx.URL(base_url).join(start.headers["Location"])
    done = http.put(
        location.copy_merge_params({"digest": blob.digest}),
        content=blob.data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, done.text


def push_manifest(
    http: httpx.Client,
    base_url: str,
    repository: str,
    reference: str,
    body: bytes,
    media_type: str,
) -> str:
    response = http.put(
        f"{base_url}/v2/{repository}/manifests/{reference}",
        content=body,
        headers={"Content-Type": media_type},
    )
    assert response.status_code == 201, response.text
    digest = sha256_digest(body)
    assert response.headers.get("Docker-Content-Digest", digest) == digest
    return digest


def push_image(
    base_url: str,
    repository: str,
    tag: str,
    layers: Sequence[Blob],
    *,
    platform: str = "linux/amd64",
    docker: bool = False,
) -> PushedImage:
    """Push ``layers`` as one image manifest (OCI, or Docker v2 media types)."""
    config = {
        **_platform_dict(platform),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
    }
    config_blob = Blob(
        DOCKER_CONFIG if docker else OCI_CONFIG, json.dumps(config).encode()
    )
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config_blob.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        }
    ).encode()
    with httpx.Client() as http:
        for blob in (config_blob, *layers):
            push_blob(http, base_url, repository, blob)
        digest = push_manifest(http, base_url, repository, tag, manifest, media_type)
    return PushedImage(repository, tag, digest, manifest, media_type, tuple(layers))


def push_index(
    base_url: str,
    repository: str,
    tag: str,
    images: Sequence[tuple[PushedImage, str]],
    *,
    docker: bool = False,
) -> PushedImage:
    """Push a multi-platform index over already pushed images: [(image, "linux/arm64"), ...]."""
    media_type = DOCKER_LIST if docker else OCI_INDEX
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                {
                    "mediaType": image.media_type,
                    "digest": image.digest,
                    "size": len(image.manifest),
                    "platform": _platform_dict(platform),
                }
                for image, platform in images
            ],
        }
    ).encode()
    with httpx.Client() as http:
        digest = push_manifest(http, base_url, repository, tag, body, media_type)
    return PushedImage(repository, tag, digest, body, media_type)


MiB = 1 << 20


def bomb(compression: str, mebibytes: int | None = None) -> Iterator[bytes]:
    """A compressed tar of one file of zeros, as a stream of compressed chunks: about
    1 KiB (gzip) or 51 bytes (zstd) per MiB of zeros, so 1 MB of gzip unpacks to 1 GiB.

    ``mebibytes`` of zeros and a proper end, or an endless stream when None. Each MiB
    is compressed once and its bytes repeated: after a full flush (deflate) or as a
    frame of its own (zstd) the same input always compresses to the same bytes; the
    gzip trailer's CRC is computed over what the stream really holds.
    """
    header = tarfile.TarInfo("zeros.bin")
    header.size = (1 << 40) if mebibytes is None else mebibytes * MiB
    head = header.tobuf(tarfile.GNU_FORMAT)
    end = bytes(2 * tarfile.BLOCKSIZE)
    zeros = bytes(MiB)
    if compression == "gzip":
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        yield (
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
            + deflate.compress(head)
            + deflate.flush(zlib.Z_FULL_FLUSH)
        )
        block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
        crc = zlib.crc32(head)
        for _ in range(mebibytes) if mebibytes is not None else iter(int, 1):
            crc = zlib.crc32(zeros, crc)
            yield block
        crc = zlib.crc32(end, crc)
        size = len(head) + header.size + len(end)
        trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
        yield deflate.compress(end) + deflate.flush() + trailer
    elif compression == "zstd":
        zstd = zstandard.ZstdCompressor(level=19)
        yield zstd.compress(head)
        block = zstd.compress(zeros)
        for _ in range(mebibytes) if mebibytes is not None else iter(int, 1):
            yield block
        yield zstd.compress(end)
    else:
        raise ValueError(f"unknown compression {compression!r}")
