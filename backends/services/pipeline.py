"""Run a Job: resolve what it asks for, drive the installer, record progress and outcome.

The Job row is the single record of a job's life: this module moves it from queued to
running to completed / failed / cancelled with conditional updates, so a cancel that
races the start, or a second worker picking the same job, cannot both win.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from backends.core import extract, installed, kits, oci, resolve
from backends.core.gallery import validate_name
from backends.core.health import HealthCheck
from backends.core.install import Installer, InstallError, Source, build_folder
from backends.core.limits import Limits
from backends.core.oci.verify import VerificationPolicy
from backends.core.policy import SourcePolicy, SourceRefused
from backends.core.redact import redact_message, redact_uri
from backends.core.sources import ImageTags, default_name
from backends.models import Gallery, GalleryBackend, InstalledBackend, Job, Node
from backends.services import catalogue

log = logging.getLogger(__name__)

# Progress is written to the database at most this often (and read back for cancels).
FLUSH_SECONDS = 0.25


class JobFailed(Exception):
    """The job cannot be done; the message is shown to the admin as the job's error."""


class ProgressWriter:
    """Throttles progress callbacks into Job row updates and polls for a cancel request."""

    def __init__(self, job: Job) -> None:
        self.job_id = job.pk
        self.last_flush = 0.0
        self.last_shown: tuple[str, str, int] | None = None
        self.last_cancel_poll = 0.0
        self.cancel_requested = False
        self.started = time.monotonic()
        self.window: tuple[float, int] = (self.started, 0)

    def __call__(self, progress: oci.Progress) -> None:
        now = time.monotonic()
        if (
            now - self.last_flush < FLUSH_SECONDS
            and progress.current_bytes < progress.total_bytes
        ):
            return
        # A finished phase may report its last figure many times (each file extracted
        # after the whole layer was read): it is written once.
        shown = (progress.phase, progress.label, progress.current_bytes)
        if shown == self.last_shown:
            return
        self.last_flush, self.last_shown = now, shown
        speed = self._speed(now, progress.current_bytes)
        percent = (
            100.0 * progress.current_bytes / progress.total_bytes
            if progress.total_bytes
            else 0
        )
        # A tarball's label is its URI, which may carry a token.
        label = redact_uri(progress.label)
        Job.objects.filter(pk=self.job_id).update(
            phase=progress.phase,
            file_name=label,
            current_bytes=progress.current_bytes,
            total_bytes=progress.total_bytes,
            progress=min(percent, 99.0),
            bytes_per_second=speed,
            message=f"{progress.phase} {label}",
            updated_at=timezone.now(),
        )
        self._poll_cancel()

    def _speed(self, now: float, done: int) -> float:
        # Speed over a sliding window of a few seconds, so the ETA follows the network.
        since, done_then = self.window
        elapsed = now - since
        if elapsed > 3:
            self.window = (now, done)
        return (done - done_then) / elapsed if elapsed > 0 else 0.0

    def _poll_cancel(self) -> None:
        self.last_cancel_poll = time.monotonic()
        self.cancel_requested = Job.objects.filter(
            pk=self.job_id, cancel_requested=True
        ).exists()

    def should_cancel(self) -> bool:
        if time.monotonic() - self.last_cancel_poll >= FLUSH_SECONDS:
            self._poll_cancel()
        return self.cancel_requested


def run_job(job_id: str) -> str:
    """Run a queued job to its end; returns its final state."""
    started = Job.objects.filter(pk=job_id, state=Job.State.QUEUED).update(
        state=Job.State.RUNNING,
        started_at=timezone.now(),
        phase="starting",
        message="starting",
    )
    job = Job.objects.select_related("node").get(pk=job_id)
    if not started:
        return job.state  # cancelled while queued, or already taken
    if job.kind == Job.Kind.DELETE:
        Job.objects.filter(pk=job.pk).update(cancellable=False)
    runner = Runner(job, ProgressWriter(job))
    try:
        state, message, error = _outcome(runner)
    finally:
        # The table before the job's end: a page refreshing when the job ends must read
        # what the job changed (digest, upgrade flag, size), not the rows from before.
        # A failure here must not leave the job running: the next reconcile catches up.
        try:
            reconcile(job.node, runner.fresh)
        except Exception:
            log.exception("job %s: the installed table was not refreshed", job.pk)
    finish(job, state, message, error=error)
    return Job.objects.get(pk=job.pk).state


