"""Request typing and the JSON conventions shared by every API view."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Literal, cast

from django.core.exceptions import RequestDataTooBig
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt

from backends import roles
from backends.api import schemas
from backends.models import ApiToken
from backends.services import audit

View = Callable[..., HttpResponse]
# api_view's routes may stream (JsonArrayStream), which is no HttpResponse.
ApiView = Callable[..., HttpResponseBase]

# Larger bodies are refused before parsing: no route reads more than a few names.
MAX_BODY = 64 * 1024
# Deeper bodies are refused before parsing: json.loads and the schema check recurse once
# per level, and no route's body nests more than a few levels.
MAX_DEPTH = 32

# Every answer under these prefixes is JSON, Django's own errors included.
API_PREFIXES = ("/api/", "/backends")


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
    429: "too_many_requests",
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
    # user: an API token or a session whose user holds ``permission``;
    # agent: the registration token.
    auth: Literal["user", "agent"] = "user"
    permission: str = ""

    def answers(self) -> dict[int, schemas.Schema]:
        """Every status the route may answer, with its body's schema."""
        error = schemas.ref("Error")
        codes = {*self.errors, 401, 405}
        if self.body is not None or self.query or self.constrained_path():
            codes.add(400)
        if self.body is not None:
            codes.add(413)
        if self.auth == "user":
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
            except BodyTooLarge:
                return json_error(413, f"request body is over {MAX_BODY} bytes")
            return view(request, *args, **kwargs)

        wrapper.contract = contract  # type: ignore[attr-defined]
        return wrapper

    return decorator


class BodyTooLarge(Exception):
    """A request body over MAX_BODY: 413."""


# A refused body is still read, up to this much, and thrown away: a server that answers
# before the client (or the proxy in front) has sent it all resets the connection, and
# the client sees a 502 or a broken pipe instead of the 413.
DISCARD_LIMIT = 8 << 20


def _discard(request: HttpRequest, declared_length: int) -> None:
    left = min(declared_length, DISCARD_LIMIT)
    while left > 0:
        chunk = request.read(min(left, 64 << 10))
        if not chunk:
            return
        left -= len(chunk)


def _json_body(request: HttpRequest) -> Any:
    try:
        declared_length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared_length = 0
    # The declared length first: an oversized body is refused without being parsed.
    if declared_length > MAX_BODY:
        _discard(request, declared_length)
        raise BodyTooLarge
    try:
        body = request.body
    except RequestDataTooBig:
        raise BodyTooLarge from None
    if len(body) > MAX_BODY:
        raise BodyTooLarge
    if nesting_depth(body) > MAX_DEPTH:
        raise schemas.Invalid(f"request body nests deeper than {MAX_DEPTH} levels")
    try:
        # An empty body is an empty object: LocalAI's clients send none for defaults.
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise schemas.Invalid("request body is not valid JSON") from None
    return data


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def nesting_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, without parsing it (the
    parser would recurse that deep). Brackets inside strings do not count."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", body)):
        if bracket[0] in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def api_view(
    methods: tuple[str, ...] = ("GET",),
    *,
    permission: str,
    responses: Mapping[int, schemas.Schema] | None = None,
    errors: tuple[int, ...] = (),
    body: schemas.Schema | None = None,
    query: schemas.Schema | None = None,
    path: schemas.Schema | None = None,
) -> Callable[[ApiView], ApiView]:
    """Authenticate an API request, allow only ``methods``, check it against its
    declared shapes, and answer errors in JSON.

    ``responses`` maps each success status to its body's schema (200 with any body if not
    given), ``errors`` lists the other statuses the view itself answers with the error
    envelope; 400 (when something is declared), 401, 403 and 405 are added.

    Scripts send ``Authorization: Bearer <token>``; a browser session works too (then the
    CSRF check applies to writes, as for any form). Either way the request acts with its
    user's permissions: anonymous gets 401, a user without ``permission`` (one of
    ``backends.roles``) a 403 that names it.
    """
    contract = Contract(
        methods,
        responses if responses is not None else {200: {}},
        errors,
        body,
        query or {},
        path or {},
        permission=permission,
    )

    def decorator(view: ApiView) -> ApiView:
        # declared() passes the view's answer through whatever its class.
        checked: ApiView = declared(contract)(cast(View, view))

        @csrf_exempt
        @wraps(checked)
        def wrapper(
            request: HttpRequest, *args: Any, **kwargs: Any
        ) -> HttpResponseBase:
            if request.method not in methods:
                response = json_error(405, f"{request.method} is not allowed here")
                response["Allow"] = ", ".join(methods)
                return response
            header = request.headers.get("Authorization", "")
            # LocalAI's clients may send the key as x-api-key or xi-api-key instead.
            key = request.headers.get("X-Api-Key") or request.headers.get("Xi-Api-Key")
            if header or key:
                scheme, _, value = header.partition(" ")
                if key and not header:
                    scheme, value = "bearer", key
                token = (
                    ApiToken.objects.authenticate(value.strip())
                    if scheme.lower() == "bearer"
                    else None
                )
                if token is None:
                    return json_error(401, "invalid, expired or revoked API token")
                request.user = token.user
                # The audit log names the token, not only its user.
                request.api_token = token  # type: ignore[attr-defined]
            elif not request.user.is_authenticated:
                return json_error(401, "authentication required: send an API token")
            elif request.method not in ("GET", "HEAD", "OPTIONS") and _csrf_failure(
                request
            ):
                return json_error(403, "CSRF check failed")
            if not audit.permitted(request, permission):
                return forbidden(permission)
            return checked(request, *args, **kwargs)

        wrapper.permission = permission  # type: ignore[attr-defined]
        return wrapper

    return decorator


