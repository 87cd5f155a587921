"""Starting, cancelling and retrying jobs: the rules every entry point shares.

The dashboard, the JSON API, the management commands and the node routes call these
functions and only translate their answers (a Job, or ``Refused`` with an HTTP status)
into a page, a JSON body or a command error.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from django.conf import settings

from backends.core import resolve
from backends.core.gallery import validate_backend_id, validate_name
from backends.core.install import build_folder, pointer
from backends.core.installed import DiskBackend
from backends.core.policy import SourceRefused, is_local_source
from backends.core.redact import redact_uri
from backends.core.sources import SourceKind, classify, default_name
from backends.models import GalleryBackend, InstalledBackend, Job, JobConflict, Node
from backends.services import audit, catalogue, dispatch, pipeline, usage
from backends.services.audit import Actor

P = ParamSpec("P")
R = TypeVar("R")


class Refused(Exception):
    """A request that starts no job. ``status`` is the HTTP status that says why;
    ``code`` and ``extra`` go into the JSON answer for scripts that branch on them."""

    def __init__(
        self, status: int, message: str, *, code: str = "", **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


# Set while an audited use case runs: one it calls (install_external calling install)
# is part of the same request and is not recorded twice.
_auditing = contextvars.ContextVar("auditing", default=False)


def audited(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record the use case in the audit log: started (with its job), done, or refused
    with the reason. Reads ``actor`` and ``requested_by`` from the call's keywords and
    the target from its first argument (a name, a URI, or the Job acted on)."""

    def decorator(use_case: Callable[P, R]) -> Callable[P, R]:
        names_requester = "requested_by" in inspect.signature(use_case).parameters

        @wraps(use_case)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _auditing.get():
                return use_case(*args, **kwargs)
            given = kwargs.get("actor")
            actor = (
                given
                if isinstance(given, Actor)
                else audit.current_actor(str(kwargs.get("requested_by") or ""))
            )
            if names_requester and not kwargs.get("requested_by") and actor.username:
                kwargs["requested_by"] = actor.username
            subject = args[0] if args else ""
            acted_on = subject if isinstance(subject, Job) else None
            target = f"{acted_on.kind} {acted_on.target}" if acted_on else str(subject)
            node = kwargs.get("node")
            where = (
                node
                if isinstance(node, Node)
                else (acted_on.node if acted_on else None)
            )
            flag = _auditing.set(True)
            try:
                result = use_case(*args, **kwargs)
            except Refused as exc:
                audit.record(
                    actor, action, target, "refused", reason=str(exc), node=where
                )
                raise
            finally:
                _auditing.reset(flag)
            if isinstance(result, Job):
                audit.record(actor, action, target, "started", job=result, node=where)
            elif result is False:
                reason = f"job is {acted_on.state}" if acted_on else ""
                audit.record(
                    actor, action, target, "refused", reason=reason, job=acted_on
                )
            else:
                audit.record(actor, action, target, "done", job=acted_on, node=where)
            return result

        return wrapper

    return decorator


def start(
    kind: str,
    target: str,
    *,
    node: Node | None = None,
    queue: bool = True,
    **fields: Any,
) -> Job:
    """Open a job (or get the active one doing the same) and queue it once committed.

    ``queue=False`` leaves it for the caller to run in the foreground (the commands).
    """
    try:
        job, created = Job.objects.open(kind, target, node=node, **fields)
    except JobConflict as exc:
        raise _busy(kind, target, exc.active) from None
    if created and queue:
        dispatch.enqueue_on_commit(job)
    return job


def _busy(kind: str, target: str, active: Job) -> Refused:
    """The 409 for work on a folder another job is changing: says which job, and what to
    do about it, since the two names may differ (a meta and its build share a folder)."""
    name, busy = redact_uri(target), redact_uri(active.target)
    same = "" if name == busy else f" (it changes the folder of {name} too)"
    article = "a" if active.kind == Job.Kind.DELETE else "an"
    return Refused(
        409,
        f"cannot {kind} {name} now: {article} {active.kind} of {busy} is "
        f"{active.state}{same}; wait for it to finish or cancel it (job {active.pk})",
        code="backend_busy",
        job_id=str(active.pk),
    )