def _outcome(runner: Runner) -> tuple[str, str, str]:
    """Run the job's work: its final (state, message, error)."""
    job = runner.job
    try:
        message = runner.run()
    except oci.Cancelled:
        return Job.State.CANCELLED, "cancelled", ""
    except (
        JobFailed,
        extract.ArchiveError,
        InstallError,
        oci.OCIError,
        OSError,
        resolve.NoBuildError,
        ValueError,
    ) as exc:
        error = runner.shown(str(exc))
        log.info("job %s failed: %s", job.pk, error)
        return Job.State.FAILED, f"error: {error}", error
    except Exception as exc:  # a bug must still end the job, not leave it running
        log.exception("job %s crashed", job.pk)
        return (
            Job.State.FAILED,
            "error: internal error",
            runner.shown(f"internal error: {exc!r}"),
        )
    return Job.State.COMPLETED, runner.shown(message), ""


def finish(job: Job, state: str, message: str, error: str = "") -> None:
    fields: dict[str, Any] = {
        "state": state,
        "message": message,
        "error": error,
        "cancellable": False,
        "finished_at": timezone.now(),
        "bytes_per_second": 0,
    }
    if state == Job.State.COMPLETED:
        fields |= {
            "progress": 100.0,
            "current_bytes": F("total_bytes"),
            "phase": "done",
        }
    Job.objects.filter(pk=job.pk, state=Job.State.RUNNING).update(**fields)
    if job.parent_id:
        Job.objects.settle_parent(job.parent_id)


def reconcile(
    node: Node | None, fresh: dict[str, installed.Metadata] | None = None
) -> None:
    """Refresh the node's InstalledBackend rows from its backends folder.

    After a job, ``fresh`` is what it installed, with its full URIs (the disk has them
    redacted): only those folders, and folders the table does not know yet, are
    measured, since measuring walks every file (thousands in a CUDA build) and the
    other folders are as the last reconcile measured them. Without ``fresh`` (an
    agent's start, an upgrade check) every folder is measured again."""
    node = node or Node.objects.local()
    # Each folder once: an alias must not stand in for the meta of the same name here.
    rows = catalogue.installed_folders()

    def size_of(name: str) -> int | None:
        folder = rows[name].folder
        return installed.folder_size(folder) if folder is not None else None

    InstalledBackend.reconcile(
        node, rows, size_of, fresh, remeasure=None if fresh is None else set(fresh)
    )


