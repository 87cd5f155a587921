"""The Backends page: the galleries' catalogue as this node sees it, and installs."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Page, Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import trigger_client_event

from backends import roles
from backends.models import GalleryBackend, Job, Node
from backends.services import catalogue as read
from backends.services import jobs
from backends.services.catalogue import EntryRow
from backends.web.base import (
    JOBS_CHANGED,
    HtmxHttpRequest,
    dismissed_jobs,
    render_page,
    requires,
    wants_fragment,
)
from backends.web.forms import CatalogueQueryForm, InstallForm

PAGE_SIZE = 50


def _tag_link_query(request: HtmxHttpRequest) -> str:
    """The current query minus tag and page: tag links keep the other filters."""
    query = request.GET.copy()
    query.pop("tag", None)
    query.pop("page", None)
    return query.urlencode()


@requires(roles.VIEW)
def catalogue(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    capability = node.current_capability()
    galleries = read.enabled_galleries()
    form = CatalogueQueryForm(request.GET, galleries=[g[1] for g in galleries])
    form.is_valid()

    on_disk = read.local_disk(capability)
    runnable = read.runs_here_set(capability, galleries)
    query = read.CatalogueQuery(
        capability=capability,
        search=form.value("q", ""),
        gallery=form.value("gallery", ""),
        tag=form.value("tag", ""),
        development=bool(form.value("development")),
        other_hardware=bool(form.value("other_hardware")),
        sort=form.value("sort", "name"),
        installed=list(on_disk),
    )
    listed = read.catalogue_page(query, runnable, form.value("page", 1), PAGE_SIZE)
    # Only the rows shown are resolved, with only the builds their metas point at.
    concretes = read.builds_for(listed)
    active = read.row_jobs(read.recent_jobs(), dismissed_jobs(request))
    on_nodes = read.installed_on_agents()
    rows = [
        read.describe(entry, capability, concretes, on_disk, active, on_nodes)
        for entry in listed
    ]
    paginator: Paginator[Any] = listed.paginator  # the same pages, of described rows
    page = Page(rows, listed.number, paginator)
    context = {
        "form": form,
        "page": page,
        "node": node,
        "total": runnable.total,
        "tags": runnable.tags,
        "tag_query": _tag_link_query(request),
        "catalogue_url": reverse("backends:catalogue"),
        "distributed": settings.DISTRIBUTED,
    }
    return render_page(
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


def _entry_row(
    entry: GalleryBackend,
    node: Node,
    job: Job | None = None,
    dismissed: set[str] | None = None,
) -> EntryRow:
    """The row fragment and the entry page: the entry as this node sees it."""
    capability = node.current_capability()
    if job:
        active = read.active_jobs([job])
    else:
        active = read.row_jobs(read.recent_jobs(), dismissed or set())
    return read.describe_one(
        entry,
        capability,
        read.local_disk(capability),
        active,
        read.installed_on_agents(),
    )


@requires(roles.VIEW)
def catalogue_entry(request: HtmxHttpRequest, gallery: str, name: str) -> HttpResponse:
    entry = _get_entry(gallery, name)
    node = Node.objects.local()
    row = _entry_row(entry, node, dismissed=dismissed_jobs(request))
    context = {
        "row": row,
        "entry": entry,
        "node": node,
        "distributed": settings.DISTRIBUTED,
    }
    return render(request, "backends/catalogue_entry.html", context)


@requires(roles.INSTALL)
def catalogue_force(request: HtmxHttpRequest, gallery: str, name: str) -> HttpResponse:
    """Confirm installing a build that does not run on this node, saying what will not
    work; the answer posts to the install with ``force``."""
    entry = _get_entry(gallery, name)
    node = Node.objects.local()
    row = _entry_row(entry, node)
    if not row.problem or not row.can_install or settings.DISTRIBUTED:
        # Nothing to confirm (it runs here), or nothing a force could install.
        return redirect("backends:catalogue-entry", gallery, name)
    context = {
        "row": row,
        "entry": entry,
        "node": node,
        "meta": read.meta_offering(entry.name),
    }
    return render(request, "backends/catalogue_force.html", context)


@require_POST
@requires(roles.INSTALL)
def catalogue_install(
    request: HtmxHttpRequest, gallery: str, name: str
) -> HttpResponse:
    entry = _get_entry(gallery, name)
    form = InstallForm(request.POST)
    force = form.is_valid() and form.cleaned_data["force"]
    if not force and not settings.DISTRIBUTED:
        # The job would fail at its first step: say why now, and where to insist.
        row = _entry_row(entry, Node.objects.local())
        if row.problem:
            messages.error(
                request,
                f"Not started: {entry.name} does not run on this node: {row.problem}. "
                "Open its page to install it anyway.",
            )
            if not wants_fragment(request):
                return redirect("backends:catalogue-force", gallery, name)
            context = {
                "row": row,
                "catalogue_url": reverse("backends:catalogue"),
                "distributed": False,
            }
            return render_page(
                request,
                "backends/catalogue_entry.html",
                context,
                fragment="backends/partials/_catalogue_row.html",
            )
    job = _start_install(request, entry, force)
    if job is not None:
        verb = "Reinstall" if force else "Install"
        messages.success(request, f"{verb} of {entry.name} started.")
    if not wants_fragment(request):
        if job is None:
            return redirect("backends:catalogue-entry", gallery, name)
        return redirect("backends:job-detail", job.pk)
    node = job.node if job and job.node else Node.objects.local()
    context = {
        "row": _entry_row(entry, node, job),
        "catalogue_url": reverse("backends:catalogue"),
        "distributed": settings.DISTRIBUTED,
    }
    response = render_page(
        request,
        "backends/catalogue_entry.html",
        context,
        fragment="backends/partials/_catalogue_row.html",
    )
    if job is not None:
        trigger_client_event(response, JOBS_CHANGED, {"id": str(job.pk)})
    return response


def _start_install(
    request: HtmxHttpRequest, entry: GalleryBackend, force: bool
) -> Job | None:
    """Install as the API does: here, or in distributed mode on every online agent,
    each resolving its own build. None, with a message saying why, when nothing starts.
    """
    try:
        return jobs.install(
            entry.id_in_gallery, force=force, requested_by=request.user.get_username()
        )
    except jobs.Refused as exc:
        if exc.code == "concrete_backend_requires_target":
            # The API's wording names routes; a dashboard user needs the page instead.
            advice = "install it on chosen nodes from the Nodes page"
            if meta := exc.extra.get("meta_alternative"):
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
    return None
