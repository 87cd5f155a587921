"""What is installed on disk: the backends folder in the format LocalAI reads.

Each installed backend is a folder. A concrete build holds an executable ``run.sh`` and a
``metadata.json``; a meta backend is a folder holding only ``metadata.json`` whose
``meta_backend_for`` names the concrete folder it points at. System backends live in a
separate read-only folder and have no metadata. The disk is the source of truth: the
database table of installed backends is reconciled from what this module reads.

No Django imports: the installer and the benchmarks use this module alone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from backends.core.redact import redact_uri

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
RUN_FILE = "run.sh"
# Folders the installers use while they work: ours and LocalAI's install staging and
# backup (core/gallery/backends.go), LocalAI's upgrade staging and backup
# (core/gallery/upgrade.go) and its downloads (pkg/downloader: ``<dest>.partial``).
# Never listed as backends, and no backend may be named so (gallery.validate_name).
TRANSIENT_SUFFIXES = (
    ".install-tmp",
    ".install-backup",
    ".upgrade-tmp",
    ".backup",
    ".partial",
)

# Which build of an alias group a host prefers, by capability prefix (first prefix that
# matches wins), then by token found in the folder name.
PREFERENCE_TOKENS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("nvidia", ("cuda", "vulkan", "cpu")),
    ("amd", ("rocm", "hip", "vulkan", "cpu")),
    ("intel", ("sycl", "intel", "cpu")),
    ("metal", ("metal", "cpu")),
    ("darwin-x86", ("darwin-x86", "cpu")),
    ("vulkan", ("vulkan", "cpu")),
)


def preference_tokens(capability: str) -> tuple[str, ...]:
    for prefix, tokens in PREFERENCE_TOKENS:
        if capability.startswith(prefix):
            return tokens
    return ("cpu",)


@dataclass
class Metadata:
    """The contents of ``metadata.json``, with LocalAI's key names."""

    name: str = ""
    alias: str = ""
    meta_backend_for: str = ""
    gallery_url: str = ""
    installed_at: str = ""
    version: str = ""
    uri: str = ""
    digest: str = ""
    # Which signature policy verified the image ("" when none did); ours, not LocalAI's.
    verified_by: str = ""

    @classmethod
    def from_json(cls, data: object) -> Metadata:
        if not isinstance(data, dict):
            raise ValueError("metadata.json is not a JSON object")
        known = {
            k: str(v) for k, v in data.items() if k in cls.__dataclass_fields__ and v
        }
        return cls(**known)

    def to_json(self) -> dict[str, str]:
        # LocalAI writes every key with omitempty: leave the empty ones out.
        return {k: v for k, v in asdict(self).items() if v}

    def redacted(self) -> Metadata:
        """This metadata as it may be shown or written to disk: without the secrets its
        source URIs hold (the database keeps the full ones)."""
        return replace(
            self, uri=redact_uri(self.uri), gallery_url=redact_uri(self.gallery_url)
        )


@dataclass
class DiskBackend:
    """One row of the installed-backends listing (LocalAI's SystemBackend)."""

    name: str
    run_file: str
    is_meta: bool = False
    is_system: bool = False
    metadata: Metadata | None = None
    folder: Path | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def is_runnable(self) -> bool:
        return bool(self.run_file) and Path(self.run_file).is_file()

    def to_localai(self) -> dict[str, object]:
        """The JSON shape LocalAI's ``GET /backends`` returns (Go's default key names)."""
        row: dict[str, object] = {
            "Name": self.name,
            "RunFile": self.run_file,
            "IsMeta": self.is_meta,
            "IsSystem": self.is_system,
        }
        row["Metadata"] = self.metadata.redacted().to_json() if self.metadata else None
        return row


def read_metadata(folder: Path) -> Metadata | None:
    """The folder's metadata, None when it has no metadata file.

    Raises ValueError when the file exists but cannot be used, so callers can report it.
    """
    try:
        raw = (folder / METADATA_FILE).read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Metadata.from_json(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{folder.name}/{METADATA_FILE} is unreadable: {exc}"
        ) from None