def _folder_key(name: str, disk: dict[str, DiskBackend]) -> str:
    """The lock a job on ``name`` takes on this host: the folder it changes.

    A meta folder only ever changes together with its build (an upgrade replaces the
    build, a delete removes both, a reinstall rewrites both), so every job reaching a
    build, by its name, an alias or a meta pointing at it, locks the build's folder:
    one lock per folder, whatever name reached it.
    """
    row = disk.get(name)
    return name if row is None else build_folder(row)


def _gallery_key(entry: GalleryBackend) -> str:
    """The folder a gallery install changes here: the build a meta resolves to."""
    disk = catalogue.local_disk()
    if entry.name in disk:
        return _folder_key(entry.name, disk)
    if not entry.is_meta:
        return entry.name
    node = Node.objects.local()
    try:
        _, build = resolve.pick_build(
            entry, catalogue.builds_of(entry), node.current_capability()
        )
    except resolve.NoBuildError:
        return entry.name  # the job fails at once with the resolver's reason
    return build.name


def _check_id(value: str) -> str:
    try:
        return validate_backend_id(value)
    except ValueError as exc:
        raise Refused(400, str(exc)) from None


def _gallery_entry(target: str) -> GalleryBackend:
    entry = GalleryBackend.objects.find(_check_id(target))
    if entry is None:
        raise Refused(404, f'no backend found with name "{target}"')
    return entry


# -- installs --------------------------------------------------------------------------


@audited("install")
def install(
    target: str,
    *,
    force: bool = False,
    requested_by: str = "",
    node: Node | None = None,
    queue: bool = True,
    actor: Actor | None = None,
) -> Job:
    """Install a gallery backend.

    On a chosen ``node``: that node must take work and be able to run it. Otherwise,
    single node: this host; distributed mode: the fan-out guard, then a parent job with
    a part per agent, each resolving its own build.
    """
    if node is not None:
        return _install_on(node, target, force=force, requested_by=requested_by)
    if settings.DISTRIBUTED and queue:
        return _fan_out_install(target, force=force, requested_by=requested_by)
    entry = _gallery_entry(target)
    return start(
        Job.Kind.INSTALL,
        _check_id(target),
        force=force,
        requested_by=requested_by,
        dedup_key=_gallery_key(entry),
        queue=queue,
    )


def _install_on(node: Node, target: str, *, force: bool, requested_by: str) -> Job:
    _check_takes_work(node)
    entry = _gallery_entry(target)
    if not force and (problem := catalogue.why_not_runnable(entry, node)):
        raise Refused(
            409,
            f"{entry.name} does not run on {node.name}: {problem}",
            code="not_runnable_here",
        )
    return start(
        Job.Kind.INSTALL,
        entry.id_in_gallery,
        node=node,
        force=force,
        requested_by=requested_by,
        dedup_key=entry.name,
    )


def _check_takes_work(node: Node) -> None:
    if reason := node.why_no_work():
        raise Refused(409, reason, code="node_takes_no_work")


def fan_out_refusal(entry: GalleryBackend) -> Refused | None:
    """The 409 refusing to send a hardware-specific build to every node, or None."""
    if entry.is_meta:
        return None
    alternative = catalogue.meta_offering(entry.name)
    message = (
        f"Backend {entry.name!r} is a hardware-specific build and would not run correctly "
        "on every node of this cluster. Install it on chosen nodes instead: "
        f'POST /api/nodes/{{node_id}}/backends/install {{"backend": "{entry.name}"}}.'
    )
    if alternative:
        message += (
            f" To install on every node, use the auto-resolving backend {alternative!r}: "
            "each node picks the build for its own hardware."
        )
    return Refused(
        409,
        message,
        code="concrete_backend_requires_target",
        meta_alternative=alternative,
    )


def _fan_out_install(target: str, *, force: bool, requested_by: str) -> Job:
    entry = _gallery_entry(target)
    if (refusal := fan_out_refusal(entry)) is not None:
        raise refusal
    try:
        return dispatch.fan_out(
            Job.Kind.INSTALL,
            _check_id(target),
            dedup_key=entry.name,
            force=force,
            requested_by=requested_by,
        )
    except dispatch.NoNodes as exc:
        raise Refused(409, str(exc), code="no_online_node") from None


@dataclass(frozen=True)
class ExternalSource:
    """An install-external request, checked: where from, and the folder it goes to."""

    uri: str
    name: str
    alias: str
    folder: str


