"""Request typing and the JSON conventions shared by every API view."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from backends.models import ApiToken

View = Callable[..., HttpResponse]


ERROR_TYPES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    500: "server_error",
    503: "unavailable",
}


def json_error(status: int, message: str, **extra: Any) -> JsonResponse:
    """LocalAI's error envelope: ``{"error": {"code", "message", "type"}}``."""
    body: dict[str, Any] = {
        "error": {
            "code": status,
            "message": message,
            "type": ERROR_TYPES.get(status, "error"),
        }
    }
    body.update(extra)
    return JsonResponse(body, status=status)


def _csrf_failure(request: HttpRequest) -> HttpResponse | None:
    """Run Django's CSRF check for session-authenticated requests."""
    check = CsrfViewMiddleware(lambda r: HttpResponse())
    check.process_request(request)
    return check.process_view(request, lambda r: HttpResponse(), (), {})


def api_view(methods: tuple[str, ...] = ("GET",)) -> Callable[[View], View]:
    """Authenticate an API request, allow only ``methods``, and answer errors in JSON.

    Scripts send ``Authorization: Bearer <token>``; a browser session works too (then the
    CSRF check applies to writes, as for any form). Every API route is for staff: anonymous
    gets 401, a signed-in non-staff user 403.
    """

    def decorator(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = json_error(405, f"{request.method} is not allowed here")
                response["Allow"] = ", ".join(methods)
                return response
            header = request.headers.get("Authorization", "")
            if header:
                scheme, _, value = header.partition(" ")
                token = (
                    ApiToken.objects.authenticate(value.strip())
                    if scheme.lower() == "bearer"
                    else None
                )
                if token is None:
                    return json_error(401, "invalid or revoked API token")
                request.user = token.user
            elif (
                isinstance(request.user, AnonymousUser)
                or not request.user.is_authenticated
            ):
                return json_error(401, "authentication required: send an API token")
            elif request.method not in ("GET", "HEAD", "OPTIONS") and _csrf_failure(
                request
            ):
                return json_error(403, "CSRF check failed")
            if not request.user.is_staff:
                return json_error(403, "staff access required")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 for unknown URLs: JSON under the API prefixes, the HTML page elsewhere."""
    if request.path.startswith(("/api/", "/backends")):
        return json_error(404, f"no route {request.path}")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)  # type: ignore[arg-type]
