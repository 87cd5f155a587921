"""Logging in: what django-axes answers once a username or an address is locked out."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from backends.api.http import is_api_request, json_error
from backends.services import audit


def lockout_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return (
        f"Too many failed logins for this username or from this address: logins are "
        f"refused for {minutes} minutes, even with the right password. An administrator "
        "can lift the lockout sooner."
    )


def locked_out(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """django-axes' lockout answer (AXES_LOCKOUT_CALLABLE): 429 with a clear message,
    as a page on the login forms and in the JSON envelope for scripts."""
    if is_api_request(request) or "application/json" in request.headers.get(
        "Accept", ""
    ):
        return json_error(429, lockout_message())
    context = {"message": lockout_message()}
    return render(request, "registration/locked_out.html", context, status=429)


def client_ip(request: HttpRequest) -> str:
    """The address a lockout counts failures against (AXES_CLIENT_IP_CALLABLE): the
    same one the audit log records (``services.audit.client_ip`` says which)."""
    return audit.client_ip(request)