def check_external(
    uri: str, name: str = "", alias: str = "", *, here: bool = True
) -> ExternalSource | str:
    """Check an external install request; a bare gallery name comes back as a str.

    LocalAI reads a URI that is neither a URL, an image reference nor a local path as a
    gallery backend name; so do we. ``here`` is False for an agent's install: a path is
    looked up on that agent's disk, not this one's.
    """
    try:
        if name:
            validate_name(name)
        if alias:
            validate_name(alias, "alias")
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    if is_local_source(uri):
        # Before anything looks at the path, so the answer cannot tell whether a path
        # outside the local roots exists. Remote addresses are checked on connection.
        try:
            pipeline.source_policy().check_local_uri(uri)
        except SourceRefused as exc:
            raise Refused(400, str(exc), code="source_refused") from None
    kind = classify(uri)
    if kind == SourceKind.NAME:
        if name or alias:
            raise Refused(
                400, "specifying a name or alias is not supported for gallery backends"
            )
        return _check_id(uri)
    if kind == SourceKind.PATH and here:
        raise Refused(400, f"{redact_uri(uri)} is not a folder on this host")
    _check_integrity(uri, kind, here)
    if not name:
        if kind == SourceKind.OCI:
            raise Refused(400, "specifying a name is required for OCI images")
        if kind == SourceKind.URL:
            raise Refused(400, "specifying a name is required for downloads")
    folder = name or default_name(uri)
    try:
        validate_name(folder, "name derived from the URI")
    except ValueError as exc:
        raise Refused(400, str(exc)) from None
    return ExternalSource(uri, name, alias, folder)


def _check_integrity(uri: str, kind: SourceKind, here: bool) -> None:
    """Strict integrity refuses, before a job is queued, what an external install can
    never prove: an image has no gallery policy, a download no sha256. A local folder
    is the admin's own and stays allowed."""
    if not settings.LOCALAI_ADMIN_REQUIRE_INTEGRITY:
        return
    tarball = kind == SourceKind.URL or (
        kind == SourceKind.FILE
        and here
        and not pipeline.source_policy().check_local_uri(uri).is_dir()
    )
    if kind == SourceKind.OCI or tarball:
        what = (
            "an image without a gallery's verification policy"
            if kind == SourceKind.OCI
            else "a tarball without a sha256"
        )
        raise Refused(
            400,
            f"{redact_uri(uri)}: {what} is refused (LOCALAI_ADMIN_REQUIRE_INTEGRITY is on)",
            code="integrity_required",
        )


@audited("install_external")
def install_external(
    uri: str,
    *,
    name: str = "",
    alias: str = "",
    force: bool = False,
    requested_by: str = "",
    node: Node | None = None,
    queue: bool = True,
    actor: Actor | None = None,
) -> Job:
    """Install from an OCI image, a download, or a local folder (or a gallery name)."""
    source = check_external(uri, name, alias, here=node is None or node.is_local)
    if isinstance(source, str):
        if node is None:
            entry = _gallery_entry(source)
            return start(
                Job.Kind.INSTALL,
                source,
                force=force,
                requested_by=requested_by,
                dedup_key=_gallery_key(entry),
                queue=queue,
            )
        return install(source, force=force, requested_by=requested_by, node=node)
    if node is not None:
        _check_takes_work(node)
        if not name:
            raise Refused(
                400, "specifying a name is required for a uri install on a node"
            )
    return start(
        Job.Kind.INSTALL,
        source.name or uri,
        node=node,
        force=force,
        requested_by=requested_by,
        dedup_key=source.folder or uri,
        external_uri=uri,
        external_name=source.name,
        external_alias=source.alias,
        queue=queue,
    )


# -- installed backends: upgrade, reinstall, delete ------------------------------------


def installed_here(
    name: str, folders: Mapping[str, DiskBackend] | None = None
) -> DiskBackend:
    """A backend installed on this host, by its own name or an alias; 404 if not.
    ``folders``: ``catalogue.installed_folders()`` when the caller has read them."""
    bare = _check_id(name).rpartition("@")[2]
    if folders is None:
        folders = catalogue.installed_folders()
    row = folders.get(bare) or catalogue.local_disk(folders=folders).get(bare)
    if row is None:
        raise Refused(404, f"backend {bare!r} is not installed")
    return row


