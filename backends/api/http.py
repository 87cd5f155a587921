"""Request typing and the JSON conventions shared by every API view."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Literal

from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from backends.api import schemas
from backends.models import ApiToken

View = Callable[..., HttpResponse]

# Larger bodies are refused before parsing: no route reads more than a few names.
MAX_BODY = 64 * 1024


class ApiRequest(HttpRequest):
    """A request whose body its route declared: ``json`` is that body, validated."""

    json: dict[str, Any]


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


@dataclass(frozen=True)
class Contract:
    """What one route reads and answers, as data: checked by ``declared``, documented by
    ``backends.api.openapi``. Path and query values are name -> schema."""

    methods: tuple[str, ...]
    responses: Mapping[int, schemas.Schema]
    errors: tuple[int, ...] = ()
    body: schemas.Schema | None = None
    query: schemas.Schema = field(default_factory=dict)
    path: schemas.Schema = field(default_factory=dict)
    # staff: an API token or a staff session; agent: the registration token.
    auth: Literal["staff", "agent"] = "staff"

    def answers(self) -> dict[int, schemas.Schema]:
        """Every status the route may answer, with its body's schema."""
        error = schemas.ref("Error")
        codes = {*self.errors, 401, 405}
        if self.body is not None or self.query or self.constrained_path():
            codes.add(400)
        if self.auth == "staff":
            codes.add(403)
        return {**dict.fromkeys(sorted(codes), error), **self.responses}

    def constrained_path(self) -> schemas.Schema:
        """Path values that need checking: the URL converter already made the type."""
        return {
            name: schema
            for name, schema in self.path.items()
            if set(schema) - {"type", "description"}
        }


def declared(contract: Contract) -> Callable[[View], View]:
    """Check a request against ``contract`` (400 naming the field) and attach it to the
    view for the OpenAPI document. Runs after authentication: strangers learn nothing."""
    path_schema = {"type": "object", "properties": contract.constrained_path()}
    query_schema = {"type": "object", "properties": contract.query}

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if path_schema["properties"]:
                    schemas.check(path_schema, kwargs, "path")
                if contract.query:
                    # Unknown parameters stay allowed: scripts add cache-busters.
                    query = {name: request.GET[name] for name in request.GET}
                    schemas.check(query_schema, query, "query")
                if contract.body is not None:
                    data = _json_body(request)
                    schemas.check(contract.body, data)
                    request.json = data  # type: ignore[attr-defined]
            except schemas.Invalid as exc:
                return json_error(400, str(exc))
            return view(request, *args, **kwargs)

        wrapper.contract = contract  # type: ignore[attr-defined]
        return wrapper

    return decorator


def _json_body(request: HttpRequest) -> Any:
    if len(request.body) > MAX_BODY:
        raise schemas.Invalid("request body too large")
    try:
        # An empty body is an empty object: LocalAI's clients send none for defaults.
        return json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise schemas.Invalid("request body is not valid JSON") from None


def api_view(
    methods: tuple[str, ...] = ("GET",),
    *,
    responses: Mapping[int, schemas.Schema] | None = None,
    errors: tuple[int, ...] = (),
    body: schemas.Schema | None = None,
    query: schemas.Schema | None = None,
    path: schemas.Schema | None = None,
) -> Callable[[View], View]:
    """Authenticate an API request, allow only ``methods``, check it against its
    declared shapes, and answer errors in JSON.

    ``responses`` maps each success status to its body's schema (200 with any body if not
    given), ``errors`` lists the other statuses the view itself answers with the error
    envelope; 400 (when something is declared), 401, 403 and 405 are added.

    Scripts send ``Authorization: Bearer <token>``; a browser session works too (then the
    CSRF check applies to writes, as for any form). Every API route is for staff: anonymous
    gets 401, a signed-in non-staff user 403.
    """
    contract = Contract(
        methods,
        responses if responses is not None else {200: {}},
        errors,
        body,
        query or {},
        path or {},
    )

    def decorator(view: View) -> View:
        checked = declared(contract)(view)

        @csrf_exempt
        @wraps(checked)
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
            return checked(request, *args, **kwargs)

        return wrapper

    return decorator


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 for unknown URLs: JSON under the API prefixes, the HTML page elsewhere."""
    if request.path.startswith(("/api/", "/backends")):
        return json_error(404, f"no route {request.path}")
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)