@dataclass
class Runner:
    job: Job
    writer: ProgressWriter
    # What this job installed, by folder name, with the full source URIs.
    fresh: dict[str, installed.Metadata] = field(default_factory=dict)
    # Every URI this job reads (sources, mirrors, galleries): its errors may quote them.
    read: list[str] = field(default_factory=list)

    def shown(self, text: str) -> str:
        """``text`` (an outcome or an error) as the job records it: without the secrets
        of the sources this job reads nor of the configured registry credentials."""
        return redact_message(
            text, self.job.external_uri, *self.read, secrets=registry_secrets()
        )

    @property
    def backends_path(self) -> Path:
        return Path(settings.LOCALAI_BACKENDS_PATH)

    def installer(self) -> Installer:
        return Installer(
            self.backends_path,
            registry=registry_client(),
            progress=self.writer,
            should_cancel=self.writer.should_cancel,
            limits=install_limits(),
            policy=source_policy(),
            stall_seconds=settings.LOCALAI_ADMIN_STALL_SECONDS,
            health_check=health_check(),
            keep_versions=settings.LOCALAI_ADMIN_KEEP_VERSIONS,
            require_integrity=settings.LOCALAI_ADMIN_REQUIRE_INTEGRITY,
            sigstore_trust_root=settings.LOCALAI_ADMIN_SIGSTORE_TRUST_ROOT,
        )

    def run(self) -> str:
        if self.job.kind == Job.Kind.DELETE:
            return self.delete()
        if self.job.external_uri:
            return self.install_external()
        if self.job.kind == Job.Kind.UPGRADE:
            return self.upgrade()
        if self.job.kind == Job.Kind.ROLLBACK:
            return self.rollback()
        return self.install()

    # -- install from a gallery ----------------------------------------------------

    def install(self) -> str:
        entry = find_entry(self.job.target)
        capability = (self.job.node or Node.objects.local()).current_capability()
        installer = self.installer()
        if not self.job.force and installer.is_runnable(entry.name):
            return f"{entry.name} is already installed (use force to reinstall)"
        if entry.is_meta:
            return self.install_meta(entry, capability, installer)
        reason = resolve.why_incompatible(entry.name, entry.uri, capability)
        if reason and not self.job.force:
            raise JobFailed(
                f"{entry.name} cannot run on this node ({capability}): {reason}; "
                "install the meta backend instead, or use force"
            )
        self.install_concrete(entry, installer)
        return f"installed {entry.name}{self.unverified_warning()}"

    def install_meta(
        self, meta: GalleryBackend, capability: str, installer: Installer
    ) -> str:
        node = self.job.node or Node.objects.local()
        choice, concrete = resolve.pick_build(
            meta,
            catalogue.builds_of(meta),
            capability,
            hardware_explanation=node.capability_explanation,
        )
        Job.objects.filter(pk=self.job.pk).update(message=choice.explanation)
        if self.job.force or not installer.is_runnable(concrete.name):
            self.install_concrete(concrete, installer)
        self.read.append(meta.gallery.url)
        self.fresh[meta.name] = installer.install_meta(
            meta.name,
            concrete.name,
            installed.Metadata(gallery_url=meta.gallery.url, version=concrete.version),
        )
        return (
            f"installed {meta.name} as {concrete.name}: {choice.explanation}"
            f"{self.unverified_warning()}"
        )

    def unverified_warning(self) -> str:
        """A warning for each image this job pulled without a signature check."""
        unverified = sorted(
            name
            for name, metadata in self.fresh.items()
            if metadata.digest and not metadata.verified_by
        )
        if not unverified:
            return ""
        return (
            f"; warning: {', '.join(unverified)} not signature-verified "
            "(no verification policy applies to it)"
        )

    def install_concrete(self, entry: GalleryBackend, installer: Installer) -> None:
        source = self.source_of(entry)
        self.fresh[entry.name] = installer.install(
            entry.name,
            source,
            installed.Metadata(
                name=entry.name,
                alias=entry.alias,
                gallery_url=entry.gallery.url,
                uri=source.uri,
                version=entry.version,
            ),
        )

    def source_of(self, entry: GalleryBackend) -> Source:
        self.read += [entry.uri, *entry.mirrors, entry.gallery.url]
        return gallery_source(entry)

    # -- external ------------------------------------------------------------------

    def install_external(self) -> str:
        uri, name, alias = (
            self.job.external_uri,
            self.job.external_name,
            self.job.external_alias,
        )
        name = name or external_default_name(uri)
        installer = self.installer()
        if not self.job.force and installer.is_runnable(name):
            return f"{name} is already installed (use force to reinstall)"
        self.fresh[name] = installer.install(
            name, Source(uri), installed.Metadata(name=name, alias=alias, uri=uri)
        )
        return f"installed {name} from {redact_uri(uri)}{self.unverified_warning()}"

    # -- upgrade -------------------------------------------------------------------

    def upgrade(self) -> str:
        name = self.job.target.rpartition("@")[2]
        concrete = self.concrete_folder(name)
        entry = find_entry(concrete)
        if entry.is_meta:
            raise JobFailed(
                f"{concrete} is a meta backend in the gallery; upgrade its build"
            )
        current = installed.read_metadata(self.backends_path / concrete)
        source = self.source_of(entry)
        self.fresh[entry.name] = self.installer().install(
            entry.name,
            source,
            installed.Metadata(
                name=entry.name,
                alias=(current.alias if current else "") or entry.alias,
                gallery_url=entry.gallery.url,
                uri=source.uri,
                version=entry.version,
            ),
        )
        InstalledBackend.objects.filter(name__in=(name, concrete)).update(
            upgrade_available=False
        )
        return f"upgraded {entry.name}{self.unverified_warning()}"

    def concrete_folder(self, name: str) -> str:
        """The build folder an upgrade or a rollback of ``name`` replaces: a meta's build
        by the installer's pointer rule (``install.build_folder``), as the job's lock
        and the plans name it. ``name`` is a folder, else a backend or alias name."""
        on_disk = catalogue.installed_folders()
        folder = self.backends_path / name
        row = next(
            (r for r in on_disk.values() if r.folder == folder and not r.is_system),
            None,
        ) or catalogue.local_disk(folders=on_disk).get(name)
        if row is None:
            raise JobFailed(f"backend {name!r} is not installed")
        if row.is_system or row.folder is None:
            raise JobFailed(f"system backend {name!r} cannot be upgraded")
        return build_folder(row)

    # -- rollback ------------------------------------------------------------------

    def rollback(self) -> str:
        name = self.job.target.rpartition("@")[2]
        concrete = self.concrete_folder(name)
        Job.objects.filter(pk=self.job.pk).update(
            cancellable=False, phase="rolling back", message=f"rolling back {concrete}"
        )
        kept = self.installer().rollback(concrete, self.job.version_ref)
        # The build back in place is not what the last upgrade check looked at.
        InstalledBackend.objects.filter(
            node=self.job.node or Node.objects.local(), name__in=(name, concrete)
        ).update(upgrade_available=False, checked_at=None)
        shown = kept.metadata.version or kept.metadata.digest[:19] or kept.id
        return f"rolled {concrete} back to {shown} (kept {kept.id})"

    # -- delete --------------------------------------------------------------------

    def delete(self) -> str:
        removed = self.installer().delete(
            self.job.target, settings.LOCALAI_BACKENDS_SYSTEM_PATH
        )
        return "deleted " + ", ".join(removed)