def _installed_job(
    kind: str,
    name: str,
    *,
    node: Node | None,
    requested_by: str,
    queue: bool = True,
    row: DiskBackend | None = None,
    **fields: Any,
) -> Job:
    """A job on an installed backend. ``row``: the backend on this host's disk, when
    the caller has read it already (the disk is read once per request)."""
    verbs: dict[str, str] = {
        Job.Kind.DELETE: "deleted",
        Job.Kind.UPGRADE: "upgraded",
        Job.Kind.ROLLBACK: "rolled back",
    }
    verb = verbs.get(kind, "reinstalled")
    if node is None or node.is_local:
        row = row or installed_here(name)
        bare = row.name
        if row.is_system:
            raise Refused(409, f"system backend {bare!r} cannot be {verb}")
        if node is not None:
            _check_takes_work(node)
        build = pointer(row)
        key = build_folder(row)
    else:
        _check_takes_work(node)
        bare = _check_id(name).rpartition("@")[2]
        record = InstalledBackend.objects.filter(node=node, name=bare).first() or (
            InstalledBackend.objects.filter(node=node, alias=bare).first()
        )
        if record is None:
            raise Refused(404, f"backend {bare!r} is not installed on node {node.name}")
        if record.is_system:
            raise Refused(409, f"system backend {bare!r} cannot be {verb}")
        build = record.meta_backend_for if record.is_meta else ""
        # The agent's disk is not readable from here: its table says where a meta points.
        key = record.meta_backend_for or record.name
        try:
            key = validate_name(key)
        except ValueError:
            key = record.name
    if kind == Job.Kind.UPGRADE and not fields.get("force"):
        held = pinned_builds(node or Node.objects.local()) & {bare, build}
        if held:
            raise Refused(
                409,
                f"{bare} is pinned ({', '.join(sorted(held))}): unpin it, or upgrade "
                "with force",
                code="pinned",
            )
    return start(
        kind,
        bare,
        node=node,
        requested_by=requested_by,
        dedup_key=key,
        queue=queue,
        **fields,
    )


@audited("upgrade")
def upgrade(
    name: str,
    *,
    force: bool = False,
    requested_by: str = "",
    node: Node | None = None,
    queue: bool = True,
    actor: Actor | None = None,
) -> Job:
    """Upgrade an installed backend; a pinned one only with ``force``."""
    return _installed_job(
        Job.Kind.UPGRADE,
        name,
        node=node,
        requested_by=requested_by,
        queue=queue,
        force=force,
    )


def pinned_builds(node: Node) -> set[str]:
    """The names a pin holds on ``node``: each pinned backend, and the build a pinned
    meta points at (upgrading that build would change what the meta runs)."""
    rows = InstalledBackend.objects.filter(node=node, pinned=True).values_list(
        "name", "meta_backend_for"
    )
    return {name for pair in rows for name in pair if name}


@audited("rollback")
def rollback(
    name: str,
    version: str,
    *,
    requested_by: str = "",
    queue: bool = True,
    actor: Actor | None = None,
) -> Job:
    """Put a kept version of a backend of this host back in place (a job)."""
    return _installed_job(
        Job.Kind.ROLLBACK,
        name,
        node=None,
        requested_by=requested_by,
        queue=queue,
        version_ref=version,
    )


@audited("delete")
def delete(
    name: str,
    *,
    requested_by: str = "",
    node: Node | None = None,
    queue: bool = True,
    force: bool = False,
    actor: Actor | None = None,
    folders: Mapping[str, DiskBackend] | None = None,
) -> Job:
    """Delete an installed backend; refused (409 ``backend_in_use``) while a model of
    that node's LocalAI uses a folder it removes, unless ``force``: this host's models
    folder is read here, an agent's as it last reported it. ``folders``:
    ``catalogue.installed_folders()`` when the caller has read them."""
    row: DiskBackend | None = None
    reason = ""
    models: list[str] = []
    if node is None or node.is_local:
        # This host's folders, read once for the backend and the models' check.
        if folders is None:
            folders = catalogue.installed_folders()
        row = installed_here(name, folders)
        if not force:
            reason, models = usage.in_use_refusal(row.name, folders)
    elif not force:
        reason, models = usage.node_in_use_refusal(node, name)
    if models:
        raise Refused(409, reason, code="backend_in_use", models=models)
    return _installed_job(
        Job.Kind.DELETE,
        name,
        node=node,
        requested_by=requested_by,
        queue=queue,
        row=row,
        force=force,
    )


