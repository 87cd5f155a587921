"""What a source URI is: the one place that tells an OCI reference from a download URL,
a local file or folder, or a gallery backend name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    # Any "file:" form (file:/x, FILE:///x) names a local file, as the policy reads it.
    if uri[:5].lower() == "file:":
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


@dataclass(frozen=True)
class ImageTags:
    """How released and development backend images are tagged (LocalAI's defaults).

    A released image ``...:latest-cpu-x`` has a development twin ``...:master-cpu-x``, and
    some builds exist only as ``...:master-cpu-x-development``.
    """

    release: str = "latest"
    branch: str = "master"
    dev_suffix: str = "development"

    def development(self, uri: str) -> str:
        """The development image of a released one; "" when ``uri`` has no released tag
        to swap, or already is a development image."""
        if f"{self.branch}-" in uri:
            return ""
        swapped = uri.replace(f"{self.release}-", f"{self.branch}-", 1)
        return swapped if swapped != uri else ""

    def fallbacks(self, uri: str) -> list[str]:
        """What to try when the released image is missing: its development image, then
        the same with the development suffix."""
        branch = uri.replace(f"{self.release}-", f"{self.branch}-", 1)
        if branch == uri:
            return []
        found = [branch]
        if f"-{self.dev_suffix}" not in branch:
            found.append(f"{branch}-{self.dev_suffix}")
        return found

    def candidates(
        self, uri: str, mirrors: Sequence[str], *, prefer_development: bool = False
    ) -> tuple[str, tuple[str, ...]]:
        """The primary image and the ordered fallbacks for a gallery build.

        Mirrors first, then the tag fallbacks of the released image; preferring
        development puts the development image first and the released one right after.
        Only OCI references: a tarball's name carries no tag, and its checksum would
        refuse another build anyway.
        """
        if not looks_like_oci(uri):
            return uri, tuple(mirrors)
        primary, rest = uri, list(mirrors)
        development = self.development(uri) if prefer_development else ""
        if development:
            primary, rest = development, [uri, *mirrors]
        rest += self.fallbacks(uri)
        unique = [u for i, u in enumerate(rest) if u != primary and u not in rest[:i]]
        return primary, tuple(unique)
