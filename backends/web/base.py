"""What every dashboard view shares: the typed request, access, rendering, messages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.cache import patch_vary_headers
from django_htmx.middleware import HtmxDetails

from backends import roles
from backends.services import audit, jobs

View = Callable[..., HttpResponse]


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def requires(permission: str) -> Callable[[View], View]:
    """The permission a page needs (``backends.roles``): anonymous users are sent to log
    in, signed-in users without it get the 403 page naming it.

    Django's ``permission_required`` sends a signed-in user without the permission to the
    login page, which sends them back again: a loop instead of an answer.
    """

    def decorator(view: View) -> View:
        @wraps(view)
        def checked(
            request: HtmxHttpRequest, *args: Any, **kwargs: Any
        ) -> HttpResponse:
            if not audit.permitted(request, permission):
                raise PermissionDenied(f"Not allowed: {roles.refusal(permission)}.")
            return view(request, *args, **kwargs)

        guarded: View = login_required(checked)
        # Read by the route table test: every page declares what it needs.
        guarded.permission = permission  # type: ignore[attr-defined]
        return guarded

    return decorator


def watch_since(request: HttpRequest, key: str = "since") -> datetime | None:
    """When a page asked for background work (a sync, an upgrade check), as the epoch
    seconds its redirect carries; None if absent or not a time."""
    try:
        return datetime.fromtimestamp(float(request.GET.get(key, "")), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def since_param() -> str:
    """Now, as ``watch_since`` reads it back."""
    return f"{datetime.now(UTC).timestamp():.6f}"


def wants_fragment(request: HtmxHttpRequest) -> bool:
    # After a history cache miss htmx asks again with HX-Request set: that needs the page.
    return bool(request.htmx) and not request.htmx.history_restore_request


def render_page(
    request: HtmxHttpRequest,
    page: str,
    context: dict[str, Any],
    *,
    fragment: str = "",
    fragment_status: int = 200,
) -> HttpResponse:
    """Render ``page``, or ``fragment`` (a partial or a partials/ file) for htmx."""
    if fragment and wants_fragment(request):
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


# The session key of the failed jobs this user dismissed from the notification area.
DISMISSED_JOBS = "dismissed_jobs"
DISMISSED_KEPT = 200


def dismissed_jobs(request: HttpRequest) -> set[str]:
    """The failed jobs this user has dismissed: per user (a session), since a failure one
    admin has read is still news to another."""
    return set(request.session.get(DISMISSED_JOBS, ()))


def dismiss_job(request: HttpRequest, job_id: str) -> None:
    kept = [i for i in request.session.get(DISMISSED_JOBS, ()) if i != job_id]
    # Bounded: only the last hour's failures are shown, so old ids can go.
    request.session[DISMISSED_JOBS] = [*kept, job_id][-DISMISSED_KEPT:]


# Sent with every answer that starts, retries or dismisses a job: the notification area
# starts polling again and the rows redraw (pages listen for it, and for job-finished).
JOBS_CHANGED = "jobs-changed"


def not_started(request: HtmxHttpRequest, exc: jobs.Refused) -> None:
    """Tell the user why nothing started, in the page's message area."""
    messages.error(request, f"Not started: {exc}.")
