"""The Jobs page and a job's own page: live progress, cancel, retry, history."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST
from django_htmx.http import HTMX_STOP_POLLING, trigger_client_event

from backends.core.redact import redact_uri
from backends.models import Job
from backends.services import jobs
from backends.web.base import (
    HtmxHttpRequest,
    render_page,
    staff_required,
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


@login_required
def job_list(request: HtmxHttpRequest) -> HttpResponse:
    form = JobHistoryForm(request.GET)
    history = Paginator(_job_history(form), HISTORY_PAGE_SIZE).get_page(
        form.value("page", 1)
    )
    active = Job.objects.active().filter(parent=None).select_related("node")
    context = {"form": form, "active": active, "history": history}
    return render_page(
        request,
        "backends/jobs.html",
        context,
        fragment="backends/jobs.html#job-history",
    )


def _job_fragment(request: HtmxHttpRequest, job: Job) -> HttpResponse:
    """A job's live fragment; once the job is over, stop the poller and tell the page."""
    context = {"job": job}
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
        trigger_client_event(
            response, "job-finished", {"id": str(job.pk), "state": job.state}
        )
    return response


@login_required
def job_detail(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("node", "parent"), pk=pk)
    return _job_fragment(request, job)


@require_POST
@staff_required
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


@require_POST
@staff_required
def job_retry(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk)
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
        return _job_fragment(request, shown)
    return redirect("backends:job-detail", shown.pk)