def gallery_origin(entry: GalleryBackend) -> str:
    """Where the entry's gallery was read from (the source that answered at the last
    sync, else its URL): a gallery read over the network may not name local sources."""
    return entry.gallery.source or entry.gallery.url


def find_entry(requested: str) -> GalleryBackend:
    entry = GalleryBackend.objects.find(requested)
    if entry is None:
        raise JobFailed(f'no backend found with name "{requested}"')
    return entry


def gallery_source(entry: GalleryBackend) -> Source:
    """Where a gallery build is fetched from: its image (or, when development builds are
    preferred, its development image), then its mirrors, then LocalAI's tag fallbacks."""
    tags = ImageTags(
        settings.LOCALAI_BACKEND_IMAGES_RELEASE_TAG,
        settings.LOCALAI_BACKEND_IMAGES_BRANCH_TAG,
        settings.LOCALAI_BACKEND_DEV_SUFFIX,
    )
    primary, fallbacks = tags.candidates(
        entry.uri,
        entry.mirrors,
        prefer_development=settings.LOCALAI_PREFER_DEV_BACKENDS,
    )
    return Source(
        primary,
        fallbacks,
        entry.sha256,
        gallery_origin(entry),
        verification_of(entry),
    )


def verification_of(entry: GalleryBackend) -> VerificationPolicy | None:
    """The policy an entry's image is verified against: its gallery's, or for an image
    of an offline kit, this host's policy of the gallery the kit says it came from."""
    if not entry.uri.startswith(kits.SCHEME):
        return entry.gallery.verification_policy()
    try:
        folder, digest = kits.parse_layout_uri(entry.uri)
        layout = kits.Layout(source_policy().check_local(folder, entry.uri))
        return kit_image_policy(layout, digest)[1]
    except (kits.KitError, SourceRefused, OSError):
        # The installer reads the kit next, and says what is wrong with it.
        return None


def kit_image_policy(
    layout: kits.Layout, digest: str
) -> tuple[str, VerificationPolicy | None]:
    """(gallery named by the kit, this host's policy of that gallery or None).

    The kit's own verification block is never the answer: whoever made the kit wrote
    it, so it could name their own key; the policy comes from this host's gallery."""
    name = layout.annotations(digest).get(kits.GALLERY_ANNOTATION, "")
    gallery = Gallery.objects.filter(name=name).first() if name else None
    return name, gallery.verification_policy() if gallery is not None else None


def external_default_name(uri: str) -> str:
    """The folder name an external install gets when none is given."""
    name = default_name(uri)
    if not name:
        raise JobFailed("specifying a name is required for OCI images")
    return validate_name(name, "name derived from the URI")


def health_check() -> HealthCheck | None:
    """The check every concrete build passes before its swap, unless turned off."""
    if not settings.LOCALAI_ADMIN_HEALTH_CHECK:
        return None
    return HealthCheck(timeout_seconds=settings.LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS)


def install_limits() -> Limits:
    return Limits(
        max_backend_bytes=settings.LOCALAI_ADMIN_MAX_BACKEND_BYTES,
        disk_reserve_bytes=settings.LOCALAI_ADMIN_DISK_RESERVE_BYTES,
    )


def source_policy() -> SourcePolicy:
    """The source policy of the settings: which hosts and local files fetches reach."""
    return SourcePolicy.parse(
        settings.LOCALAI_ADMIN_PRIVATE_HOSTS, settings.LOCALAI_ADMIN_LOCAL_ROOTS
    )


def registry_secrets() -> list[str]:
    """The configured registry credentials, as ``redact.scrub`` looks for them."""
    return [
        secret
        for value in settings.LOCALAI_ADMIN_REGISTRY_CREDENTIALS.values()
        for secret in (value["password"], f"{value['username']}:{value['password']}")
    ]


def registry_client() -> oci.RegistryClient:
    credentials = {
        host: oci.Credentials(
            value["username"], value["password"], tuple(value.get("realms", ()))
        )
        for host, value in settings.LOCALAI_ADMIN_REGISTRY_CREDENTIALS.items()
    }
    return oci.RegistryClient(
        insecure=settings.LOCALAI_ADMIN_INSECURE_REGISTRIES,
        credentials=credentials,
        policy=source_policy(),
        mirrors=settings.LOCALAI_ADMIN_REGISTRY_MIRRORS,
    )
