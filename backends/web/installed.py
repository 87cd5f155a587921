"""The Installed page: what is on this host's disk, with upgrade, reinstall and delete;
and each backend's kept versions, with rollback and pin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HTMX_STOP_POLLING, trigger_client_event

from backends import roles, tasks
from backends.core.install import InstallError, NotFoundError, build_folder
from backends.core.installed import DiskBackend
from backends.models import InstalledBackend, Job, Node
from backends.services import audit, disk, jobs, plans, upgrades, usage, versions
from backends.services import catalogue as read
from backends.web.base import (
    HtmxHttpRequest,
    dismissed_jobs,
    not_started,
    render_page,
    requires,
    since_param,
    wants_fragment,
    watch_since,
)
from backends.web.forms import ExternalInstallForm


@requires(roles.VIEW)
def installed_list(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    records = {r.name: r for r in InstalledBackend.objects.filter(node=node)}
    # This node's jobs only: an install fanned out to the agents is not about this disk.
    active = read.row_jobs(
        read.recent_jobs(Job.objects.filter(node=node)), dismissed_jobs(request)
    )
    folders = read.installed_folders()
    rows = read.installed_rows(folders, records, active)
    users = usage.users_by_folder(folders)
    for row in rows:
        if row.disk.folder is not None:
            row.models = users.get(row.disk.folder.name, [])
    # After "Check for upgrades now" (``?checking=<t>``) the upgrade state polls until
    # every backend has been checked, then stops (286) and has the rows redrawn.
    since = watch_since(request, "checking")
    checking = since is not None and upgrades.check_pending(node, since)
    sizes = [(row.name, row.size) for row in rows]
    context = {
        "rows": rows,
        "bars": disk.bars(sizes),
        "space": disk.local_space(sum(size for _, size in sizes)),
        "node": node,
        "upgradable": sum(1 for r in rows if r.upgrade_available),
        "checked_at": max(
            (r.checked_at for r in records.values() if r.checked_at), default=None
        ),
        "checking": checking,
        "checking_since": request.GET.get("checking", ""),
        "check_stalled": since is not None
        and not checking
        and upgrades.check_pending(node, since, window=False),
        "uri_form": ExternalInstallForm(),
    }
    if since is not None and wants_fragment(request):
        response = render_page(
            request,
            "backends/installed.html",
            context,
            fragment="backends/installed.html#upgrade-state",
            fragment_status=200 if checking else HTMX_STOP_POLLING,
        )
        if not checking:
            trigger_client_event(response, "upgrades-checked")
        return response
    return render_page(
        request,
        "backends/installed.html",
        context,
        fragment="backends/installed.html#installed-rows",
    )


def _get_installed(name: str) -> tuple[DiskBackend, dict[str, DiskBackend]]:
    """An installed backend by its own name (not an alias), with every installed one."""
    folders = read.installed_folders()
    if name not in folders:
        raise Http404(f"{name} is not installed")
    return folders[name], folders


@require_http_methods(["GET", "POST"])
@requires(roles.UPGRADE)
def installed_upgrade(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """GET: the confirmation with the plan (build, download, disk, models); POST: start."""
    disk, _folders = _get_installed(name)
    if request.method == "GET":
        try:
            plan = plans.make_plan("upgrade", name)
        except jobs.Refused as exc:
            messages.error(request, f"{name} cannot be upgraded: {exc}.")
            return redirect("backends:installed")
        context = {"disk": disk, "plan": plan}
        return render(request, "backends/installed_upgrade.html", context)
    return _start_from_installed(request, jobs.upgrade, name, "Upgrade")


@require_POST
@requires(roles.INSTALL)
def installed_reinstall(request: HtmxHttpRequest, name: str) -> HttpResponse:
    _disk, folders = _get_installed(name)
    # A backend installed from a host path comes back from that path: that needs what
    # installing from a path needs, as the API's install-external does.
    needed = roles.to_install_from(jobs.reinstall_source(name, folders) or name)
    if not audit.permitted(request, needed):
        raise PermissionDenied(f"Not allowed: {roles.refusal(needed)}.")
    return _start_from_installed(
        request, jobs.reinstall, name, "Reinstall", folders=folders
    )


def _start_from_installed(
    request: HtmxHttpRequest,
    start: Callable[..., Job],
    name: str,
    verb: str,
    **options: Any,
) -> HttpResponse:
    """Start a job from a button of the Installed page, and come back to it."""
    try:
        start(name, requested_by=request.user.get_username(), **options)
    except jobs.Refused as exc:
        not_started(request, exc)
    else:
        messages.success(request, f"{verb} of {name} started.")
    return redirect("backends:installed")


@require_http_methods(["GET", "POST"])
@requires(roles.DELETE)
def installed_delete(request: HtmxHttpRequest, name: str) -> HttpResponse:
    """GET: the confirmation naming every folder that goes; POST: start the delete."""
    disk, folders = _get_installed(name)
    if disk.is_system:
        messages.error(
            request, f"{disk.name} is a system backend: it cannot be changed here."
        )
        return redirect("backends:installed")
    if request.method == "POST":
        # Only an explicit tick overrides the in-use protection.
        force = request.POST.get("force") == "on"
        try:
            job = jobs.delete(
                name,
                requested_by=request.user.get_username(),
                force=force,
                folders=folders,
            )
        except jobs.Refused as exc:
            not_started(request, exc)
            if exc.code == "backend_in_use":
                # Back to the confirmation, which now lists the models and the tick.
                return redirect("backends:installed-delete", name)
            return redirect("backends:installed")
        messages.success(request, f"Delete of {name} started.")
        return redirect("backends:job-detail", job.pk)
    try:
        removals, warnings = read.removal_plan(disk, folders)
    except NotFoundError:
        raise Http404(f"{name} is not installed") from None
    except InstallError as exc:
        messages.error(request, f"{name} cannot be deleted: {exc}.")
        return redirect("backends:installed")
    # The folders read once serve the plan and the models that would break.
    removed = [removal.path for removal in removals if removal.path is not None]
    context = {
        "disk": disk,
        "removals": removals,
        "warnings": warnings,
        "models": usage.models_using(removed, folders),
    }
    return render(request, "backends/installed_delete.html", context)


@require_POST
@requires(roles.UPGRADE)
def installed_upgrade_all(request: HtmxHttpRequest) -> HttpResponse:
    started, refused = jobs.upgrade_all(requested_by=request.user.get_username())
    for reason in refused:
        messages.error(request, f"Not started: {reason}.")
    if started:
        messages.success(request, f"Upgrade started for {', '.join(started)}.")
    elif not refused:
        messages.info(request, "Every backend is up to date.")
    return redirect("backends:installed")


@require_POST
@requires(roles.UPGRADE)
def installed_check_upgrades(request: HtmxHttpRequest) -> HttpResponse:
    since = since_param()
    tasks.check_upgrades()
    messages.info(
        request,
        "Checking the galleries for upgrades: this page updates when the check is done.",
    )
    query = urlencode({"checking": since})
    return redirect(f"{reverse('backends:installed')}?{query}")


# -- kept versions, rollback, pin ------------------------------------------------------


def _versions_or_404(name: str) -> versions.Versions:
    try:
        return versions.versions(name)
    except jobs.Refused as exc:
        raise Http404(str(exc)) from None


@requires(roles.VIEW)
def installed_versions(request: HtmxHttpRequest, name: str) -> HttpResponse:
    _get_installed(name)
    context = {
        "versions": _versions_or_404(name),
        "keep_versions": settings.LOCALAI_ADMIN_KEEP_VERSIONS,
    }
    return render(request, "backends/installed_versions.html", context)


@require_http_methods(["GET", "POST"])
@requires(roles.UPGRADE)
def installed_rollback(
    request: HtmxHttpRequest, name: str, version: str
) -> HttpResponse:
    """GET: the confirmation naming the build that goes back and the one replaced;
    POST: start the rollback."""
    disk, folders = _get_installed(name)
    try:
        kept = versions.check_kept(name, version)
    except jobs.Refused as exc:
        raise Http404(str(exc)) from None
    if request.method == "POST":
        try:
            job = versions.rollback(
                name, kept.id, requested_by=request.user.get_username()
            )
        except jobs.Refused as exc:
            not_started(request, exc)
            return redirect("backends:installed-versions", name)
        messages.success(request, f"Rollback of {name} started.")
        return redirect("backends:job-detail", job.pk)
    current = folders.get(build_folder(disk))
    context = {
        "disk": disk,
        "kept": kept,
        "kept_row": versions.kept_json(kept),
        "current": current.metadata if current else None,
        # The plan first, as before an upgrade or a delete: what moves, what stays.
        "plan": plans.make_plan("rollback", name, version=kept.id),
    }
    return render(request, "backends/installed_rollback.html", context)


@require_POST
@requires(roles.UPGRADE)
def installed_pin(request: HtmxHttpRequest, name: str) -> HttpResponse:
    return _pin(request, name, True)


@require_POST
@requires(roles.UPGRADE)
def installed_unpin(request: HtmxHttpRequest, name: str) -> HttpResponse:
    return _pin(request, name, False)


def _pin(request: HtmxHttpRequest, name: str, pinned: bool) -> HttpResponse:
    _get_installed(name)
    try:
        versions.set_pinned(name, pinned)
    except jobs.Refused as exc:
        messages.error(request, f"{exc}.")
    else:
        messages.success(
            request,
            f"{name} is pinned: upgrade all leaves it out."
            if pinned
            else f"{name} is unpinned.",
        )
    return redirect("backends:installed")
