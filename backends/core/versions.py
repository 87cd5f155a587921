"""Kept versions: the builds an upgrade or a reinstall replaced, for a rollback.

They live in ``<backends>/.versions/<name>/<id>/``. LocalAI lists every direct subfolder
of the backends folder that holds a ``run.sh`` (core/gallery/backends.go,
ListSystemBackends), hidden or not, and reads its ``metadata.json`` for aliases and
metas; so a kept build must not sit beside the live ones. One level down it is never
seen: ``.versions`` itself has neither file, and our own scan skips dot-folders. Being
on the same filesystem as the live folders, a build moves in and out with one rename.

The id is the time the build was put aside (UTC, microseconds): ids sort oldest first,
which is the order the limit prunes in. A kept folder is pruned by renaming it to a
dot-name first, so a prune cut short by a crash leaves no half-removed version listed;
``recover`` finishes it.

No Django imports.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backends.core.installed import RUN_FILE, Metadata, folder_size, read_metadata
from backends.core.trees import remove_tree

log = logging.getLogger(__name__)

VERSIONS_DIR = ".versions"
ID_FORMAT = "%Y%m%dT%H%M%S%fZ"
ID_RE = re.compile(r"^[0-9]{8}T[0-9]{12}Z(-[0-9]{1,4})?$")
PRUNING_PREFIX = ".pruning-"


class VersionNotFound(LookupError):
    """No kept version matches; the message is written for the admin."""


@dataclass(frozen=True)
class KeptVersion:
    id: str
    name: str
    folder: Path
    metadata: Metadata

    @property
    def kept_at(self) -> datetime | None:
        try:
            stamp = datetime.strptime(self.id.partition("-")[0], ID_FORMAT)
        except ValueError:
            return None
        return stamp.replace(tzinfo=UTC)

    @property
    def size(self) -> int:
        return folder_size(self.folder)


@dataclass(frozen=True)
class VersionStore:
    backends_path: Path

    @property
    def root(self) -> Path:
        return self.backends_path / VERSIONS_DIR

    def folder_of(self, name: str) -> Path:
        return self.root / name

    def kept(self, name: str) -> list[KeptVersion]:
        """The kept versions of ``name``, newest first; unreadable ones are skipped."""
        base = self.folder_of(name)
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name, reverse=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            if not ID_RE.match(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            folder = Path(entry.path)
            try:
                metadata = read_metadata(folder) or Metadata(name=name)
            except ValueError as exc:
                log.warning("kept version skipped: %s", exc)
                continue
            found.append(KeptVersion(entry.name, name, folder, metadata))
        return found

    def find(self, name: str, ref: str) -> KeptVersion:
        """A kept version by its id, else the newest one with that version string."""
        kept = self.kept(name)
        for match in (
            [k for k in kept if k.id == ref],
            [k for k in kept if ref and k.metadata.version == ref],
        ):
            if match:
                return match[0]
        raise VersionNotFound(f"{name} has no kept version {ref!r}")

    def keep(self, folder: Path, name: str, limit: int) -> KeptVersion | None:
        """Move ``folder`` (a replaced build) into the store, then prune to ``limit``.

        With a limit of 0, or a folder that is not a build, it is removed instead."""
        if limit <= 0 or not (folder / RUN_FILE).is_file():
            remove_tree(folder)
            self.prune(name, limit)
            return None
        base = self.folder_of(name)
        base.mkdir(parents=True, exist_ok=True, mode=0o755)
        stamp = datetime.now(UTC).strftime(ID_FORMAT)
        kept_id, n = stamp, 0
        while (base / kept_id).exists():
            n += 1
            kept_id = f"{stamp}-{n}"
        os.rename(folder, base / kept_id)
        self.prune(name, limit)
        return next((k for k in self.kept(name) if k.id == kept_id), None)

    def prune(self, name: str, limit: int) -> list[str]:
        """Remove the oldest kept versions beyond ``limit``; returns their ids."""
        removed = []
        for old in self.kept(name)[max(limit, 0) :]:
            doomed = old.folder.with_name(PRUNING_PREFIX + old.id)
            os.rename(old.folder, doomed)
            remove_tree(doomed)
            removed.append(old.id)
        self._drop_if_empty(name)
        return removed

    def take(self, kept: KeptVersion, target: Path) -> None:
        """Move a kept build to ``target`` (a rollback's live folder, free by now)."""
        os.rename(kept.folder, target)
        self._drop_if_empty(kept.name)

    def recover(self) -> list[str]:
        """Finish prunes a crash cut short; returns what was done."""
        actions: list[str] = []
        try:
            bases = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return actions
        for base in bases:
            if not base.is_dir(follow_symlinks=False):
                continue
            for entry in list(os.scandir(base.path)):
                if entry.name.startswith(PRUNING_PREFIX):
                    remove_tree(Path(entry.path))
                    actions.append(f"removed {VERSIONS_DIR}/{base.name}/{entry.name}")
        return actions

    def _drop_if_empty(self, name: str) -> None:
        # Only an empty folder goes: rmdir refuses anything else, which is the point.
        for folder in (self.folder_of(name), self.root):
            try:
                folder.rmdir()
            except OSError:
                return
