"""What an install, upgrade, delete or rollback would do, without doing it.

The API's ``POST /api/backends/plan``, the dashboard's confirmations and the commands'
``--dry-run`` all call ``make_plan``. It reads what the job reads (the gallery, this
host's disk, the image manifest, LocalAI's model configs) and answers with the build the
job would pick and why, each folder it would create, replace or remove, what it would
download, whether that fits on the disk, the models it touches and what to watch out
for. Nothing is written: no job, no folder, no row.

A size comes from the image manifest (layer sizes), a download's ``Content-Length``
(HEAD), or the local file or folder; each fetch goes through the source policy and the
stall deadline like the job's own, and anything it cannot learn is "unknown" with a
warning rather than an error: a plan that fails because a registry is slow would hide
the rest of the answer.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings

from backends.core import installed, oci, resolve
from backends.core.gallery import validate_backend_id
from backends.core.install import InstallError, build_folder, pointer
from backends.core.limits import has_room
from backends.core.policy import SourceRefused, is_local_source
from backends.core.redact import redact_message, redact_uri
from backends.core.sources import looks_like_oci
from backends.core.transfer import Cancelled, Watch
from backends.core.versions import KeptVersion
from backends.models import GalleryBackend, InstalledBackend, Node
from backends.services import catalogue, jobs, pipeline, usage, versions
from backends.services import disk as disk_space

log = logging.getLogger(__name__)

ACTIONS = ("install", "upgrade", "delete", "rollback")


@dataclass(frozen=True)
class FolderChange:
    """One folder of the backends folder and what the job does to it."""

    action: str  # create / replace / remove / keep
    name: str
    path: str
    note: str = ""


@dataclass(frozen=True)
class Download:
    uri: str  # redacted
    bytes: int | None  # None: the source does not say
    how: str  # manifest / content-length / local / unknown


@dataclass
class Plan:
    action: str
    target: str
    backend: str = ""  # the backend the job works on (a meta's own name)
    build: str = ""  # the concrete build it installs, or replaces
    explanation: str = ""
    folders: list[FolderChange] = field(default_factory=list)
    downloads: list[Download] = field(default_factory=list)
    disk_free: int = 0
    disk_reserve: int = 0
    models: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # False when the job would be refused or would do nothing; ``warnings`` says why.
    changes: bool = True

    @property
    def download_bytes(self) -> int | None:
        sizes = [d.bytes for d in self.downloads]
        return None if None in sizes else sum(s or 0 for s in sizes)

    @property
    def disk_needed(self) -> int | None:
        # What the installer itself checks before it writes: the (compressed) bytes it
        # fetches, on top of the reserve. An upgrade's backup is a rename: no extra room.
        return self.download_bytes

    @property
    def enough_disk(self) -> bool | None:
        needed = self.disk_needed
        if needed is None:
            return None
        return has_room(self.disk_free, needed, self.disk_reserve)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "target": self.target,
            "backend": self.backend,
            "build": self.build,
            "explanation": self.explanation,
            "changes": self.changes,
            "folders": [asdict(f) for f in self.folders],
            "download": {
                "bytes": self.download_bytes,
                "sources": [asdict(d) for d in self.downloads],
            },
            "disk": {
                "needed": self.disk_needed,
                "free": self.disk_free,
                "reserve": self.disk_reserve,
                "enough": self.enough_disk,
            },
            "models": self.models,
            "warnings": self.warnings,
        }

    def lines(self) -> list[str]:
        """The plan as text, for the commands' ``--dry-run``."""
        out = [f"Plan: {self.action} {self.target}"]
        if self.build:
            out.append(f"  build: {self.build}")
        if self.explanation:
            out.append(f"  why: {self.explanation}")
        for change in self.folders:
            note = f" ({change.note})" if change.note else ""
            out.append(f"  {change.action} {change.path or change.name}{note}")
        for download in self.downloads:
            size = _size(download.bytes)
            out.append(f"  download {download.uri}: {size} ({download.how})")
        if self.action in ("install", "upgrade"):
            out.append(
                f"  disk: needs {_size(self.disk_needed)}, "
                f"{installed.human_size(self.disk_free)} free, "
                f"{installed.human_size(self.disk_reserve)} kept in reserve"
            )
        if self.models:
            out.append(f"  models affected: {', '.join(self.models)}")
        out += [f"  warning: {warning}" for warning in self.warnings]
        if not self.changes:
            out.append("  nothing would change")
        return out