def write_metadata(folder: Path, metadata: Metadata) -> None:
    """Write ``metadata.json`` atomically (2-space indented, as LocalAI does).

    The file stays world-readable, as LocalAI reads it, so its URIs are written
    redacted: nothing in it is a secret.
    """
    target = folder / METADATA_FILE
    tmp = folder / f".{METADATA_FILE}.tmp"
    tmp.write_text(json.dumps(metadata.redacted().to_json(), indent=2) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, target)


def _subfolders(path: Path | None) -> Iterator[Path]:
    if path is None:
        return
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(TRANSIENT_SUFFIXES):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)


def folders(
    backends_path: Path, system_path: Path | None = None
) -> dict[str, DiskBackend]:
    """Each installed folder once: system builds, builds, and metas under their name.

    Unlike LocalAI, one unreadable ``metadata.json`` does not hide every other backend:
    the folder is listed under its own name with the problem attached.
    """
    found: dict[str, DiskBackend] = {}
    for folder in _subfolders(system_path):
        run = folder / RUN_FILE
        if run.exists():
            found[folder.name] = DiskBackend(
                folder.name, str(run), is_system=True, folder=folder
            )
    for folder in _subfolders(backends_path):
        problems = []
        try:
            metadata = read_metadata(folder)
        except ValueError as exc:
            log.warning("%s", exc)
            problems.append(str(exc))
            metadata = None
        run = folder / RUN_FILE
        if run.exists():
            found[folder.name] = DiskBackend(
                folder.name,
                str(run),
                metadata=metadata or Metadata(name=folder.name),
                folder=folder,
                problems=problems,
            )
        elif metadata and metadata.meta_backend_for:
            key = metadata.name or folder.name
            found[key] = DiskBackend(
                key,
                str(backends_path / metadata.meta_backend_for / RUN_FILE),
                is_meta=True,
                metadata=metadata,
                folder=folder,
                problems=problems,
            )
        elif problems:
            found[folder.name] = DiskBackend(
                folder.name, "", folder=folder, problems=problems
            )
    return found


def scan(
    backends_path: Path, system_path: Path | None = None, capability: str = "default"
) -> dict[str, DiskBackend]:
    """Everything installed, keyed the way LocalAI registers backends.

    The folders (see ``folders``), plus each alias (see ``with_aliases``).
    """
    return with_aliases(folders(backends_path, system_path), capability)


def with_aliases(
    on_disk: Mapping[str, DiskBackend], capability: str = "default"
) -> dict[str, DiskBackend]:
    """The folders ``on_disk`` (as ``folders`` read them), plus each alias, which
    resolves to the build this host prefers among those sharing it and, as in LocalAI,
    takes the place of a meta or build of the same name. Reads nothing from the disk:
    a caller that has read the folders gets the aliases without a second read."""
    found = dict(on_disk)
    aliases: dict[str, list[DiskBackend]] = {}
    for row in list(found.values()):
        if (
            not row.is_meta
            and not row.is_system
            and row.metadata
            and row.metadata.alias
        ):
            aliases.setdefault(row.metadata.alias, []).append(row)
    tokens = preference_tokens(capability)
    for alias, group in aliases.items():
        chosen = next(
            (row for token in tokens for row in group if token in row.name.lower()),
            group[0],
        )
        found[alias] = DiskBackend(
            alias, chosen.run_file, metadata=chosen.metadata, folder=chosen.folder
        )
    return found


def folder_size(path: Path) -> int:
    """Bytes used by the files under ``path`` (links are not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def human_size(size: float) -> str:
    """Sizes as LocalAI prints them: whole bytes under 1 KiB, else one decimal."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    index = 0
    while size >= 1024 and index < len(units) - 1:
        size /= 1024
        index += 1
    return f"{int(size)} B" if index == 0 else f"{size:.1f} {units[index]}"
