"""Registry authentication as an ``httpx.Auth`` flow.

A request goes out with the cached Authorization for its (registry, scope), or none.
On a 401 the flow reads the ``WWW-Authenticate`` challenge: ``Bearer`` sends it to the
token realm (anonymously, or with the registry's configured credentials as Basic) and
retries with the token; ``Basic`` retries with the credentials. httpx runs the flow
around its redirect handling, so a redirect to blob storage on another origin never
carries the header. Credentials go to a token realm only when the source policy's
``may_send_credentials`` allows it (the registry's own host, or an https realm
configured for it); otherwise the token is asked for anonymously.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from backends.core.oci.errors import AuthenticationError
from backends.core.oci.reference import canonical_registry
from backends.core.policy import CREDENTIALS_SETTING, may_send_credentials
from backends.core.transfer import DEFAULT_STALL_SECONDS, StallClock, stalled

# Answers worth asking again: the registry (or its token service) is overloaded or
# restarting. The client's retry loop acts on them, wherever they come from.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_REPOSITORY_PATH = re.compile(r"/v2/(.+)/(?:manifests|blobs|tags)/")
# A token is renewed this long before it expires, so that a long blob transfer does not
# start with a token about to go stale.
_TOKEN_MARGIN = 10.0
_DEFAULT_TOKEN_LIFETIME = 60.0
# A token answer is a small JSON document; a bigger one is refused, not kept in memory.
_MAX_TOKEN_BYTES = 1 << 20


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    # https hosts (host or host:port) of token realms on another host that may receive
    # these credentials; a realm on the registry's own host always may.
    realms: tuple[str, ...] = ()

    def basic(self) -> str:
        """The value of a Basic Authorization header."""
        pair = f"{self.username}:{self.password}".encode()
        return f"Basic {base64.b64encode(pair).decode()}"


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="https://auth",service="reg",scope="..."`` -> ("bearer", params)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        key.lower(): quoted or bare
        for key, quoted, bare in _CHALLENGE_PARAM.findall(rest)
    }
    return scheme.lower(), params


def pull_scope(url: httpx.URL) -> str:
    """The token scope a request to ``url`` needs: pull access to its repository."""
    match = _REPOSITORY_PATH.match(url.path)
    return f"repository:{match[1]}:pull" if match else ""


class RegistryAuth(httpx.Auth):
    """Anonymous, bearer-token and basic auth for every registry one client talks to.

    Tokens are cached per (registry, scope) until shortly before they expire; the cache
    is shared by the client's threads. Sync clients only: the token response is read
    inside the flow (``requires_response_body`` would make httpx read every response,
    blobs included, into memory).
    """

    def __init__(self, credentials: Mapping[str, Credentials] | None = None) -> None:
        self._credentials = {
            canonical_registry(host): cred for host, cred in (credentials or {}).items()
        }
        self._lock = threading.Lock()
        # (registry, scope) -> (Authorization header, monotonic expiry)
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}

    def auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        registry = request.url.netloc.decode("ascii")
        key = (registry, pull_scope(request.url))
        if cached := self._cached(key):
            request.headers["Authorization"] = cached
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        credentials = self._credentials.get(registry)
        withheld = ""
        if scheme == "bearer" and params.get("realm"):
            token_request = _token_request(request, params, key[1])
            if credentials is not None:
                if may_send_credentials(
                    request.url, token_request.url, credentials.realms
                ):
                    token_request.headers["Authorization"] = credentials.basic()
                else:
                    withheld = _withheld(registry, token_request.url)
            token_response = yield token_request
            if token_response.status_code in RETRY_STATUSES:
                return  # handed to the client's retry loop like any 5xx
            try:
                header, lifetime = _read_token(token_response, params["realm"])
            except AuthenticationError as exc:
                raise AuthenticationError(f"{exc}{withheld}") from None
        elif scheme == "basic" and credentials is not None:
            header, lifetime = credentials.basic(), float("inf")
        else:
            hint = "" if credentials else " and no credentials are configured for it"
            raise AuthenticationError(f"the registry requires authentication{hint}")
        with self._lock:
            self._cache[key] = (header, time.monotonic() + lifetime)
        request.headers["Authorization"] = header
        response = yield request
        if withheld and response.status_code in (401, 403):
            raise AuthenticationError(
                f"access denied with an anonymous token{withheld}"
            )

    def _cached(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            cached = self._cache.get(key)
        if cached is None or cached[1] <= time.monotonic():
            return None
        return cached[0]


def _token_request(
    request: httpx.Request,
    params: Mapping[str, str],
    scope: str,
) -> httpx.Request:
    """The GET to the challenge's token realm, with the deadline, the connection
    tracing (how a cancel reaches its socket) and the User-Agent of the request that
    was refused (a bare httpx.Request would have no timeout at all)."""
    # The challenge's scope is what the registry wants; ours is the fallback.
    query = {"scope": params.get("scope") or scope}
    if params.get("service"):
        query["service"] = params["service"]
    try:
        url = httpx.URL(params["realm"]).copy_merge_params(query)
    except httpx.InvalidURL as exc:
        raise AuthenticationError(f"invalid token realm {params['realm']!r}") from exc
    headers = {"User-Agent": request.headers.get("User-Agent", "")}
    extensions: dict[str, Any] = {
        key: request.extensions[key]
        for key in ("timeout", "trace")
        if key in request.extensions
    }
    return httpx.Request("GET", url, headers=headers, extensions=extensions)


def _withheld(registry: str, realm: httpx.URL) -> str:
    """Why the registry's credentials did not go to the token realm, for the error."""
    how = "" if realm.scheme == "https" else " over plain HTTP"
    return (
        f"; the credentials for {registry} were not sent to the token service "
        f"{realm.scheme}://{realm.netloc.decode('ascii')}{how}: a token service on "
        'another host gets them only over https and when listed in the "realms" of '
        f"that registry in {CREDENTIALS_SETTING}"
    )


