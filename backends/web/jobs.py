"""The Jobs page and a job's own page: live progress, cancel, retry, history."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HTMX_STOP_POLLING, trigger_client_event

from backends import roles
from backends.core.redact import redact_uri
from backends.models import Job
from backends.services import audit, jobs
from backends.services import catalogue as read
from backends.web.base import (
    JOBS_CHANGED,
    HtmxHttpRequest,
    dismiss_job,
    dismissed_jobs,
    render_page,
    requires,
    wants_fragment,
)
from backends.web.forms import JobHistoryForm

HISTORY_PAGE_SIZE = 25


def _job_history(form: JobHistoryForm) -> Any:
    # A fanned-out job's parts show inside its parent's card, not as jobs of their own.
    history = (
        Job.objects.filter(parent=None)
        .exclude(state__in=Job.ACTIVE_STATES)
        .select_related("node")
    )
    if state := form.value("state"):
        history = history.filter(state=state)
    if kind := form.value("kind"):
        history = history.filter(kind=kind)
    if backend := form.value("backend"):
        history = history.filter(target__icontains=backend)
    return history


@requires(roles.VIEW)
def job_list(request: HtmxHttpRequest) -> HttpResponse:
    form = JobHistoryForm(request.GET)
    history = Paginator(_job_history(form), HISTORY_PAGE_SIZE).get_page(
        form.value("page", 1)
    )
    active = Job.objects.active().filter(parent=None).select_related("node")
    context = {"form": form, "active": active, "history": history}
    # Both lists redraw when a job starts or ends; each asks for its own part.
    part = "job-active" if request.htmx.target == "job-active" else "job-history"
    return render_page(
        request,
        "backends/jobs.html",
        context,
        fragment=f"backends/jobs.html#{part}",
    )


def _job_fragment(request: HtmxHttpRequest, job: Job) -> HttpResponse:
    """A job's live fragment; once the job is over, stop the poller and tell the page."""
    context = {"job": job}
    if wants_fragment(request) and request.htmx.target == "job-facts":
        # The job page's details (started, finished), redrawn when the job ends.
        return render_page(
            request,
            "backends/job_detail.html",
            context,
            fragment="backends/job_detail.html#job-facts",
        )
    if job.is_active:
        return render_page(
            request,
            "backends/job_detail.html",
            context,
            fragment="backends/partials/_job_progress.html",
        )
    response = render_page(
        request,
        "backends/job_detail.html",
        context,
        fragment="backends/partials/_job_progress.html",
        fragment_status=HTMX_STOP_POLLING,
    )
    if wants_fragment(request):
        # Pages listen for this to refresh what the job changed (rows, installed state).
        # After the settle: the job's last state is drawn before its row is redrawn.
        trigger_client_event(
            response,
            "job-finished",
            {"id": str(job.pk), "state": job.state},
            after="settle",
        )
    return response


@requires(roles.VIEW)
def job_detail(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("node", "parent"), pk=pk)
    return _job_fragment(request, job)


@require_POST
@requires(roles.CANCEL_JOB)
def job_cancel(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    if jobs.cancel(job):
        messages.success(request, f"Cancelling {job.kind} of {redact_uri(job.target)}.")
    else:
        messages.error(
            request,
            f"The {job.kind} of {redact_uri(job.target)} can no longer be cancelled.",
        )
    if wants_fragment(request):
        return _job_fragment(request, job)
    return redirect("backends:job-detail", job.pk)


def _work_permission(job: Job) -> str:
    if job.kind == Job.Kind.DELETE:
        return roles.DELETE
    if job.external_uri:
        return roles.to_install_from(job.external_uri)
    return ""


@require_POST
@requires(roles.RETRY_JOB)
def job_retry(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
    # A retry starts the job's work again: it needs what starting that work needs.
    if (needed := _work_permission(job)) and not audit.permitted(request, needed):
        raise PermissionDenied(f"Not allowed: {roles.refusal(needed)}.")
    try:
        shown = jobs.retry(job, requested_by=request.user.get_username())
    except jobs.Refused as exc:
        messages.error(request, f"Not retried: {exc}.")
        shown = job
    else:
        messages.success(
            request, f"Retrying the {shown.kind} of {redact_uri(shown.target)}."
        )
    if wants_fragment(request):
        # The new job takes the old one's place (its poller follows the new id); the
        # lists and the notification area redraw so the old row goes back to history.
        response = _job_fragment(request, shown)
        trigger_client_event(response, JOBS_CHANGED, {"id": str(shown.pk)})
        return response
    return redirect("backends:job-detail", shown.pk)


@require_GET
@requires(roles.VIEW)
def job_tray(request: HtmxHttpRequest) -> HttpResponse:
    """The notification area: active jobs and recent failures, on every page.

    It polls only while something is active (286 stops it); a job started from a page
    sends ``jobs-changed``, which wakes it. The ids it was watching come back in
    ``watching``: those that ended fire ``job-finished``, so the page redraws what they
    changed even where no row was following them.
    """
    tray = read.job_tray(dismissed_jobs(request))
    status = 200 if tray.active else HTMX_STOP_POLLING
    response = render(
        request, "backends/partials/_job_tray.html", {"tray": tray}, status=status
    )
    watched = {i for i in request.GET.get("watching", "").split(",") if i}
    if ended := sorted(watched - {str(job.pk) for job in tray.active}):
        trigger_client_event(response, "job-finished", {"ids": ended})
    return response


@require_POST
@requires(roles.VIEW)
def job_dismiss(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    """Hide a failed job from this user's notification area and rows."""
    job = get_object_or_404(Job, pk=pk)
    dismiss_job(request, str(job.pk))
    if wants_fragment(request):
        response = HttpResponse(status=204)
        trigger_client_event(response, JOBS_CHANGED, {"id": str(job.pk)})
        return response
    back = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(back)
    return redirect("backends:jobs")
