"""Errors under the API prefixes answer the JSON envelope in every mode.

Django's handler404/handler500 (``backends.api.http``) only run with ``DEBUG=False``;
with ``DEBUG=True`` (``make run``) it answers its technical pages instead, which list
every route and, for an exception, the settings and the request: a script gets HTML it
cannot parse and a user may be shown secrets. This middleware answers those two cases
itself for ``/api/`` and ``/backends``; the dashboard keeps Django's pages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from backends.api.http import is_api_request, json_error

log = logging.getLogger("django.request")


class JsonErrorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code == 404
            and is_api_request(request)
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            return json_error(404, f"no route {request.path}")
        return response

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponse | None:
        if not is_api_request(request):
            return None
        # The trace goes to the log, never into the answer.
        log.error("unhandled exception on %s", request.path, exc_info=exception)
        return json_error(500, "internal server error")
