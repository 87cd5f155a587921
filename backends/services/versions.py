"""Kept versions and pins of this host's backends: the read side and the pin switch.

A rollback itself is a job (``jobs.rollback``); what is kept, and where, is the core's
(``backends.core.versions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from backends.core.install import build_folder
from backends.core.installed import DiskBackend
from backends.core.versions import KeptVersion, VersionNotFound, VersionStore
from backends.models import InstalledBackend, Job, Node
from backends.services import audit, jobs, pipeline


@dataclass(frozen=True)
class Versions:
    """A backend's kept versions. ``build`` is the folder they belong to: a meta's
    versions are those of the build it points at."""

    name: str
    build: str
    pinned: bool
    kept: list[KeptVersion]

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "build": self.build,
            "pinned": self.pinned,
            "keep_versions": settings.LOCALAI_ADMIN_KEEP_VERSIONS,
            "versions": [kept_json(k) for k in self.kept],
        }


def kept_json(kept: KeptVersion) -> dict[str, object]:
    at = kept.kept_at
    return {
        "id": kept.id,
        "version": kept.metadata.version,
        "digest": kept.metadata.digest,
        "installed_at": kept.metadata.installed_at,
        "kept_at": at.isoformat(timespec="seconds") if at else "",
        "size": kept.size,
    }


def store() -> VersionStore:
    return VersionStore(Path(settings.LOCALAI_BACKENDS_PATH))


def _changeable(name: str) -> DiskBackend:
    row = jobs.installed_here(name)
    if row.is_system:
        raise jobs.Refused(409, f"system backend {row.name!r} has no versions")
    return row


def versions(name: str) -> Versions:
    row = _changeable(name)
    build = build_folder(row)
    pinned = InstalledBackend.objects.filter(
        node=Node.objects.local(), name=row.name, pinned=True
    ).exists()
    return Versions(row.name, build, pinned, store().kept(build))


def check_kept(name: str, ref: str) -> KeptVersion:
    """The kept version a rollback of ``name`` to ``ref`` restores; 404 if none."""
    build = build_folder(_changeable(name))
    try:
        return store().find(build, ref)
    except VersionNotFound as exc:
        raise jobs.Refused(404, str(exc), code="version_not_found") from None


def rollback(name: str, ref: str, *, requested_by: str = "", queue: bool = True) -> Job:
    """Start a rollback, once the version is known to be there."""
    check_kept(name, ref)
    return jobs.rollback(name, ref, requested_by=requested_by, queue=queue)


def set_pinned(name: str, pinned: bool) -> InstalledBackend:
    """Pin or unpin a backend of this host; the row is made from the disk if needed."""
    row = _changeable(name)
    node = Node.objects.local()
    record = InstalledBackend.objects.filter(node=node, name=row.name).first()
    if record is None:
        pipeline.reconcile(node)
        record = InstalledBackend.objects.filter(node=node, name=row.name).first()
    if record is None:
        raise jobs.Refused(404, f"backend {row.name!r} is not installed")
    if record.pinned != pinned:
        record.pinned = pinned
        record.save(update_fields=["pinned"])
    # Who pinned what decides what upgrades skip: on the audit log, acting user included.
    audit.record(None, "pin" if pinned else "unpin", row.name, "done")
    return record