def _size(size: int | None) -> str:
    return "unknown" if size is None else installed.human_size(size)


def make_plan(
    action: str, target: str, *, force: bool = False, version: str = ""
) -> Plan:
    """The plan of ``action`` on ``target`` on this host. Refused (as the job would be
    refused) for a bad name, an unknown backend or a system backend. ``version`` is
    the kept version a rollback restores (its id or version; empty: the newest)."""
    if action not in ACTIONS:
        raise jobs.Refused(
            400, f"unknown action {action!r}: one of {', '.join(ACTIONS)}"
        )
    try:
        target = validate_backend_id(target)
    except ValueError as exc:
        raise jobs.Refused(400, str(exc)) from None
    plan = Plan(action, target)
    space = disk_space.local_space(0)
    plan.disk_free = space.free if space is not None else 0
    plan.disk_reserve = settings.LOCALAI_ADMIN_DISK_RESERVE_BYTES
    if action == "install":
        _plan_install(plan, force)
    elif action == "upgrade":
        _plan_upgrade(plan)
    elif action == "rollback":
        _plan_rollback(plan, version)
    else:
        _plan_delete(plan, force)
    if plan.enough_disk is False:
        plan.warnings.append(
            f"not enough disk space: {_size(plan.disk_needed)} needed, "
            f"{installed.human_size(plan.disk_free)} free and "
            f"{installed.human_size(plan.disk_reserve)} must stay free "
            "(LOCALAI_ADMIN_DISK_RESERVE_BYTES): the job would fail"
        )
    return plan


# -- install ----------------------------------------------------------------------------


def _plan_install(plan: Plan, force: bool) -> None:
    entry = GalleryBackend.objects.find(plan.target)
    if entry is None:
        raise jobs.Refused(404, f'no backend found with name "{plan.target}"')
    plan.backend = entry.name
    node = Node.objects.local()
    capability = node.current_capability()
    on_disk = catalogue.installed_folders()
    runnable = {name for name, row in on_disk.items() if row.is_runnable}
    if not force and entry.name in runnable:
        plan.changes = False
        plan.warnings.append(
            f"{entry.name} is already installed: the job would do nothing "
            "(use force to reinstall)"
        )
        return
    build = entry
    if entry.is_meta:
        try:
            choice, build = resolve.pick_build(
                entry,
                catalogue.builds_of(entry),
                capability,
                hardware_explanation=node.capability_explanation,
            )
        except resolve.NoBuildError as exc:
            raise jobs.Refused(409, str(exc), code="not_runnable_here") from None
        plan.explanation = choice.explanation
    else:
        reason = resolve.why_incompatible(entry.name, entry.uri, capability)
        if reason:
            plan.warnings.append(
                f"{entry.name} cannot run on this node ({capability}): {reason}; "
                + ("installed anyway (force)" if force else "the job would fail")
            )
            plan.changes = force
        else:
            plan.explanation = f"{entry.name} is a build for {capability} nodes"
    plan.build = build.name
    if force or build.name not in runnable:
        plan.folders.append(_change(build.name, on_disk, "the build"))
        plan.downloads.append(measure(pipeline.gallery_source(build).uri))
        plan.models = _models_of(build.name)
        _warn_shared(plan, build.name, on_disk, entry.name)
    else:
        plan.folders.append(
            FolderChange(
                "keep",
                build.name,
                str(_folder(build.name)),
                "already installed: the meta points at it",
            )
        )
    if entry.is_meta:
        plan.folders.append(
            _change(entry.name, on_disk, f"the meta backend, pointing at {build.name}")
        )
    _warn_system(plan, entry.name)


