"""The Installed page: what is on this host's disk, with upgrade, reinstall and delete."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from backends import roles, tasks
from backends.core.install import InstallError, NotFoundError
from backends.core.installed import DiskBackend
from backends.models import InstalledBackend, Job, Node
from backends.services import catalogue as read
from backends.services import disk, jobs
from backends.web.base import HtmxHttpRequest, not_started, render_page, requires


@requires(roles.VIEW)
def installed_list(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    records = {r.name: r for r in InstalledBackend.objects.filter(node=node)}
    # This node's jobs only: an install fanned out to the agents is not about this disk.
    active = read.active_jobs(
        Job.objects.active().filter(node=node).order_by("created_at")
    )
    rows = read.installed_rows(read.installed_folders(), records, active)
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
    }
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


@require_POST
@requires(roles.UPGRADE)
def installed_upgrade(request: HtmxHttpRequest, name: str) -> HttpResponse:
    _get_installed(name)
    try:
        jobs.upgrade(name, requested_by=request.user.get_username())
    except jobs.Refused as exc:
        not_started(request, exc)
    else:
        messages.success(request, f"Upgrade of {name} started.")
    return redirect("backends:installed")


@require_POST
@requires(roles.INSTALL)
def installed_reinstall(request: HtmxHttpRequest, name: str) -> HttpResponse:
    _get_installed(name)
    try:
        jobs.reinstall(name, requested_by=request.user.get_username())
    except jobs.Refused as exc:
        not_started(request, exc)
    else:
        messages.success(request, f"Reinstall of {name} started.")
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
        try:
            job = jobs.delete(name, requested_by=request.user.get_username())
        except jobs.Refused as exc:
            not_started(request, exc)
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
    context = {"disk": disk, "removals": removals, "warnings": warnings}
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
    tasks.check_upgrades()
    messages.info(
        request,
        "Checking the galleries for upgrades: reload in a moment to see the result.",
    )
    return redirect("backends:installed")