def forbidden(permission: str) -> JsonResponse:
    """403 naming the permission the user lacks."""
    return json_error(403, roles.refusal(permission), permission=permission)


# -- Django's own errors under the API prefixes (handler400/403/404/500, CSRF) ---------


def is_api_request(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIXES)


def bad_request(
    request: HttpRequest, exception: Exception | None = None
) -> HttpResponse:
    if not is_api_request(request):
        return defaults.bad_request(request, exception)  # type: ignore[arg-type]
    if isinstance(exception, RequestDataTooBig):
        return json_error(413, "request body is too large")
    return json_error(400, "bad request")


def permission_denied(
    request: HttpRequest, exception: Exception | None = None
) -> HttpResponse:
    if not is_api_request(request):
        return defaults.permission_denied(request, exception)  # type: ignore[arg-type]
    return json_error(403, str(exception or "") or "forbidden")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 for unknown URLs: JSON under the API prefixes, the HTML page elsewhere."""
    if not is_api_request(request):
        return defaults.page_not_found(request, exception)
    return json_error(404, f"no route {request.path}")


def server_error(request: HttpRequest) -> HttpResponse:
    """An unhandled exception: the envelope, never the trace (that goes to the log)."""
    if not is_api_request(request):
        return defaults.server_error(request)
    return json_error(500, "internal server error")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: API routes check CSRF themselves, but answer alike if Django
    does (a route without the api_view decorator)."""
    if not is_api_request(request):
        return csrf.csrf_failure(request, reason)
    return json_error(403, f"CSRF check failed: {reason}")


class JsonArrayStream(StreamingHttpResponse):
    """A JSON array written element by element: a 200,000-entry gallery's answer is
    never held whole in memory, and the first bytes leave before the last row is read.

    ``content`` joins the stream (once) for callers that want the body whole, as
    ``JsonResponse`` users and Django's test client do. ``encoded``: the rows are JSON
    texts already (a long answer written by its service, ``catalogue.available``).
    """

    def __init__(
        self, rows: Iterable[Any], status: int = 200, *, encoded: bool = False
    ) -> None:
        super().__init__(
            _json_array(rows if encoded else map(DjangoJSONEncoder().encode, rows)),
            status=status,
            content_type="application/json",
        )
        self._joined: bytes | None = None

    @property
    def content(self) -> bytes:  # type: ignore[override]
        if self._joined is None:
            self._joined = b"".join(self.streaming_content)  # type: ignore[arg-type]
        return self._joined

    @property
    def text(self) -> str:  # type: ignore[override]
        return self.content.decode(self.charset)


# Bytes gathered before one write: a chunk per row costs a syscall per row.
_STREAM_CHUNK = 64 * 1024


def _json_array(texts: Iterable[str]) -> Iterator[bytes]:
    buffer = ["["]
    size = 1
    for number, text in enumerate(texts):
        if number:
            buffer.append(",")
        buffer.append(text)
        size += len(text) + 1
        if size >= _STREAM_CHUNK:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    buffer.append("]")
    yield "".join(buffer).encode()
