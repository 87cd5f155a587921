"""The dashboard: one view per page, answering the full page or, for htmx, its fragment.

Reading is for every signed-in user; every mutation is a POST for staff. The disk is the
truth about what is installed, so each request reads it once (``local_disk``) and the
rows are built from that snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.utils.text import slugify
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HTMX_STOP_POLLING, trigger_client_event

from backends import tasks
from backends.api.http import HtmxHttpRequest
from backends.core import gallery as gallery_format
from backends.core import installed, resolve
from backends.core.install import Installer, InstallError, NotFoundError
from backends.models import (
    Gallery,
    GalleryBackend,
    InstalledBackend,
    Job,
    JobConflict,
    Node,
)
from backends.services import nodes
from backends.services.catalogue import known_backends, local_disk
from backends.web.forms import (
    CatalogueQueryForm,
    InstallForm,
    JobHistoryForm,
    KnownFilterForm,
    NodeInstallForm,
)

PAGE_SIZE = 50
HISTORY_PAGE_SIZE = 25

View = Callable[..., HttpResponse]


# --- access and rendering ----------------------------------------------------------------


def staff_required(view: View) -> View:
    """Staff only: anonymous users are sent to log in, signed-in non-staff get 403.

    Django's ``staff_member_required`` sends non-staff to the admin login page, which
    sends a signed-in user back again: a loop instead of an answer.
    """

    @login_required
    @wraps(view)
    def wrapper(request: HtmxHttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied("Only staff members can change backends.")
        return view(request, *args, **kwargs)

    return wrapper


def _wants_fragment(request: HtmxHttpRequest) -> bool:
    # After a history cache miss htmx asks again with HX-Request set: that needs the page.
    return bool(request.htmx) and not request.htmx.history_restore_request


def _render(
    request: HtmxHttpRequest,
    page: str,
    context: dict[str, Any],
    *,
    fragment: str = "",
    fragment_status: int = 200,
) -> HttpResponse:
    """Render ``page``, or ``fragment`` (a partial or a partials/ file) for htmx."""
    if fragment and _wants_fragment(request):
        response = render(request, fragment, context, status=fragment_status)
        _append_messages(request, response)
    else:
        response = render(request, page, context)
    # One URL answers a page or a fragment: caches must tell them apart.
    patch_vary_headers(response, ("HX-Request",))
    return response


def _append_messages(request: HtmxHttpRequest, response: HttpResponse) -> None:
    """Send flash messages out of band with a fragment, so they show whatever was swapped.

    Only when there is news: an empty block would wipe messages already on screen, and
    pollers answer every second.
    """
    if len(messages.get_messages(request)):
        html = render_to_string(
            "backends/partials/_messages.html", {"oob": True}, request
        )
        response.write(html)


def _start_job(
    request: HtmxHttpRequest, kind: str, target: str, **fields: Any
) -> Job | None:
    """Start a job (or get the one already doing it); None, with a message, on conflict."""
    try:
        return Job.objects.start(
            kind, target, requested_by=request.user.get_username(), **fields
        )
    except JobConflict as exc:
        messages.error(request, f"Not started: {exc}.")
        return None


# --- catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """The fields of a gallery entry the catalogue shows and resolves with.

    Read with ``values_list``: building 1,028 model instances, and decoding JSON the
    page never uses (every build inherits its meta's capabilities map through YAML
    merge keys), was most of the page's time. Fits ``resolve.Candidate``.
    """

    gallery: str
    name: str
    alias: str
    description: str
    uri: str
    tags: list[str]
    is_meta: bool
    capabilities: dict[str, str]

    @property
    def id_in_gallery(self) -> str:
        return f"{self.gallery}@{self.name}"


def _entries(entries: QuerySet[GalleryBackend]) -> list[Entry]:
    """Light entries; only metas carry their capabilities map (nothing reads a build's)."""
    maps = dict(entries.filter(is_meta=True).values_list("pk", "capabilities"))
    fields = (
        "pk",
        "gallery__name",
        "name",
        "alias",
        "description",
        "uri",
        "tags",
        "is_meta",
    )
    return [
        Entry(*values, maps.get(pk, {})) for pk, *values in entries.values_list(*fields)
    ]


@dataclass
class EntryRow:
    """A catalogue entry as this node sees it."""

    entry: Entry
    installed: bool
    resolution: resolve.Resolution | None = None
    problem: str = ""  # why it cannot run here; "" when it can
    job: Job | None = None
    # Distributed mode: the agents that have it installed.
    on_nodes: list[str] = field(default_factory=list)

    @property
    def runs_here(self) -> bool:
        return not self.problem

    @property
    def can_install(self) -> bool:
        # A meta with no build here has nothing to install; a concrete build can be
        # installed anyway (the folder is shared with other hosts in some setups).
        return not (self.entry.is_meta and self.resolution is None)


def _active_jobs(jobs: Iterable[Job] | None = None) -> dict[str, Job]:
    """Active jobs by the lower-cased backend name they work on (their dedup key)."""
    if jobs is None:
        jobs = Job.objects.active().order_by("created_at")
    found: dict[str, Job] = {}
    for job in jobs:
        key = job.dedup_key or job.target.rpartition("@")[2].lower()
        found.setdefault(key, job)
    return found


def _concretes_by_name(entries: Iterable[Entry]) -> dict[str, Entry]:
    # Case-insensitive, first gallery wins: the lookup LocalAI uses for a meta's builds.
    found: dict[str, Entry] = {}
    for entry in entries:
        if not entry.is_meta:
            found.setdefault(entry.name.lower(), entry)
    return found


def _describe(
    entry: Entry,
    capability: str,
    concretes: Mapping[str, Entry],
    on_disk: Mapping[str, installed.DiskBackend],
    jobs: Mapping[str, Job],
    on_nodes: Mapping[str, list[str]] | None = None,
) -> EntryRow:
    row = EntryRow(entry, installed=entry.name in on_disk)
    row.job = jobs.get(entry.name.lower())
    row.on_nodes = (on_nodes or {}).get(entry.name, [])
    if entry.is_meta:
        builds = [
            build
            for target in entry.capabilities.values()
            if (build := concretes.get(target.lower())) is not None
        ]
        try:
            row.resolution, _build = resolve.pick_build(entry, builds, capability)
        except resolve.NoBuildError as exc:
            row.problem = str(exc)
    else:
        row.problem = resolve.why_incompatible(entry.name, entry.uri, capability)
    return row


def _installed_on_agents() -> dict[str, list[str]]:
    """Distributed mode: backend name -> the agent nodes that have it installed."""
    found: dict[str, list[str]] = {}
    if settings.DISTRIBUTED:
        rows = InstalledBackend.objects.filter(node__is_local=False).order_by(
            "node__name"
        )
        for name, node_name in rows.values_list("name", "node__name"):
            found.setdefault(name, []).append(node_name)
    return found


def _search_text(entry: Entry) -> str:
    return " ".join([entry.name, entry.alias, entry.description, *entry.tags]).lower()


def _filter(entries: list[Entry], form: CatalogueQueryForm) -> list[Entry]:
    words = form.value("q", "").lower().split()
    gallery = form.value("gallery")
    tag = form.value("tag")
    if words:
        entries = [e for e in entries if all(w in _search_text(e) for w in words)]
    if gallery:
        entries = [e for e in entries if e.gallery == gallery]
    if tag:
        entries = [e for e in entries if tag in (t.lower() for t in e.tags)]
    return entries


def _sort(
    entries: list[Entry], sort: str, on_disk: Mapping[str, object]
) -> list[Entry]:
    if sort == "name":
        entries.sort(key=lambda e: e.name.lower())
    elif sort == "-name":
        entries.sort(key=lambda e: e.name.lower(), reverse=True)
    elif sort == "installed":
        entries.sort(key=lambda e: (e.name not in on_disk, e.name.lower()))
    return entries  # "gallery": the order the galleries list them in


def _tags(entries: Iterable[Entry]) -> list[str]:
    return sorted({tag.lower() for entry in entries for tag in entry.tags})


def _tag_link_query(request: HtmxHttpRequest) -> str:
    """The current query minus tag and page: tag links keep the other filters."""
    query = request.GET.copy()
    query.pop("tag", None)
    query.pop("page", None)
    return query.urlencode()


@login_required
def catalogue(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    capability = node.current_capability()
    entries = _entries(GalleryBackend.objects.enabled())
    galleries = Gallery.objects.filter(enabled=True).values_list("name", flat=True)
    form = CatalogueQueryForm(request.GET, galleries=galleries)
    form.is_valid()

    on_disk = local_disk(capability)
    concretes = _concretes_by_name(entries)
    jobs = _active_jobs()
    on_nodes = _installed_on_agents()

    def describe(entry: Entry) -> EntryRow:
        return _describe(entry, capability, concretes, on_disk, jobs, on_nodes)

    shown = _sort(_filter(entries, form), form.value("sort", "name"), on_disk)
    number = form.value("page", 1)
    if form.value("runs_here"):
        # Only a described row knows whether it runs here: describe every match.
        rows = [row for row in map(describe, shown) if row.runs_here]
        page = Paginator(rows, PAGE_SIZE).get_page(number)
    else:
        page = Paginator(shown, PAGE_SIZE).get_page(number)
        page.object_list = [describe(entry) for entry in page.object_list]
    context = {
        "form": form,
        "page": page,
        "node": node,
        "total": len(entries),
        "tags": _tags(entries),
        "tag_query": _tag_link_query(request),
        "catalogue_url": reverse("backends:catalogue"),
        "distributed": settings.DISTRIBUTED,
    }
    return _render(
        request,
        "backends/catalogue.html",
        context,
        fragment="backends/catalogue.html#catalogue-rows",
    )


def _get_entry(gallery: str, name: str) -> GalleryBackend:
    return get_object_or_404(
        GalleryBackend.objects.enabled().select_related("gallery"),
        gallery__name=gallery,
        name=name,
    )


def _describe_one(
    entry: GalleryBackend,
    capability: str,
    on_disk: Mapping[str, installed.DiskBackend],
    jobs: Mapping[str, Job],
    on_nodes: Mapping[str, list[str]] | None = None,
) -> EntryRow:
    """One entry described on its own, reading only the builds a meta can pick."""
    (light,) = _entries(GalleryBackend.objects.filter(pk=entry.pk))
    builds = GalleryBackend.objects.enabled().filter(
        is_meta=False, name__in=list(entry.capabilities.values())
    )
    concretes = _concretes_by_name(_entries(builds))
    return _describe(light, capability, concretes, on_disk, jobs, on_nodes)


def _entry_row(entry: GalleryBackend, node: Node, job: Job | None = None) -> EntryRow:
    """The row fragment and the entry page: the entry as this node sees it."""
    capability = node.current_capability()
    jobs = _active_jobs([job]) if job else _active_jobs()
    return _describe_one(
        entry, capability, local_disk(capability), jobs, _installed_on_agents()
    )


@login_required
def catalogue_entry(request: HtmxHttpRequest, gallery: str, name: str) -> HttpResponse:
    entry = _get_entry(gallery, name)
    node = Node.objects.local()
    context = {"row": _entry_row(entry, node), "entry": entry, "node": node}
    return render(request, "backends/catalogue_entry.html", context)


@require_POST
@staff_required
def catalogue_install(
    request: HtmxHttpRequest, gallery: str, name: str
) -> HttpResponse:
    entry = _get_entry(gallery, name)
    form = InstallForm(request.POST)
    force = form.is_valid() and form.cleaned_data["force"]
    job = _start_install(request, entry, force)
    if job is not None:
        verb = "Reinstall" if force else "Install"
        messages.success(request, f"{verb} of {entry.name} started.")
    if not _wants_fragment(request):
        if job is None:
            return redirect("backends:catalogue-entry", gallery, name)
        return redirect("backends:job-detail", job.pk)
    node = job.node if job and job.node else Node.objects.local()
    context = {
        "row": _entry_row(entry, node, job),
        "catalogue_url": reverse("backends:catalogue"),
    }
    return _render(
        request,
        "backends/catalogue_entry.html",
        context,
        fragment="backends/partials/_catalogue_row.html",
    )


def _start_install(
    request: HtmxHttpRequest, entry: GalleryBackend, force: bool
) -> Job | None:
    """Install as the API does: here, or in distributed mode on every online agent,
    each resolving its own build. None, with a message saying why, when nothing starts.
    """
    try:
        return nodes.start_install(
            entry.id_in_gallery,
            force=force,
            requested_by=request.user.get_username(),
        )
    except nodes.InstallRefused as exc:
        if exc.body and exc.body.get("code") == "concrete_backend_requires_target":
            # The API's wording names routes; a dashboard user needs the page instead.
            advice = "install it on chosen nodes from the Nodes page"
            if meta := exc.body.get("meta_alternative"):
                advice += (
                    f", or install {meta}, which picks the right build on each node"
                )
            message = (
                f"{entry.name} is a hardware-specific build and would not run on every "
                f"node; {advice}"
            )
        else:
            message = str(exc)
        messages.error(request, f"Not started: {message}.")
    except JobConflict as exc:
        messages.error(request, f"Not started: {exc}.")
    return None


# --- installed -----------------------------------------------------------------------------


@dataclass
class InstalledRow:
    """An installed backend: the disk's facts, plus what the table knows (upgrades)."""

    disk: installed.DiskBackend
    record: InstalledBackend | None
    size: int
    used_by: list[str] = field(default_factory=list)  # metas pointing at this build
    job: Job | None = None
    build: InstalledRow | None = None  # for a meta: the build it points at

    @property
    def name(self) -> str:
        return self.disk.name

    @property
    def metadata(self) -> installed.Metadata:
        return self.disk.metadata or installed.Metadata(name=self.disk.name)

    @property
    def installed_at(self) -> datetime | None:
        if self.record and self.record.installed_at:
            return self.record.installed_at
        try:
            return datetime.fromisoformat(self.metadata.installed_at)
        except ValueError:
            return None

    @property
    def upgrade_available(self) -> bool:
        return bool(self.record and self.record.upgrade_available)

    @property
    def orphaned(self) -> bool:
        # A meta whose build folder is gone: LocalAI cannot start it.
        return self.disk.is_meta and not self.disk.is_runnable


def _is_alias(key: str, row: installed.DiskBackend) -> bool:
    # scan() also lists each alias under its own name, pointing at a build's folder.
    return not row.is_meta and row.folder is not None and row.folder.name != key


def installed_folders(
    on_disk: Mapping[str, installed.DiskBackend],
) -> dict[str, installed.DiskBackend]:
    """Every installed backend once, by its own name: the builds, metas and system ones.

    ``scan`` keys backends the way LocalAI registers them, where an alias replaces a
    meta of the same name: the usual layout (``cpu-llama-cpp`` aliased ``llama-cpp``
    next to the meta ``llama-cpp``) would hide the meta. Read such metas back.
    """
    folders = {}
    for key, row in on_disk.items():
        if not _is_alias(key, row):
            folders[key] = row
        elif (meta := _meta_folder(key)) is not None:
            folders[key] = meta
    return folders


def _meta_folder(name: str) -> installed.DiskBackend | None:
    root = Path(settings.LOCALAI_BACKENDS_PATH)
    folder = root / name
    try:
        metadata = installed.read_metadata(folder)
    except ValueError:
        return None
    if metadata is None or not metadata.meta_backend_for:
        return None
    run_file = root / metadata.meta_backend_for / installed.RUN_FILE
    return installed.DiskBackend(
        name, str(run_file), is_meta=True, metadata=metadata, folder=folder
    )


def _installed_rows(
    on_disk: Mapping[str, installed.DiskBackend],
    records: Mapping[str, InstalledBackend],
    jobs: Mapping[str, Job],
) -> list[InstalledRow]:
    rows = []
    for key, disk in sorted(installed_folders(on_disk).items()):
        record = records.get(key)
        size = record.size_bytes if record and record.size_bytes else 0
        if not size and disk.folder is not None:
            size = installed.folder_size(disk.folder)
        rows.append(InstalledRow(disk, record, size, job=jobs.get(key)))
    by_name = {row.name: row for row in rows}
    for row in rows:
        target = row.metadata.meta_backend_for if row.disk.is_meta else ""
        if target in by_name:
            row.build = by_name[target]
            row.build.used_by.append(row.name)
    return rows


@login_required
def installed_list(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    on_disk = local_disk(node.current_capability())
    records = {r.name: r for r in InstalledBackend.objects.filter(node=node)}
    # This node's jobs only: an install fanned out to the agents is not about this disk.
    jobs = _active_jobs(Job.objects.active().filter(node=node).order_by("created_at"))
    rows = _installed_rows(on_disk, records, jobs)
    context = {
        "rows": rows,
        "node": node,
        "upgradable": sum(1 for r in rows if r.upgrade_available),
        "checked_at": max(
            (r.checked_at for r in records.values() if r.checked_at), default=None
        ),
    }
    return _render(
        request,
        "backends/installed.html",
        context,
        fragment="backends/installed.html#installed-rows",
    )


def _get_installed(
    name: str,
) -> tuple[installed.DiskBackend, dict[str, installed.DiskBackend]]:
    """An installed backend by its own name (not an alias), with every installed one."""
    try:
        gallery_format.validate_name(name)
    except ValueError:
        raise Http404("No such backend") from None
    folders = installed_folders(local_disk())
    if name not in folders:
        raise Http404(f"{name} is not installed")
    return folders[name], folders


@dataclass(frozen=True)
class Removal:
    """One line of a delete confirmation: a folder that goes, or one that stays and why."""

    what: str
    path: Path | None
    kept_because: str = ""


def removal_plan(
    disk: installed.DiskBackend, folders: Mapping[str, installed.DiskBackend]
) -> tuple[list[Removal], list[str]]:
    """What deleting ``disk`` removes, and warnings about what it leaves broken.

    The folders are the installer's own plan, the one the delete job carries out, so
    the confirmation cannot promise something else. A meta takes its build with it
    unless another meta still uses it: when the build is not in the plan, say who does.
    """
    plan = Installer(Path(settings.LOCALAI_BACKENDS_PATH)).plan_delete(
        disk.name, settings.LOCALAI_BACKENDS_SYSTEM_PATH
    )
    # meta name -> the build it points at, for every meta on disk
    pointers = {
        key: row.metadata.meta_backend_for
        for key, row in folders.items()
        if row.is_meta and row.metadata and row.metadata.meta_backend_for
    }
    label = f"meta backend {disk.name}" if disk.is_meta else disk.name
    removals = [Removal(label, plan[0])]
    removals += [Removal(f"build {folder.name}", folder) for folder in plan[1:]]
    target = pointers.get(disk.name, "")
    if target and target not in {folder.name for folder in plan}:
        others = sorted(
            k for k, t in pointers.items() if t == target and k != disk.name
        )
        if others:
            removals.append(
                Removal(f"build {target}", None, f"still used by {', '.join(others)}")
            )
    warnings: list[str] = []
    users = sorted(k for k, t in pointers.items() if t == disk.name)
    if users and not disk.is_meta:
        warnings.append(
            f"Meta backend {', '.join(users)} points at this build and will stop "
            "working until it is installed again."
        )
    return removals, warnings


def _refuse_system(request: HtmxHttpRequest, disk: installed.DiskBackend) -> bool:
    if disk.is_system:
        messages.error(
            request, f"{disk.name} is a system backend: it cannot be changed here."
        )
    return disk.is_system


@require_POST
@staff_required
def installed_upgrade(request: HtmxHttpRequest, name: str) -> HttpResponse:
    disk, _ = _get_installed(name)
    if not _refuse_system(request, disk) and _start_job(
        request, Job.Kind.UPGRADE, name
    ):
        messages.success(request, f"Upgrade of {name} started.")
    return redirect("backends:installed")


@require_POST
@staff_required
def installed_reinstall(request: HtmxHttpRequest, name: str) -> HttpResponse:
    disk, _ = _get_installed(name)
    started = not _refuse_system(request, disk) and _start_job(
        request, Job.Kind.INSTALL, name, force=True, dedup_key=name
    )
    if started:
        messages.success(request, f"Reinstall of {name} started.")
    return redirect("backends:installed")


@require_http_methods(["GET", "POST"])
@staff_required
def installed_delete(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """GET: the confirmation naming every folder that goes; POST: start the delete."""
    disk, folders = _get_installed(name)
    if _refuse_system(request, disk):
        return redirect("backends:installed")
    if request.method == "POST":
        job = _start_job(request, Job.Kind.DELETE, name)
        if job is None:
            return redirect("backends:installed")
        messages.success(request, f"Delete of {name} started.")
        return redirect("backends:job-detail", job.pk)
    try:
        removals, warnings = removal_plan(disk, folders)
    except NotFoundError:
        raise Http404(f"{name} is not installed") from None
    except InstallError as exc:
        messages.error(request, f"{name} cannot be deleted: {exc}.")
        return redirect("backends:installed")
    context = {"disk": disk, "removals": removals, "warnings": warnings}
    return render(request, "backends/installed_delete.html", context)


@require_POST
@staff_required
def installed_upgrade_all(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    names = list(
        InstalledBackend.objects.filter(
            node=node, upgrade_available=True, is_system=False
        )
        .order_by("name")
        .values_list("name", flat=True)
    )
    started = [name for name in names if _start_job(request, Job.Kind.UPGRADE, name)]
    if started:
        messages.success(request, f"Upgrade started for {', '.join(started)}.")
    elif not names:
        messages.info(request, "Every backend is up to date.")
    return redirect("backends:installed")


@require_POST
@staff_required
def installed_check_upgrades(request: HtmxHttpRequest) -> HttpResponse:
    tasks.check_upgrades()
    messages.info(
        request,
        "Checking the galleries for upgrades: reload in a moment to see the result.",
    )
    return redirect("backends:installed")


# --- known backends --------------------------------------------------------------------------


@login_required
def known_list(request: HtmxHttpRequest) -> HttpResponse:
    rows = known_backends(set(local_disk().keys()))
    modalities = sorted({row["modality"] for row in rows if row["modality"]})
    form = KnownFilterForm(request.GET, modalities=modalities)
    if modality := form.value("modality"):
        rows = [row for row in rows if row["modality"] == modality]
    context = {"rows": rows, "form": form}
    return _render(
        request,
        "backends/known.html",
        context,
        fragment="backends/known.html#known-table",
    )


# --- jobs ----------------------------------------------------------------------------------


def _job_history(form: JobHistoryForm) -> Any:
    # A fanned-out job's parts show inside its parent's card, not as jobs of their own.
    jobs = (
        Job.objects.filter(parent=None)
        .exclude(state__in=Job.ACTIVE_STATES)
        .select_related("node")
    )
    if state := form.value("state"):
        jobs = jobs.filter(state=state)
    if kind := form.value("kind"):
        jobs = jobs.filter(kind=kind)
    if backend := form.value("backend"):
        jobs = jobs.filter(target__icontains=backend)
    return jobs


@login_required
def job_list(request: HtmxHttpRequest) -> HttpResponse:
    form = JobHistoryForm(request.GET)
    history = Paginator(_job_history(form), HISTORY_PAGE_SIZE).get_page(
        form.value("page", 1)
    )
    active = Job.objects.active().filter(parent=None).select_related("node")
    context = {"form": form, "active": active, "history": history}
    return _render(
        request,
        "backends/jobs.html",
        context,
        fragment="backends/jobs.html#job-history",
    )


def _job_fragment(request: HtmxHttpRequest, job: Job) -> HttpResponse:
    """A job's live fragment; once the job is over, stop the poller and tell the page."""
    context = {"job": job}
    if job.is_active:
        return _render(
            request,
            "backends/job_detail.html",
            context,
            fragment="backends/partials/_job_progress.html",
        )
    response = _render(
        request,
        "backends/job_detail.html",
        context,
        fragment="backends/partials/_job_progress.html",
        fragment_status=HTMX_STOP_POLLING,
    )
    if _wants_fragment(request):
        # Pages listen for this to refresh what the job changed (rows, installed state).
        trigger_client_event(
            response, "job-finished", {"id": str(job.pk), "state": job.state}
        )
    return response


@login_required
def job_detail(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("node", "parent"), pk=pk)
    if job.is_active and settings.DISTRIBUTED and nodes.mark_offline_nodes():
        # An agent died: its part of the job has just failed.
        job.refresh_from_db()
    return _job_fragment(request, job)


@require_POST
@staff_required
def job_cancel(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    if job.request_cancel():
        messages.success(request, f"Cancelling {job.kind} of {job.target}.")
    else:
        messages.error(
            request, f"The {job.kind} of {job.target} can no longer be cancelled."
        )
    if _wants_fragment(request):
        return _job_fragment(request, job)
    return redirect("backends:job-detail", job.pk)


@require_POST
@staff_required
def job_retry(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    retry = None
    if job.state not in (Job.State.FAILED, Job.State.CANCELLED):
        messages.error(
            request, f"Only failed or cancelled jobs can be retried ({job.state})."
        )
    else:
        try:
            retry = Job.objects.retry(job)
            messages.success(request, f"Retrying the {retry.kind} of {retry.target}.")
        except (JobConflict, nodes.NoNodes) as exc:
            messages.error(request, f"Not retried: {exc}.")
    shown = retry or job
    if _wants_fragment(request):
        return _job_fragment(request, shown)
    return redirect("backends:job-detail", shown.pk)


# --- nodes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeBackend:
    """A backend on a node's disk, as the Nodes page lists it."""

    name: str
    alias: str = ""
    version: str = ""
    meta_backend_for: str = ""
    is_meta: bool = False
    is_system: bool = False


@dataclass
class NodeCard:
    """A node with what the Nodes page shows about it."""

    node: Node
    backends: list[NodeBackend]
    jobs: list[Job]
    form: NodeInstallForm = field(default_factory=NodeInstallForm)

    @property
    def takes_work(self) -> bool:
        return self.node.status == Node.Status.ONLINE

    @property
    def choices_id(self) -> str:
        return _choices_id(self.node.capability)


def _choices_id(capability: str) -> str:
    return f"backends-for-{slugify(capability or 'default')}"


def _local_backends() -> list[NodeBackend]:
    # The local folder is readable here, and the disk is the truth: read it, like the
    # Installed page, rather than the table that is reconciled after each job.
    rows = []
    for name, disk in sorted(installed_folders(local_disk()).items()):
        meta = disk.metadata or installed.Metadata()
        rows.append(
            NodeBackend(
                name,
                meta.alias,
                meta.version,
                meta.meta_backend_for,
                disk.is_meta,
                disk.is_system,
            )
        )
    return rows


def _node_cards(shown: Iterable[Node]) -> list[NodeCard]:
    shown = list(shown)
    on_agents: dict[int, list[NodeBackend]] = {}
    for row in InstalledBackend.objects.filter(node__in=shown, node__is_local=False):
        on_agents.setdefault(row.node_id, []).append(
            NodeBackend(
                row.name,
                row.alias,
                row.version,
                row.meta_backend_for,
                row.is_meta,
                row.is_system,
            )
        )
    jobs: dict[int, list[Job]] = {}
    for job in Job.objects.active().filter(node__in=shown).order_by("created_at"):
        jobs.setdefault(job.node_id, []).append(job)
    return [
        NodeCard(
            node,
            _local_backends() if node.is_local else on_agents.get(node.pk, []),
            jobs.get(node.pk, []),
        )
        for node in shown
    ]


def _choices(cards: Iterable[NodeCard]) -> dict[str, list[resolve.Candidate]]:
    """Per capability, the gallery entries it can run: the install forms' suggestions."""
    capabilities = {card.node.capability or "default" for card in cards}
    if not capabilities:
        return {}
    entries: dict[str, Entry] = {}
    for entry in _entries(GalleryBackend.objects.enabled()):
        entries.setdefault(entry.name.lower(), entry)  # the first gallery wins a name
    return {
        _choices_id(capability): resolve.available(entries.values(), capability)
        for capability in sorted(capabilities)
    }


def _node_fragment(
    request: HtmxHttpRequest, node: Node, form: NodeInstallForm | None = None
) -> HttpResponse:
    """A node's card, after a change made from it (its install form, drain, resume)."""
    card = _node_cards([node])[0]
    if form is not None:
        card.form = form
    context = {"card": card, "distributed": settings.DISTRIBUTED}
    return _render(
        request,
        "backends/node_detail.html",
        context,
        fragment="backends/partials/_node.html",
    )


@login_required
def node_list(request: HtmxHttpRequest) -> HttpResponse:
    nodes.mark_offline_nodes()
    Node.objects.local().current_capability()  # probes a local node never probed
    cards = _node_cards(Node.objects.all())
    staff = request.user.is_staff
    context = {
        "cards": cards,
        "distributed": settings.DISTRIBUTED,
        "offline_after": settings.NODE_OFFLINE_SECONDS,
        "choices": _choices(c for c in cards if c.takes_work) if staff else {},
    }
    return render(request, "backends/nodes.html", context)


@login_required
def node_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """A node's page; for htmx, the part of it that changes by itself (its state)."""
    nodes.mark_offline_nodes()
    node = get_object_or_404(Node, pk=pk)
    card = _node_cards([node])[0]
    context: dict[str, Any] = {"card": card, "distributed": settings.DISTRIBUTED}
    if not _wants_fragment(request):  # the state polls every few seconds: keep it light
        context["recent"] = Job.objects.filter(node=node).select_related("node")[:10]
        if request.user.is_staff and card.takes_work:
            context["choices"] = _choices([card])
    return _render(
        request,
        "backends/node_detail.html",
        context,
        fragment="backends/partials/_node_state.html",
    )


def _refuse_new_work(request: HtmxHttpRequest, node: Node) -> bool:
    if node.status != Node.Status.ONLINE:
        messages.error(
            request, f"Not started: {node.name} is {node.status}: it takes no new work."
        )
        return True
    if not node.is_local and not settings.DISTRIBUTED:
        messages.error(
            request,
            f"Not started: distributed mode is off, so the agent of {node.name} "
            "cannot receive jobs.",
        )
        return True
    return False


@require_POST
@staff_required
def node_install(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    nodes.mark_offline_nodes()
    node = get_object_or_404(Node, pk=pk)
    form = NodeInstallForm(request.POST)
    if not _refuse_new_work(request, node) and form.is_valid():
        entry = form.cleaned_data["backend"]
        capability = node.capability or "default"
        if problem := _describe_one(entry, capability, {}, {}).problem:
            form.add_error(
                "backend", f"{entry.name} does not run on {node.name}: {problem}"
            )
        elif _start_job(
            request,
            Job.Kind.INSTALL,
            entry.id_in_gallery,
            node=node,
            dedup_key=entry.name,
        ):
            messages.success(
                request, f"Install of {entry.name} on {node.name} started."
            )
            form = NodeInstallForm()
    if not _wants_fragment(request):
        for error in form.errors.get("backend", []):
            messages.error(request, f"Not started: {error}")
        return redirect(f"{reverse('backends:nodes')}#node-{node.pk}")
    return _node_fragment(request, node, form)


def _set_node_status(
    request: HtmxHttpRequest, pk: int, was: str, becomes: str, done: str
) -> HttpResponse:
    node = get_object_or_404(Node, pk=pk)
    if node.is_local:
        messages.error(
            request, f"{node.name} is this host: it is never drained (stop its worker)."
        )
    elif Node.objects.filter(pk=node.pk, status=was).update(status=becomes):
        node.status = becomes
        messages.success(request, f"{node.name} {done}.")
    else:
        messages.error(request, f"{node.name} is {node.status}: nothing changed.")
    if _wants_fragment(request):
        return _node_fragment(request, node)
    return redirect(f"{reverse('backends:nodes')}#node-{node.pk}")


@require_POST
@staff_required
def node_drain(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _set_node_status(
        request,
        pk,
        Node.Status.ONLINE,
        Node.Status.DRAINING,
        "is draining: its running jobs finish, it takes no new work",
    )


@require_POST
@staff_required
def node_resume(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _set_node_status(
        request,
        pk,
        Node.Status.DRAINING,
        Node.Status.ONLINE,
        "takes new work again",
    )


# --- galleries and hardware ---------------------------------------------------------------


@login_required
def gallery_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(
        request, "backends/galleries.html", {"galleries": Gallery.objects.all()}
    )


@require_POST
@staff_required
def gallery_sync(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    gallery = get_object_or_404(Gallery, pk=pk)
    tasks.sync_gallery(gallery.pk, force=True)
    messages.info(request, f"Sync of {gallery.name} queued.")
    return redirect("backends:galleries")


@login_required
def hardware(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    node.current_capability()  # probes a node that was never probed
    return render(
        request, "backends/hardware.html", {"node": node, "report": node.hardware}
    )


@require_POST
@staff_required
def hardware_probe(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    node.probe_local_hardware()
    messages.success(request, f"Hardware probed again: capability {node.capability}.")
    return redirect("backends:hardware")