def reinstall_source(
    name: str, folders: Mapping[str, DiskBackend] | None = None
) -> str:
    """The URI a reinstall of ``name`` fetches again, or "" for a gallery backend.

    A backend installed from a URI (not from a gallery) is not in any gallery: it comes
    back from where it came. The table keeps that URI whole; ``metadata.json`` holds it
    redacted, so it is only the fallback for a row not reconciled yet. ``folders``:
    ``catalogue.installed_folders()`` when the caller has read them.
    """
    return _reinstall_source(installed_here(name, folders))


def _reinstall_source(row: DiskBackend) -> str:
    if row.metadata is None or row.metadata.gallery_url or row.is_meta:
        return ""
    record = InstalledBackend.objects.filter(
        node=Node.objects.local(), name=row.name
    ).first()
    return (record.uri if record else "") or row.metadata.uri


@audited("reinstall")
def reinstall(
    name: str,
    *,
    requested_by: str = "",
    actor: Actor | None = None,
    folders: Mapping[str, DiskBackend] | None = None,
) -> Job:
    """Install an installed backend again, over itself (the Installed page's button):
    from its gallery, or from the URI it was installed from. ``folders``:
    ``catalogue.installed_folders()`` when the caller has read them."""
    row = installed_here(name, folders)
    source: dict[str, Any] = {}
    if uri := _reinstall_source(row):
        name = row.name
        alias = row.metadata.alias if row.metadata else ""
        source = {"external_uri": uri, "external_name": name, "external_alias": alias}
    return _installed_job(
        Job.Kind.INSTALL,
        name,
        node=None,
        requested_by=requested_by,
        row=row,
        force=True,
        **source,
    )


def upgrade_all(
    *, requested_by: str = "", actor: Actor | None = None
) -> tuple[list[str], list[str]]:
    """Upgrade every backend of this host flagged upgradable, but the pinned ones;
    (started, refused)."""
    node = Node.objects.local()
    names = (
        InstalledBackend.objects.filter(
            node=node, upgrade_available=True, is_system=False
        )
        .exclude(name__in=pinned_builds(node))
        .order_by("name")
        .values_list("name", flat=True)
    )
    started, refused = [], []
    for name in names:
        try:
            # Each upgrade is its own audit event, refusals included.
            upgrade(name, requested_by=requested_by, actor=actor)
        except Refused as exc:
            refused.append(f"{name}: {exc}")
        else:
            started.append(name)
    return started, refused


# -- a job's life ----------------------------------------------------------------------


@audited("cancel")
def cancel(job: Job, *, actor: Actor | None = None) -> bool:
    """Cancel a queued job now, or ask a running one to stop; False if too late.

    A fanned-out job cancels every part, then settles on what its parts became.
    """
    children = list(job.children.select_related("node"))
    if children:
        asked = [cancel(child) for child in children]
        Job.objects.settle_parent(job.pk)
        job.refresh_from_db()
        return any(asked)
    if job.cancel_if_queued():
        dispatch.revoke(job)
        return True
    return job.ask_to_stop()


@audited("retry")
def retry(job: Job, *, requested_by: str = "", actor: Actor | None = None) -> Job:
    """The same work again; a fanned-out job goes to every agent taking work now."""
    if job.state not in (Job.State.FAILED, Job.State.CANCELLED):
        raise Refused(
            409,
            f"only failed or cancelled jobs can be retried (this one is {job.state})",
        )
    requested_by = requested_by or job.requested_by
    if job.node_id is None and settings.DISTRIBUTED and job.children.exists():
        try:
            return dispatch.fan_out(
                job.kind,
                job.target,
                dedup_key=job.dedup_key,
                force=job.force,
                requested_by=requested_by,
            )
        except dispatch.NoNodes as exc:
            raise Refused(409, str(exc), code="no_online_node") from None
    return start(
        job.kind,
        job.target,
        node=job.node,
        force=job.force,
        requested_by=requested_by,
        dedup_key=job.dedup_key,
        external_uri=job.external_uri,
        external_name=job.external_name,
        external_alias=job.external_alias,
        version_ref=job.version_ref,
    )