def _folder(name: str) -> Path:
    return Path(settings.LOCALAI_BACKENDS_PATH) / name


def _change(
    name: str, on_disk: dict[str, installed.DiskBackend], what: str
) -> FolderChange:
    exists = _folder(name).exists()
    note = what
    if exists:
        note += "; the current one is kept as a backup until the new one is in place"
    return FolderChange(
        "replace" if exists else "create", name, str(_folder(name)), note
    )


def _warn_shared(
    plan: Plan, build: str, on_disk: dict[str, installed.DiskBackend], own: str
) -> None:
    metas = sorted(
        name
        for name, row in on_disk.items()
        if row.is_meta and name != own and pointer(row) == build
    )
    if metas and _folder(build).exists():
        plan.warnings.append(
            f"build {build} is shared with meta backend {', '.join(metas)}: "
            "they use the new build too"
        )


def _warn_system(plan: Plan, name: str) -> None:
    system = settings.LOCALAI_BACKENDS_SYSTEM_PATH
    if system is not None and (Path(system) / name / installed.RUN_FILE).exists():
        plan.warnings.append(
            f"a system backend named {name} exists: LocalAI uses the installed one "
            "instead while it is there"
        )


def _models_of(folder: str) -> list[str]:
    return usage.users_by_folder().get(folder, [])


# -- upgrade ----------------------------------------------------------------------------


def _plan_upgrade(plan: Plan) -> None:
    on_disk = catalogue.installed_folders()
    disk = jobs.installed_here(plan.target, on_disk)
    plan.backend = disk.name
    if disk.is_system or disk.folder is None:
        raise jobs.Refused(409, f"system backend {disk.name!r} cannot be upgraded")
    concrete = build_folder(disk)
    entry = GalleryBackend.objects.find(concrete)
    if entry is None:
        raise jobs.Refused(
            404, f"{concrete} is not in any gallery: there is nothing to upgrade to"
        )
    if entry.is_meta:
        raise jobs.Refused(
            409, f"{concrete} is a meta backend in the gallery; upgrade its build"
        )
    plan.build = entry.name
    build_row = on_disk.get(concrete)
    current = build_row.metadata if build_row is not None else None
    record = InstalledBackend.objects.filter(
        node=Node.objects.local(), name__in=(disk.name, concrete)
    ).first()
    old = (current.version if current else "") or "unknown version"
    new = (
        entry.version
        or (record.available_version if record else "")
        or "the gallery's build"
    )
    plan.explanation = f"{concrete} is replaced: {old} -> {new}"
    if disk.is_meta:
        plan.explanation += f" (the build meta backend {disk.name} points at)"
    if record is not None and not record.upgrade_available:
        plan.warnings.append(
            "no upgrade was found at the last check: the job reinstalls the same build"
            if record.checked_at
            else "upgrades were never checked: the build may be the same"
        )
    plan.folders.append(_change(concrete, on_disk, "the build"))
    plan.downloads.append(measure(pipeline.gallery_source(entry).uri))
    plan.models = _models_of(concrete)
    _warn_shared(plan, concrete, on_disk, disk.name)


# -- rollback ---------------------------------------------------------------------------


def _plan_rollback(plan: Plan, version: str) -> None:
    # The same checks as the rollback itself: an installed, non-system backend.
    current = versions.versions(plan.target)
    plan.backend, plan.build = current.name, current.build
    if version:
        kept = versions.check_kept(plan.target, version)
    elif current.kept:
        kept = current.kept[0]  # newest first
    else:
        raise jobs.Refused(
            404, f"{current.build} has no kept version", code="version_not_found"
        )
    live = _folder(current.build)
    now = installed.read_metadata(live) if live.is_dir() else None
    old = (now.version if now else "") or "no version"
    back = kept.metadata.version or "no version"
    plan.explanation = (
        f"{current.build} goes back to {back} (kept {_kept_at(kept)}); "
        f"the current build ({old}) is kept as a version, so the rollback can be "
        "undone the same way"
    )
    if current.build != current.name:
        plan.explanation += f" (the build meta backend {current.name} points at)"
    plan.folders.append(
        FolderChange(
            "replace",
            current.build,
            str(live),
            f"by the kept version {back}, moved back from {kept.folder}",
        )
    )
    plan.folders.append(
        FolderChange(
            "keep",
            current.build,
            str(kept.folder.parent),
            f"the current build ({old}) moves into the kept versions",
        )
    )
    plan.models = _models_of(current.build)
    if now is not None and now.digest and now.digest == kept.metadata.digest:
        plan.warnings.append(
            "the kept version is the same build as the current one: nothing changes "
            "for LocalAI"
        )
    if current.pinned:
        plan.warnings.append(
            f"{current.name} is pinned: the rollback runs, and it stays pinned"
        )


