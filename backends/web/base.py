"""What every dashboard view shares: the typed request, access, rendering, messages."""

from __future__ import annotations

from collections.abc import Callable
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

from backends.services import jobs

View = Callable[..., HttpResponse]


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


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


def not_started(request: HtmxHttpRequest, exc: jobs.Refused) -> None:
    """Tell the user why nothing started, in the page's message area."""
    messages.error(request, f"Not started: {exc}.")
