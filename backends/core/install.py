"""Install, upgrade and delete backends in a backends folder, safely.

Nothing is ever unpacked into a live backend folder. A build is fetched into a staging
folder beside the target (``<name>.install-tmp``), checked (an executable ``run.sh``),
given its ``metadata.json``, then swapped in with two renames; the previous folder is kept
as ``<name>.install-backup`` until the new one is in place and restored if the swap fails.
A failed or cancelled fetch therefore leaves the previous install exactly as it was, and
the staging folder is always removed.

Each attempt at a source is bounded by ``limits.Limits`` (bytes written, free space kept,
path depth and length; see that module), given by the caller; folders are removed
without recursion (``trees.remove_tree``), so every tree that got in can be deleted,
replaced and cleaned up after a crash.

Every transfer runs under the installer's ``transfer.Watch``: a source that stalls
(``stall_seconds``) fails that attempt and the next mirror is tried; a cancel is seen
within a fraction of a second in every phase (registry token, manifest, blob, tarball
download, folder copy, extraction), even while a read is blocked.

No Django imports: the job runner, the management commands and the benchmarks drive it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

import httpx

from backends.core import extract, kits, oci
from backends.core.gallery import validate_name
from backends.core.installed import (
    RUN_FILE,
    DiskBackend,
    Metadata,
    folders,
    scan,
    with_aliases,
    write_metadata,
)
from backends.core.limits import Budget, LimitExceeded, Limits, shown
from backends.core.oci.verify import ArtifactStore, VerificationPolicy, verify_image
from backends.core.policy import SourcePolicy, SourceRefused, default_policy
from backends.core.redact import redact_message, redact_uri
from backends.core.sources import looks_like_oci
from backends.core.transfer import DEFAULT_STALL_SECONDS, Watch, stalled
from backends.core.trees import remove_tree
from backends.core.versions import KeptVersion, VersionNotFound, VersionStore

log = logging.getLogger(__name__)

ProgressCallback = Callable[[oci.Progress], None]
CancelCheck = Callable[[], bool]
# Called with the staging folder of a concrete build, after its run.sh is checked and
# before the swap; raises InstallError (or Cancelled) to keep the previous version.
HealthHook = Callable[[Path, Watch], None]

STAGING_SUFFIX = ".install-tmp"
BACKUP_SUFFIX = ".install-backup"
DOWNLOAD_PREFIX = ".download-"
CHUNK = 1024 * 1024


def pointer(row: DiskBackend) -> str:
    """The build folder a meta's ``meta_backend_for`` points at; "" for a build, and for
    a pointer that is no valid name (it is never followed)."""
    if not (row.is_meta and row.metadata and row.metadata.meta_backend_for):
        return ""
    try:
        return validate_name(row.metadata.meta_backend_for)
    except ValueError:
        return ""


def build_folder(row: DiskBackend) -> str:
    """The folder a job on an installed backend changes: for a meta, the build it points
    at (a meta folder only changes together with its build), else its own folder."""
    return pointer(row) or (row.folder.name if row.folder is not None else row.name)


class InstallError(Exception):
    """The install cannot go on; the message is written for the admin."""


class NotFoundError(InstallError):
    pass


@dataclass(frozen=True)
class Source:
    """Where a build comes from: an OCI reference, a tarball URL, or a local folder.
    ``gallery`` is the source of the gallery that named it ("" for an external
    install): a gallery fetched over the network may not name local sources."""

    uri: str
    mirrors: tuple[str, ...] = ()
    sha256: str = ""
    gallery: str = ""
    # The gallery's signature policy: an image is verified before any layer is fetched.
    verification: VerificationPolicy | None = None

    @property
    def candidates(self) -> list[str]:
        seen: list[str] = []
        for uri in (self.uri, *self.mirrors):
            if uri and uri not in seen:
                seen.append(uri)
        return seen


@dataclass
class Installer:
    """Installs into ``backends_path``; one instance per job."""

    backends_path: Path
    registry: oci.RegistryClient | None = None
    platform: oci.Platform | None = None
    progress: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None
    http: httpx.Client | None = None
    limits: Limits = field(default_factory=Limits)
    # Which hosts and local files the sources may reach (the registry client has its
    # own, given where it is built).
    policy: SourcePolicy = field(default_factory=default_policy)
    stall_seconds: float = DEFAULT_STALL_SECONDS
    # backends.core.health.HealthCheck in production; None skips the check.
    health_check: HealthHook | None = None
    # How many replaced builds of each backend stay in the versions store for a
    # rollback (versions.py); 0 removes a replaced build once the new one is in place.
    keep_versions: int = 0
    # Refuse tarballs without a sha256 and images without a verification policy.
    require_integrity: bool = False
    # The trusted_root.json keyless signatures chain to ("": the public-good root).
    sigstore_trust_root: str = ""
    # Made in the thread that runs the job: the one that polls should_cancel.
    watch: Watch = field(init=False)
    # What verified the last image pulled ("" when nothing did): recorded in metadata.
    verified_by: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.watch = Watch(self.should_cancel, stall_seconds=self.stall_seconds)

    # -- install -------------------------------------------------------------------

    def is_runnable(self, name: str) -> bool:
        return self.installed().get(name, DiskBackend(name, "")).is_runnable

    def installed(self, capability: str = "default") -> dict[str, DiskBackend]:
        return scan(self.backends_path, None, capability)

    def install(self, name: str, source: Source, metadata: Metadata) -> Metadata:
        """Fetch ``source`` into ``<backends>/<name>`` and return the metadata written."""
        validate_name(name)
        self.backends_path.mkdir(parents=True, exist_ok=True)
        target = self.backends_path / name
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise InstallError(f"{target} exists and is not a folder; remove it first")

        def fill(staging: Path) -> None:
            metadata.digest = self.fetch(source, staging)
            metadata.verified_by = self.verified_by
            self._check_run_file(staging)
            if self.health_check is not None:
                if self.progress:
                    # The fetch is done (1 of 1): the bar stays full while it starts.
                    self.progress(oci.Progress("health check", name, 1, 1))
                self.health_check(staging, self.watch)
            metadata.name = metadata.name or name

        return self._stage(target, fill, metadata, keep=True)

    def install_meta(
        self, meta_name: str, concrete: str, metadata: Metadata
    ) -> Metadata:
        """Write the meta folder: only a ``metadata.json`` pointing at ``concrete``."""
        validate_name(meta_name)
        validate_name(concrete, "concrete backend name")
        target = self.backends_path / meta_name
        if (target / RUN_FILE).exists():
            raise InstallError(
                f"{meta_name} is installed as a concrete build; delete it first"
            )
        metadata.name = meta_name
        metadata.meta_backend_for = concrete
        return self._stage(target, lambda staging: None, metadata)

    def _stage(
        self,
        target: Path,
        fill: Callable[[Path], None],
        metadata: Metadata,
        *,
        keep: bool = False,
    ) -> Metadata:
        """Fill a staging folder beside ``target``, add the metadata, swap it in;
        ``keep``: the build it replaces goes to the versions store."""
        staging = self._fresh(target.with_name(target.name + STAGING_SUFFIX))
        try:
            fill(staging)
            metadata.installed_at = datetime.now(UTC).isoformat(timespec="seconds")
            write_metadata(staging, metadata)
            self._swap(staging, target, keep=keep)
        finally:
            _discard(staging)
        return metadata

    def _fresh(self, folder: Path) -> Path:
        remove_tree(folder)
        folder.mkdir(mode=0o755)
        return folder

    def _check_run_file(self, staging: Path) -> None:
        run = staging / RUN_FILE
        try:
            mode = run.lstat().st_mode
        except FileNotFoundError:
            raise InstallError(
                f"not a valid backend: the image has no {RUN_FILE}"
            ) from None
        if not stat.S_ISREG(mode):
            raise InstallError(f"not a valid backend: {RUN_FILE} is not a regular file")
        if not mode & stat.S_IXUSR:
            # Tarballs made on filesystems without modes lose the bit; LocalAI runs it anyway.
            run.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def _swap(self, staging: Path, target: Path, *, keep: bool = False) -> None:
        backup = target.with_name(target.name + BACKUP_SUFFIX)
        remove_tree(backup)
        had_previous = target.exists()
        if had_previous:
            os.rename(target, backup)
        try:
            os.rename(staging, target)
        except OSError:
            if had_previous:
                os.rename(backup, target)
            raise
        if had_previous and keep:
            self._keep(backup, target.name)
        else:
            _discard(backup)

    @property
    def versions(self) -> VersionStore:
        return VersionStore(self.backends_path)

    def _keep(self, backup: Path, name: str, limit: int | None = None) -> None:
        # The new build is live: failing to keep the old one must not fail the job.
        try:
            self.versions.keep(
                backup, name, self.keep_versions if limit is None else limit
            )
        except OSError as exc:
            log.warning("could not keep the previous %s: %s", name, exc)
            _discard(backup)

    # -- rollback ------------------------------------------------------------------

    def rollback(self, name: str, ref: str) -> KeptVersion:
        """Put the kept version ``ref`` (an id or a version) of ``name`` back in place;
        the build it replaces becomes a kept version. Returns the one restored.

        The same two renames as an upgrade's swap, with the kept folder as the staging
        one: a crash between them leaves the backup, which ``recover`` puts back, and
        the kept version still in the store.
        """
        validate_name(name)
        target = self.backends_path / name
        if target.is_symlink() or not (target / RUN_FILE).is_file():
            raise NotFoundError(f"{name} is not installed as a build here")
        try:
            kept = self.versions.find(name, ref)
        except VersionNotFound as exc:
            raise NotFoundError(str(exc)) from None
        if not (kept.folder / RUN_FILE).is_file():
            raise InstallError(f"kept version {kept.id} of {name} has no {RUN_FILE}")
        backup = target.with_name(name + BACKUP_SUFFIX)
        remove_tree(backup)
        os.rename(target, backup)
        try:
            self.versions.take(kept, target)
        except OSError:
            os.rename(backup, target)
            raise
        # A rollback always keeps what it replaced, so it can be undone the same way.
        self._keep(backup, name, max(self.keep_versions, 1))
        return kept

    def recover(self) -> list[str]:
        """Tidy the folder after a worker was killed mid-install; returns what was done.

        A staging folder is half written: removed. A backup whose live folder is missing
        means the kill fell between the two renames of a swap: the backup is put back.
        A backup beside its live folder is a build the swap had replaced: kept as a
        version when versions are kept. The versions store is left as it is, but for
        a prune cut short.
        """
        actions: list[str] = []
        if not self.backends_path.is_dir():
            return actions
        for entry in sorted(self.backends_path.iterdir()):
            name = entry.name
            if name.endswith(BACKUP_SUFFIX):
                live = entry.with_name(name.removesuffix(BACKUP_SUFFIX))
                if live.exists() and self.keep_versions > 0:
                    self._keep(entry, live.name)
                    actions.append(f"kept {name} as a version of {live.name}")
                elif live.exists():
                    _discard(entry)
                    actions.append(f"removed {name}")
                else:
                    os.rename(entry, live)
                    actions.append(f"restored {live.name} from its backup")
            elif name.endswith(STAGING_SUFFIX):
                _discard(entry)
                actions.append(f"removed {name}")
            elif name.startswith(DOWNLOAD_PREFIX) and entry.is_file():
                entry.unlink()
                actions.append(f"removed {name}")
        actions += self.versions.recover()
        return actions

    # -- fetch ---------------------------------------------------------------------

    def fetch(self, source: Source, staging: Path) -> str:
        """Fill ``staging`` from the first candidate that works; returns the OCI digest."""
        if not source.candidates:
            raise InstallError("the gallery entry has no uri to download")
        self.policy.check_gallery_entry(source.gallery, source.candidates)
        errors = []
        for uri in source.candidates:
            self._check_cancel()
            try:
                return self._fetch_one(uri, source, staging)
            except (oci.Cancelled, extract.UnsafeArchiveError):
                raise
            except oci.VerificationError as exc:
                # A mirror serves the same image: refused just the same, and the
                # admin must see this reason, not "every source failed".
                raise InstallError(redact_message(str(exc), uri)) from exc
            except LimitExceeded as exc:
                # A mirror serves the same build: it would be refused just the same.
                raise InstallError(str(exc)) from exc
            except (
                InstallError,
                oci.OCIError,
                extract.ArchiveError,
                OSError,
                httpx.HTTPError,
                SourceRefused,
            ) as exc:
                failure = redact_message(f"{uri}: {exc}", uri)
                log.warning("fetching failed: %s", failure)
                errors.append(failure)
                self._fresh(staging)
        if len(errors) == 1:
            raise InstallError(f"download failed: {errors[0]}")
        raise InstallError("every source failed: " + "; ".join(errors))

    def _fetch_one(self, uri: str, source: Source, staging: Path) -> str:
        # One budget per attempt: the staging folder is emptied between attempts.
        budget = Budget(self.limits, self.backends_path)
        sha256 = source.sha256
        self.verified_by = ""
        self._require_signable(uri, source.verification)
        if uri.startswith(("file://", "/")):
            # Checked and read by its real path, so a link swapped in later is not
            # followed out of the local roots.
            path = self.policy.check_local_uri(uri)
            if path.is_dir():
                self._copy_folder(path, staging, budget)
            else:
                self._require_sha256(uri, sha256)
                self._fetch_tarball(path.as_uri(), sha256, staging, budget)
            return ""
        if uri.startswith(kits.SCHEME):
            return self._pull_layout(uri, staging, budget, source.verification)
        if looks_like_oci(uri):
            return self._pull(uri, staging, budget, source.verification)
        if uri.startswith(("http://", "https://")):
            self._require_sha256(uri, sha256)
            self._fetch_tarball(uri, sha256, staging, budget)
            return ""
        raise InstallError(
            f"unsupported source {uri!r} (OCI reference, http(s) or file URL)"
        )

    def _require_signable(
        self, uri: str, verification: VerificationPolicy | None
    ) -> None:
        """A gallery with a policy installs signed images only: a tarball or a folder
        carries no signature, so a gallery (or a mirror list) switching a build to
        one would install it unchecked, whatever sha256 it gives."""
        if verification is None or uri.startswith(kits.SCHEME):
            return
        if uri.startswith(("file://", "/")) or not looks_like_oci(uri):
            raise InstallError(
                f"{redact_uri(uri)}: not an image, so no signature can be checked "
                f"against the gallery's verification policy ({verification.describe()}); "
                "a gallery with a policy installs signed images only"
            )

    def _require_sha256(self, uri: str, sha256: str) -> None:
        if self.require_integrity and not sha256:
            raise InstallError(
                f"{redact_uri(uri)}: a tarball without a sha256 is refused "
                "(LOCALAI_ADMIN_REQUIRE_INTEGRITY is on)"
            )

    def _pull(
        self,
        uri: str,
        staging: Path,
        budget: Budget,
        verification: VerificationPolicy | None,
    ) -> str:
        self._require_policy(uri, verification)
        client = self.registry or oci.RegistryClient(policy=self.policy)
        image = client.resolve(uri, self.platform, watch=self.watch)
        self._verify(uri, client, image, verification)
        budget.check_disk(sum(layer.size for layer in image.layers))
        # pull_image extracts each layer itself; the budget reaches it this way.
        with extract.bounded(budget):
            pulled = oci.pull_image(
                uri,
                staging,
                client=client,
                platform=self.platform,
                progress=self.progress,
                watch=self.watch,
                resolved=image,
            )
        return pulled.digest

    def _require_policy(
        self, uri: str, verification: VerificationPolicy | None
    ) -> None:
        if verification is None and self.require_integrity:
            raise InstallError(
                f"{redact_uri(uri)}: an image from a gallery without a verification "
                "policy is refused (LOCALAI_ADMIN_REQUIRE_INTEGRITY is on)"
            )

    def _verify(
        self,
        uri: str,
        store: ArtifactStore,
        image: oci.ResolvedImage,
        verification: VerificationPolicy | None,
    ) -> None:
        """Check the image's signatures, from a registry or a kit, before any layer
        is read: nothing unverified reaches the disk."""
        if verification is None:
            return
        if self.progress:
            self.progress(oci.Progress("verifying signature", uri, 0, 0))
        self.verified_by = verify_image(
            store,
            image,
            verification,
            trust_root=self.sigstore_trust_root,
            watch=self.watch,
        )

    def _pull_layout(
        self,
        uri: str,
        staging: Path,
        budget: Budget,
        verification: VerificationPolicy | None,
    ) -> str:
        """Extract an image of an imported offline kit (``backends.core.kits``),
        verified as a registry's would be (its signatures travel in the kit)."""
        self._require_policy(uri, verification)
        folder, digest = kits.parse_layout_uri(uri)
        layout = kits.Layout(self.policy.check_local(folder, uri))
        image = layout.resolve(digest, self.platform or oci.Platform.host())
        self._verify(uri, layout, image, verification)
        total = sum(layer.size for layer in image.layers)
        budget.check_disk(total)
        done = 0
        for number, layer in enumerate(image.layers, 1):
            self._check_cancel()
            extract.extract_layer(
                layout.iter_blob(layer),
                staging,
                on_piece=self._check_cancel,
                budget=budget,
            )
            done += layer.size
            if self.progress:
                label = f"layer {number}/{len(image.layers)} {layer.digest[:19]}"
                self.progress(oci.Progress("extracting", label, done, total))
        return image.digest

    def _copy_folder(self, folder: Path, staging: Path, budget: Budget) -> None:
        """Copy ``folder`` into ``staging`` within the limits, without recursion.

        Links are copied as links (nothing is followed out of the folder); the
        extraction rules on link targets do not apply to a folder the admin chose, but
        the bounds do, and anything but files, folders and links (a device would
        read forever, a FIFO block) is refused.
        """
        pending = [""]
        while pending:
            self._check_cancel()
            rel = pending.pop()
            with os.scandir(folder / rel) as entries:
                listing = list(entries)
            for entry in listing:
                child = f"{rel}/{entry.name}" if rel else entry.name
                if problem := self.limits.path_problem(child):
                    raise InstallError(
                        f"refusing {shown(child)} in {folder}: {problem}"
                    )
                target = staging / child
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), target)
                elif entry.is_dir(follow_symlinks=False):
                    target.mkdir(mode=0o755)
                    pending.append(child)
                elif entry.is_file(follow_symlinks=False):
                    self._copy_file(Path(entry.path), target, budget)
                else:
                    raise InstallError(
                        f"refusing {shown(child)} in {folder}: not a file, folder or link"
                    )

    def _copy_file(self, source: Path, target: Path, budget: Budget) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        with (
            open(os.open(source, flags), "rb") as src,
            open(target, "xb") as out,
        ):
            while data := src.read(CHUNK):
                self._check_cancel()
                budget.charge(len(data))
                out.write(data)
        shutil.copystat(source, target, follow_symlinks=False)

    def _fetch_tarball(
        self, uri: str, sha256: str, staging: Path, budget: Budget
    ) -> None:
        # The download is a file on the same disk: bounded like the extraction, by a
        # budget of its own (it is deleted once extracted).
        download = Budget(self.limits, self.backends_path, "the download")
        with tempfile.NamedTemporaryFile(
            dir=self.backends_path, prefix=DOWNLOAD_PREFIX
        ) as tmp:
            digest = hashlib.sha256()
            if uri.startswith("file://"):
                path = Path(unquote(urlsplit(uri).path))
                with path.open("rb") as src:
                    self._copy_stream(
                        iter(lambda: src.read(CHUNK), b""),
                        tmp,
                        digest,
                        path.stat().st_size,
                        uri,
                        download,
                    )
            else:
                with (
                    nullcontext(self.http)
                    if self.http
                    else httpx.Client(
                        transport=self.policy.transport(verify=oci.tls_context()),
                        follow_redirects=True,
                        timeout=60,
                    )
                ) as client:
                    self._download(client, uri, tmp, digest, download)
            if sha256 and digest.hexdigest() != sha256.lower():
                raise InstallError(
                    f"sha256 mismatch for {uri}: expected {sha256}, got {digest.hexdigest()}"
                )
            tmp.flush()
            extract.extract_tarball(
                Path(tmp.name), staging, budget=budget, on_piece=self._check_cancel
            )

    def _download(
        self,
        client: httpx.Client,
        uri: str,
        out: IO[bytes],
        digest: hashlib._Hash,
        budget: Budget,
    ) -> None:
        watch = self.watch
        request = client.build_request(
            "GET", uri, timeout=watch.timeout, extensions=watch.extensions
        )
        try:
            # Headers and body are waited for in a helper thread, so this one keeps
            # checking for a cancel whatever the server does.
            response = watch.call(lambda: client.send(request, stream=True))
        except httpx.TimeoutException:
            raise stalled(uri, watch.stall_seconds) from None
        with closing(response):
            if response.status_code >= 400:
                raise InstallError(f"{uri} answered HTTP {response.status_code}")
            total = int(response.headers.get("Content-Length") or 0)
            budget.check_disk(total)
            # Closed before the response, whatever happens: the helper must be done.
            with closing(watch.pump(watch.read(response), response)) as chunks:
                self._copy_stream(chunks, out, digest, total, uri, budget)

    def _copy_stream(
        self,
        chunks: Iterable[bytes],
        out: IO[bytes],
        digest: hashlib._Hash,
        total: int,
        label: str,
        budget: Budget,
    ) -> None:
        done = 0
        for chunk in chunks:
            self._check_cancel()
            budget.charge(len(chunk))
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if self.progress:
                self.progress(oci.Progress("downloading", label, done, total))

    def _check_cancel(self) -> None:
        self.watch.check()

    # -- delete --------------------------------------------------------------------

    def delete(self, requested: str, system_path: Path | None = None) -> list[str]:
        """Remove a backend; returns the folders removed.

        ``requested`` may be a folder name, a metadata name, ``gallery@name`` or an alias.
        Deleting a meta removes the concrete build it points to too, unless another
        installed meta still uses that build. Nothing outside the backends folder is
        ever removed, whatever the metadata files say.
        """
        removed = []
        for folder in self.plan_delete(requested, system_path):
            removed.append(self._remove(folder))
            # Its kept versions go with it: a rollback needs the backend installed.
            self.versions.prune(folder.name, 0)
        return removed

    def plan_delete(
        self,
        requested: str,
        system_path: Path | None = None,
        on_disk: Mapping[str, DiskBackend] | None = None,
    ) -> list[Path]:
        """The folders ``delete(requested)`` removes, for a confirmation screen.
        ``on_disk``: the installed folders (``installed.folders``) when the caller has
        read them for the same request."""
        name = requested.rpartition("@")[2]
        if on_disk is None:
            on_disk = folders(self.backends_path, system_path)
        rows = with_aliases(on_disk)
        folder = self._find_folder(name, rows)
        if folder is None:
            if name in rows and rows[name].is_system:
                raise InstallError(f"system backend {name!r} cannot be deleted")
            raise NotFoundError(f"backend {name!r} is not installed")
        plan = [folder]
        meta = next(
            (r for r in on_disk.values() if r.is_meta and r.folder == folder), None
        )
        build = pointer(meta) if meta is not None else ""
        if build:
            users = [
                row
                for row in on_disk.values()
                if row.is_meta and row.folder != folder and pointer(row) == build
            ]
            target = self.backends_path / build
            if not users and target.is_dir():
                plan.append(target)
        return plan

    def _find_folder(self, name: str, rows: dict[str, DiskBackend]) -> Path | None:
        # The folder of that name first (a meta and an alias may share a name), then a
        # folder whose metadata carries the name, then what an alias stands for.
        direct = self.backends_path / name
        if direct.is_dir() and not direct.is_symlink():
            return direct
        for row in rows.values():
            if (
                row.folder
                and not row.is_system
                and row.metadata
                and row.metadata.name == name
            ):
                return row.folder
        named = rows.get(name)
        if named and named.folder and not named.is_system:
            return named.folder
        return None

    def _remove(self, folder: Path) -> str:
        root = self.backends_path.resolve()
        resolved = folder.resolve()
        if folder.is_symlink() or resolved.parent != root:
            raise InstallError(
                f"refusing to delete {folder}: it is not a folder of {root}"
            )
        remove_tree(resolved)
        return resolved.name


def _discard(folder: Path) -> None:
    """Remove a working folder where a failure must not stop what is under way (the
    error of the install, the recovery of the other folders); it is logged."""
    try:
        remove_tree(folder)
    except OSError as exc:
        log.warning("could not remove %s: %s", folder, exc)