def _kept_at(kept: KeptVersion) -> str:
    at = kept.kept_at
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else "at an unknown time"


# -- delete -----------------------------------------------------------------------------


def _plan_delete(plan: Plan, force: bool) -> None:
    on_disk = catalogue.installed_folders()
    disk = jobs.installed_here(plan.target, on_disk)
    plan.backend = disk.name
    if disk.is_system:
        raise jobs.Refused(409, f"system backend {disk.name!r} cannot be deleted")
    try:
        removals, warnings = catalogue.removal_plan(disk, on_disk)
    except InstallError as exc:
        raise jobs.Refused(409, str(exc)) from None
    for removal in removals:
        if removal.path is not None:
            plan.folders.append(
                FolderChange(
                    "remove", removal.path.name, str(removal.path), removal.what
                )
            )
        else:
            name = removal.what.removeprefix("build ")
            plan.folders.append(
                FolderChange("keep", name, str(_folder(name)), removal.kept_because)
            )
    plan.warnings += warnings
    plan.models = usage.models_using(
        [r.path for r in removals if r.path is not None], on_disk
    )
    if plan.models:
        if force:
            plan.warnings.append(
                f"models {', '.join(plan.models)} use it and stop working (force)"
            )
        else:
            plan.changes = False
            plan.warnings.append(
                f"models {', '.join(plan.models)} use it: the delete is refused "
                "unless forced"
            )


# -- sizes ------------------------------------------------------------------------------


def measure(uri: str) -> Download:
    """How many bytes fetching ``uri`` downloads, as far as the source says."""
    shown = redact_uri(uri)
    policy = pipeline.source_policy()
    try:
        if is_local_source(uri):
            path = policy.check_local_uri(uri)
            size = installed.folder_size(path) if path.is_dir() else path.stat().st_size
            return Download(shown, size, "local")
        if looks_like_oci(uri):
            with pipeline.registry_client() as client:
                watch = Watch(stall_seconds=settings.LOCALAI_ADMIN_STALL_SECONDS)
                image = client.resolve(uri, watch=watch)
            return Download(
                shown, sum(layer.size for layer in image.layers), "manifest"
            )
        if uri.startswith(("http://", "https://")):
            return Download(shown, _content_length(uri, policy), "content-length")
    except (
        oci.OCIError,
        httpx.HTTPError,
        OSError,
        SourceRefused,
        Cancelled,
        InstallError,
        ValueError,
    ) as exc:
        log.info("plan: cannot size %s: %s", shown, redact_message(str(exc), uri))
        return Download(shown, None, f"unknown: {redact_message(str(exc), uri)}")
    return Download(shown, None, "unknown")


def _content_length(uri: str, policy: Any) -> int | None:
    watch = Watch(stall_seconds=settings.LOCALAI_ADMIN_STALL_SECONDS)
    with httpx.Client(
        transport=policy.transport(verify=oci.tls_context()),
        follow_redirects=True,
        timeout=watch.timeout,
    ) as client:
        response = watch.call(
            lambda: client.head(uri, timeout=watch.timeout, extensions=watch.extensions)
        )
    length = response.headers.get("Content-Length", "")
    if response.status_code >= 400 or not length.isdigit():
        return None
    return int(length)
