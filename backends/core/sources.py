"""What a source URI is: the one place that tells an OCI reference from a download URL,
a local file or folder, or a gallery backend name."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from urllib.parse import unquote, urlsplit


class SourceKind(StrEnum):
    OCI = "oci"  # oci://... or a Docker-style reference such as quay.io/org/img:tag
    URL = "url"  # an http(s) download of a tarball
    FILE = "file"  # a file:// URL: a tarball, or a folder
    FOLDER = "folder"  # an absolute path to a folder on this host
    PATH = "path"  # an absolute path that is not a folder
    NAME = "name"  # none of these: a gallery backend name (LocalAI reads it so)


def classify(uri: str) -> SourceKind:
    if uri.startswith("file://"):
        return SourceKind.FILE
    if uri.startswith(("http://", "https://")):
        return SourceKind.URL
    if looks_like_oci(uri):
        return SourceKind.OCI
    if uri.startswith("/"):
        return SourceKind.FOLDER if Path(uri).is_dir() else SourceKind.PATH
    return SourceKind.NAME


def looks_like_oci(uri: str) -> bool:
    """True for ``oci://...`` and Docker-style references such as ``quay.io/org/img:tag``.

    A reference has a ``/`` and no URL scheme; a gallery name never contains ``/``.
    """
    if uri.startswith("oci://"):
        return True
    return (
        "://" not in uri and "/" in uri and not uri.startswith(("/", "./", "../", "~"))
    )


def local_folder(uri: str) -> Path | None:
    """The folder a ``file://`` URI or a plain absolute path names, if it is one."""
    path = Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)
    if path.is_absolute() and path.is_dir():
        return path
    return None


def default_name(uri: str) -> str:
    """The folder name an install from ``uri`` gets when none is given ("" for images).

    A folder keeps its own name; a download is named after its file, less the archive
    suffix. An OCI image has no usable name of its own: the caller must give one.
    """
    folder = local_folder(uri)
    if folder is not None:
        return folder.name
    if looks_like_oci(uri):
        return ""
    stem = Path(uri.split("?")[0]).name
    for suffix in (".tar.gz", ".tgz", ".tar.zst", ".tar"):
        stem = stem.removesuffix(suffix)
    return stem