def _read_token(response: httpx.Response, realm: str) -> tuple[str, float]:
    """The Bearer header and its lifetime in seconds from a token service's answer."""
    if response.status_code in (401, 403):
        raise AuthenticationError(
            f"token service {realm} refused the credentials (HTTP {response.status_code})"
        )
    if response.status_code != 200:
        raise AuthenticationError(
            f"token service {realm} answered HTTP {response.status_code}"
        )
    try:
        data = json.loads(_read_body(response, realm))
        token = data.get("token") or data.get("access_token")
        expires_in = float(data.get("expires_in") or _DEFAULT_TOKEN_LIFETIME)
    except (ValueError, AttributeError, TypeError):
        token = None
    if not isinstance(token, str) or not token:
        raise AuthenticationError(f"token service {realm} returned no token")
    return f"Bearer {token}", max(expires_in - _TOKEN_MARGIN, 1.0)


def _read_body(response: httpx.Response, realm: str) -> bytes:
    """The token answer, read under the stall rule: the read timeout alone would let a
    service trickling a byte a second hold the job forever."""
    timeout = response.request.extensions.get("timeout") or {}
    clock = StallClock(
        response.request.url, timeout.get("read") or DEFAULT_STALL_SECONDS
    )
    body = bytearray()
    try:
        for chunk in response.iter_bytes():
            clock.advance(len(chunk))
            body += chunk
            if len(body) > _MAX_TOKEN_BYTES:
                raise AuthenticationError(
                    f"token service {realm} answered more than {_MAX_TOKEN_BYTES} bytes"
                )
    except httpx.TimeoutException:
        raise stalled(response.request.url, clock.stall_seconds) from None
    # httpx reads every response of an auth flow once the flow moves on; read(),
    # the only public way, has no stall rule, so the body read here is handed over.
    response._content = bytes(body)
    return response._content
