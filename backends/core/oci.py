"""OCI registry client (distribution v2 API) and image pull, on httpx. No Django here.

Public API:

* ``Reference.parse(text)`` / ``parse_reference(text)``: image references such as
  ``quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp``, ``oci://host/repo:tag``,
  ``127.0.0.1:5000/repo:tag``, ``repo@sha256:...`` and Docker Hub short names
  (``localai/localai-backends:tag`` -> ``registry-1.docker.io``, ``ubuntu`` ->
  ``library/ubuntu``); the tag defaults to ``latest``.
* ``Platform`` (os/architecture/variant in Go naming; ``Platform.host()`` for this machine).
* ``RegistryClient``: anonymous, bearer-token (WWW-Authenticate challenge, token cached per
  repository) and basic auth from a ``{registry: Credentials}`` mapping; plain http for
  loopback and listed insecure registries, https otherwise; bounded retries with backoff
  on 5xx/429 and connection errors; redirects followed by hand so the Authorization
  header only ever goes to the registry itself. ``resolve()`` turns a reference into the
  layer list for a platform, ``head_digest()`` answers upgrade checks, ``iter_blob()`` /
  ``stream_blob()`` stream a blob while hashing it and resume a cut transfer with Range.
* ``pull_image(ref, dest, ...)`` streams every layer through ``backends.core.extract`` into
  ``dest`` (a staging folder), ``pull_first(refs, dest, ...)`` tries mirrors in order.
* Errors: ``OCIError`` and its subclasses, each message naming the reference;
  ``Cancelled`` (not an OCIError) when ``should_cancel`` says so.

Layers are extracted while they download, in one thread: the extractor pulls chunks
from ``iter_blob``, which verifies the digest when the blob ends. Extraction therefore
runs before verification; that is safe because ``dest`` is a staging folder the caller
throws away on any error, and the extractor never writes outside it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
import logging
import platform as host_platform
import re
import shutil
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from backends.core.extract import ArchiveError, extract_layer

logger = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
_MANIFEST_ACCEPT = ", ".join(
    [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST]
)

DOCKER_HUB = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB})
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_HOST = re.compile(
    r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# A manifest is a small JSON document; refusing big ones bounds memory (the OCI
# distribution spec suggests registries accept at least 4 MiB).
MAX_MANIFEST_BYTES = 4 << 20
# Blob bytes are handed on (hashed, counted, decompressed) in pieces of about this
# size: the network gives 64 KiB reads, and in extraction every piece costs thread
# switches between the downloading thread and the one writing files.
BLOB_CHUNK = 256 << 10
_MAX_INDEX_DEPTH = 3
_MAX_REDIRECTS = 5
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class OCIError(Exception):
    """Base of every registry/pull failure; the message names the reference."""


class InvalidReferenceError(OCIError, ValueError):
    pass


class AuthenticationError(OCIError):
    """401/403, or the token service refused the credentials."""


class NotFoundError(OCIError):
    """404: unknown repository, manifest (tag) or blob."""


class PlatformNotFoundError(OCIError):
    pass


class DigestMismatchError(OCIError):
    pass


class UnsupportedMediaTypeError(OCIError):
    pass


class RegistryError(OCIError):
    """Any other unexpected answer, or the registry stayed unreachable after retries."""


class AllSourcesFailedError(OCIError):
    """``pull_first``: every reference failed; ``failures`` keeps each (ref, error)."""

    def __init__(self, failures: Sequence[tuple[str, Exception]]) -> None:
        self.failures = list(failures)
        lines = "; ".join(f"{ref}: {error}" for ref, error in self.failures)
        super().__init__(f"every source failed ({len(self.failures)}): {lines}")


class Cancelled(Exception):
    """``should_cancel`` returned True."""


# --- references and platforms ----------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest = text.strip().removeprefix("oci://")
        if not rest or any(char.isspace() for char in rest):
            raise InvalidReferenceError(f"invalid image reference {text!r}")
        name, at, digest = rest.partition("@")
        if at and not _DIGEST.fullmatch(digest):
            raise InvalidReferenceError(f"invalid digest in image reference {text!r}")
        tag = None
        if name.rfind(":") > name.rfind("/"):
            name, _, tag = name.rpartition(":")
            if not _TAG.fullmatch(tag):
                raise InvalidReferenceError(f"invalid tag in image reference {text!r}")
        first, slash, remainder = name.partition("/")
        # Docker's rule: the first component is a registry if it looks like a host.
        if slash and (
            "." in first
            or ":" in first
            or first == "localhost"
            or first.startswith("[")
        ):
            registry, repository = first, remainder
        else:
            registry, repository = DOCKER_HUB, name
        if registry in _DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
            if "/" not in repository:
                repository = f"library/{repository}"
        if not _HOST.fullmatch(registry) or not all(
            _PATH_COMPONENT.fullmatch(part) for part in repository.split("/")
        ):
            raise InvalidReferenceError(f"invalid image reference {text!r}")
        return cls(registry, repository, tag if tag or at else "latest", digest or None)

    @property
    def reference(self) -> str:
        """What goes in the manifest URL: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    return Reference.parse(text)


_MACHINES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def host(cls) -> Platform:
        machine = host_platform.machine().lower()
        architecture, variant = _MACHINES.get(machine, (machine, None))
        system = {"win32": "windows", "cygwin": "windows"}.get(
            sys.platform, sys.platform
        )
        return cls(system, architecture, variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"invalid platform {text!r} (expected os/arch[/variant])")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def __str__(self) -> str:
        return "/".join(
            part for part in (self.os, self.architecture, self.variant) if part
        )

    def normalized_variant(self) -> str | None:
        # arm64 images are published both with and without "v8"; they are the same.
        if self.architecture == "arm64" and self.variant in (None, "", "v8"):
            return None
        return self.variant or None


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None

    @classmethod
    def from_json(cls, data: Any, ref: Reference) -> Descriptor:
        try:
            media_type, digest, size = data["mediaType"], data["digest"], data["size"]
        except (KeyError, TypeError):
            raise RegistryError(
                f"{ref}: malformed descriptor in manifest: {data!r}"
            ) from None
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise RegistryError(f"{ref}: unsupported or malformed digest {digest!r}")
        if not isinstance(size, int) or size < 0:
            raise RegistryError(f"{ref}: malformed size {size!r} for {digest}")
        platform = None
        spec = data.get("platform")
        if isinstance(spec, dict) and spec.get("os") and spec.get("architecture"):
            platform = Platform(
                spec["os"], spec["architecture"], spec.get("variant") or None
            )
        return cls(str(media_type), digest, size, platform)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    body: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class ResolvedImage:
    reference: Reference
    digest: str  # what the reference points to (an index for multi-platform tags)
    manifest_digest: str  # the platform's image manifest
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Progress:
    phase: str  # "downloading" or "extracting"
    label: str  # e.g. "layer 2/3 sha256:0123abcd"
    current_bytes: int  # over all layers, compressed
    total_bytes: int

    @property
    def percent(self) -> float:
        return (
            100.0 * self.current_bytes / self.total_bytes if self.total_bytes else 100.0
        )


@dataclass(frozen=True)
class PulledImage:
    reference: Reference
    digest: str  # compare with RegistryClient.head_digest() for upgrade checks
    manifest_digest: str
    layer_digests: tuple[str, ...]
    compressed_size: int
    platform: Platform


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


# --- the client --------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(registry: str) -> str:
    if registry.startswith("["):
        return registry[: registry.index("]") + 1]
    return registry.rsplit(":", 1)[0]


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {
        key.lower(): quoted or bare
        for key, quoted, bare in _CHALLENGE_PARAM.findall(rest)
    }
    return scheme.lower(), params


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings (its CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR),
    built once per process: loading the CA bundle takes tens of milliseconds, more
    than pulling a small image from a nearby registry."""
    return httpx.create_ssl_context()


class RegistryClient:
    """A registry v2 client. Thread-safe; reuse one for many pulls (connection pool,
    token cache). ``retries`` extra attempts follow a failed request with a doubling
    ``backoff``; a blob transfer cut mid-way resumes up to ``max_resumes`` times."""

    def __init__(
        self,
        *,
        credentials: Mapping[str, Credentials] | None = None,
        insecure: Iterable[str] = (),
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_resumes: int = 5,
        user_agent: str = "localai-admin",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._credentials = {
            DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host: cred
            for host, cred in (credentials or {}).items()
        }
        self._insecure = frozenset(insecure)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_resumes = max_resumes
        # Redirects are followed by hand (_send) to control where credentials go.
        self._http = httpx.Client(
            verify=tls_context(),
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": user_agent},
            transport=transport,
        )
        self._auth_lock = threading.Lock()
        # (registry, repository) -> (Authorization header, monotonic expiry)
        self._auth_cache: dict[tuple[str, str], tuple[str, float]] = {}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def base_url(self, registry: str) -> str:
        host = _split_host(registry)
        plain = (
            _is_loopback(host) or registry in self._insecure or host in self._insecure
        )
        return f"{'http' if plain else 'https'}://{registry}"

    # -- high level --

    def resolve(
        self, ref: Reference | str, platform: Platform | None = None
    ) -> ResolvedImage:
        """Manifest (through the index, for ``platform``) and layer list of ``ref``."""
        ref = _as_reference(ref)
        platform = platform or Platform.host()
        top = manifest = self.get_manifest(ref)
        for _ in range(_MAX_INDEX_DEPTH):
            if not manifest.is_index:
                break
            manifest = self.get_manifest(
                ref, _select_platform(manifest, platform, ref).digest
            )
        if manifest.media_type not in MANIFEST_TYPES:
            raise UnsupportedMediaTypeError(
                f"{ref}: cannot pull a {manifest.media_type}"
            )
        layers = manifest.body.get("layers")
        if not isinstance(layers, list):
            raise RegistryError(f"{ref}: manifest {manifest.digest} has no layer list")
        descriptors = tuple(Descriptor.from_json(layer, ref) for layer in layers)
        for layer in descriptors:
            if layer.media_type not in LAYER_TYPES:
                raise UnsupportedMediaTypeError(
                    f"{ref}: layer {layer.digest} has unsupported media type {layer.media_type}"
                )
        return ResolvedImage(ref, top.digest, manifest.digest, descriptors)

    def get_manifest(
        self, ref: Reference | str, reference: str | None = None
    ) -> Manifest:
        ref = _as_reference(ref)
        reference = reference or ref.reference
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/manifests/{reference}"
        what = f"manifest {reference}"
        with closing(
            self._request(ref, "GET", url, {"Accept": _MANIFEST_ACCEPT}, stream=True)
        ) as response:
            self._raise_for_status(response, ref, what)
            raw = _read_limited(response, MAX_MANIFEST_BYTES, f"{ref}: {what}")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        expected = (
            reference
            if _DIGEST.fullmatch(reference)
            else response.headers.get("Docker-Content-Digest")
        )
        if expected and expected.startswith("sha256:") and expected != digest:
            raise DigestMismatchError(
                f"{ref}: digest mismatch for {what}: expected {expected}, got {digest}"
            )
        try:
            body = json.loads(raw)
        except ValueError:
            raise RegistryError(f"{ref}: {what} is not JSON") from None
        if not isinstance(body, dict):
            raise RegistryError(f"{ref}: {what} is not a JSON object")
        return Manifest(_manifest_media_type(body, response), digest, body)

    def head_digest(self, ref: Reference | str) -> str:
        """Digest the reference points to now (Docker-Content-Digest of a HEAD)."""
        ref = _as_reference(ref)
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/manifests/{ref.reference}"
        with closing(
            self._request(ref, "HEAD", url, {"Accept": _MANIFEST_ACCEPT})
        ) as response:
            self._raise_for_status(response, ref, f"manifest {ref.reference}")
            digest = response.headers.get("Docker-Content-Digest", "")
        if _DIGEST.fullmatch(digest):
            return digest
        return self.get_manifest(ref).digest  # some registries omit the header on HEAD

    def iter_blob(
        self,
        ref: Reference | str,
        descriptor: Descriptor,
        *,
        on_bytes: Callable[[int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Iterator[bytes]:
        """Yield the blob's bytes as they arrive, in pieces of about BLOB_CHUNK bytes
        (``on_bytes`` gets each piece's size); raise DigestMismatchError at the end if
        they are not what the descriptor promised. A transfer cut mid-way resumes with
        a Range request, so the consumer just sees one continuous stream."""
        ref = _as_reference(ref)
        algorithm, _, expected = descriptor.digest.partition(":")
        hasher = hashlib.new(algorithm)
        url = f"{self.base_url(ref.registry)}/v2/{ref.repository}/blobs/{descriptor.digest}"
        what = f"blob {descriptor.digest}"
        received = 0
        resumes = 0
        # What arrived before a cut is handed on before resuming.
        pieces = _Pieces(hasher, on_bytes)
        while True:
            headers = {"Accept-Encoding": "identity"}
            if received:
                headers["Range"] = f"bytes={received}-"
            with closing(
                self._request(ref, "GET", url, headers, stream=True)
            ) as response:
                self._raise_for_status(response, ref, what)
                skip = self._already_received(response, received, ref, what)
                try:
                    for chunk in response.iter_raw():
                        if should_cancel is not None and should_cancel():
                            raise Cancelled(f"{ref}: cancelled")
                        if skip:
                            if len(chunk) <= skip:
                                skip -= len(chunk)
                                continue
                            chunk, skip = chunk[skip:], 0
                        received += len(chunk)
                        if received > descriptor.size:
                            raise DigestMismatchError(
                                f"{ref}: digest mismatch for {what}: more than the {descriptor.size} bytes announced"
                            )
                        if piece := pieces.add(chunk):
                            yield piece
                except httpx.TransportError as exc:
                    if piece := pieces.take():
                        yield piece
                    resumes += 1
                    if resumes > self.max_resumes:
                        raise RegistryError(
                            f"{ref}: download of {what} kept failing ({exc})"
                        ) from exc
                    logger.info(
                        "%s: %s cut after %d bytes (%s), resuming",
                        ref,
                        what,
                        received,
                        exc,
                    )
                    self._sleep(resumes - 1)
                    continue
            break
        if piece := pieces.take():
            yield piece
        if received != descriptor.size or hasher.hexdigest() != expected:
            raise DigestMismatchError(
                f"{ref}: digest mismatch for {what}: got {algorithm}:{hasher.hexdigest()} ({received} bytes)"
            )

    def stream_blob(
        self,
        ref: Reference | str,
        descriptor: Descriptor,
        sink: Sink,
        *,
        progress: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> None:
        """Write the verified blob to ``sink``; ``progress(received, total)``."""
        received = 0

        def count(size: int) -> None:
            nonlocal received
            received += size
            if progress is not None:
                progress(received, descriptor.size)

        for chunk in self.iter_blob(
            ref, descriptor, on_bytes=count, should_cancel=should_cancel
        ):
            sink.write(chunk)

    # -- HTTP plumbing --

    def _request(
        self,
        ref: Reference,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with auth, retrying connection errors and 5xx/429; one re-auth on 401."""
        key = (ref.registry, ref.repository)
        attempt = 0
        authenticated = False
        while True:
            authorization = self._cached_authorization(key)
            try:
                response = self._send(
                    method, url, headers, authorization, stream=stream
                )
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise RegistryError(f"{ref}: {method} {url} failed: {exc}") from exc
                self._sleep(attempt)
                attempt += 1
                continue
            except httpx.RequestError as exc:  # too many redirects and the like
                raise RegistryError(f"{ref}: {method} {url} failed: {exc}") from exc
            if response.status_code == 401 and not authenticated:
                challenge = response.headers.get("WWW-Authenticate", "")
                response.close()
                self._authenticate(ref, challenge, key)
                authenticated = True
                continue
            if response.status_code in _RETRY_STATUSES and attempt < self.retries:
                response.close()
                logger.info(
                    "%s: %s %s answered %s, retrying",
                    ref,
                    method,
                    url,
                    response.status_code,
                )
                self._sleep(attempt)
                attempt += 1
                continue
            return response

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        authorization: str | None,
        *,
        stream: bool,
    ) -> httpx.Response:
        # Blob storage (S3, CDNs) is reached by redirect; our Authorization must never
        # leave the registry's origin (a presigned URL even refuses it).
        target = httpx.URL(url)
        origin = _origin(target)
        for _ in range(_MAX_REDIRECTS + 1):
            request_headers = dict(headers)
            if authorization and _origin(target) == origin:
                request_headers["Authorization"] = authorization
            request = self._http.build_request(method, target, headers=request_headers)
            response = self._http.send(request, stream=stream)
            location = response.headers.get("Location")
            if not (response.is_redirect and location):
                return response
            response.close()
            target = target.join(location)
            if response.status_code == 303 and method != "HEAD":
                method = "GET"
        raise httpx.TooManyRedirects(
            f"more than {_MAX_REDIRECTS} redirects", request=request
        )

    def _sleep(self, attempt: int) -> None:
        time.sleep(min(self.backoff * 2**attempt, self.max_backoff))

    def _cached_authorization(self, key: tuple[str, str]) -> str | None:
        with self._auth_lock:
            cached = self._auth_cache.get(key)
        if cached is None or cached[1] <= time.monotonic():
            return None
        return cached[0]

    def _authenticate(
        self, ref: Reference, challenge: str, key: tuple[str, str]
    ) -> None:
        scheme, params = _parse_challenge(challenge)
        credentials = self._credentials.get(ref.registry)
        if scheme == "bearer" and params.get("realm"):
            scope = params.get("scope") or f"repository:{ref.repository}:pull"
            header, lifetime = self._fetch_token(ref, params, scope, credentials)
        elif scheme == "basic" and credentials is not None:
            header, lifetime = _basic(credentials), float("inf")
        else:
            hint = "" if credentials else " and no credentials are configured for it"
            raise AuthenticationError(
                f"{ref}: the registry requires authentication{hint}"
            )
        with self._auth_lock:
            self._auth_cache[key] = (header, time.monotonic() + lifetime)

    def _fetch_token(
        self,
        ref: Reference,
        params: Mapping[str, str],
        scope: str,
        credentials: Credentials | None,
    ) -> tuple[str, float]:
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        try:
            url = str(httpx.URL(params["realm"]).copy_merge_params(query))
        except httpx.InvalidURL as exc:
            raise AuthenticationError(
                f"{ref}: invalid token realm {params['realm']!r}"
            ) from exc
        authorization = _basic(credentials) if credentials else None
        attempt = 0
        while True:
            try:
                response = self._send("GET", url, {}, authorization, stream=False)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise AuthenticationError(
                        f"{ref}: token service {params['realm']} unreachable: {exc}"
                    ) from exc
            except httpx.RequestError as exc:
                raise AuthenticationError(
                    f"{ref}: token service {params['realm']} failed: {exc}"
                ) from exc
            else:
                if (
                    response.status_code not in _RETRY_STATUSES
                    or attempt >= self.retries
                ):
                    break
            self._sleep(attempt)
            attempt += 1
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"{ref}: token service {params['realm']} refused the credentials (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise AuthenticationError(
                f"{ref}: token service {params['realm']} answered HTTP {response.status_code}"
            )
        try:
            data = response.json()
            token = data.get("token") or data.get("access_token")
            expires_in = float(data.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise AuthenticationError(
                f"{ref}: token service {params['realm']} returned no token"
            )
        # Renew a little early rather than have a long blob transfer start with a stale token.
        return f"Bearer {token}", max(expires_in - 10, 1)

    def _raise_for_status(
        self, response: httpx.Response, ref: Reference, what: str
    ) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        detail = ""
        if response.request.method != "HEAD":
            detail = _registry_error_detail(
                _read_limited(response, 64 << 10, "", truncate=True)
            )
        detail = f" ({detail})" if detail else f" (HTTP {status})"
        if status in (401, 403):
            raise AuthenticationError(f"{ref}: access to {what} denied{detail}")
        if status == 404:
            raise NotFoundError(f"{ref}: {what} not found{detail}")
        raise RegistryError(f"{ref}: {what}: HTTP {status}{detail}")

    def _already_received(
        self, response: httpx.Response, received: int, ref: Reference, what: str
    ) -> int:
        """How many leading bytes of this response the consumer already has."""
        if not received:
            return 0
        if response.status_code == 200:
            return received  # Range ignored: the whole blob again, skip what we have
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match[1]) > received:
            raise RegistryError(
                f"{ref}: bad Content-Range for {what}: {response.headers.get('Content-Range')!r}"
            )
        return received - int(match[1])


class _Pieces:
    """Network reads (64 KiB) gathered into pieces of about BLOB_CHUNK bytes, each
    hashed and counted as it is handed on."""

    def __init__(self, hasher: Any, on_bytes: Callable[[int], None] | None) -> None:
        self._hasher = hasher
        self._on_bytes = on_bytes
        self._reads: list[bytes] = []
        self._size = 0

    def add(self, read: bytes) -> bytes:
        """The next piece once enough has arrived, else b"" (the read is kept)."""
        self._reads.append(read)
        self._size += len(read)
        return self.take() if self._size >= BLOB_CHUNK else b""

    def take(self) -> bytes:
        """Everything kept so far as one piece (b"" when nothing is)."""
        piece = b"".join(self._reads)
        self._reads.clear()
        self._size = 0
        if piece:
            self._hasher.update(piece)
            if self._on_bytes is not None:
                self._on_bytes(len(piece))
        return piece


def _as_reference(ref: Reference | str) -> Reference:
    return ref if isinstance(ref, Reference) else Reference.parse(ref)


def _basic(credentials: Credentials) -> str:
    token = base64.b64encode(
        f"{credentials.username}:{credentials.password}".encode()
    ).decode()
    return f"Basic {token}"


def _read_limited(
    response: httpx.Response, limit: int, what: str, *, truncate: bool = False
) -> bytes:
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > limit:
            if truncate:
                return bytes(data[:limit])
            raise RegistryError(f"{what} is larger than {limit} bytes")
    return bytes(data)


def _registry_error_detail(body: bytes) -> str:
    """'MANIFEST_UNKNOWN: manifest unknown' from the registry's JSON error body."""
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(
            f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
            for error in errors
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


def _manifest_media_type(body: Mapping[str, Any], response: httpx.Response) -> str:
    media_type = body.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    header = response.headers.get("Content-Type", "").split(";")[0].strip()
    if header in INDEX_TYPES or header in MANIFEST_TYPES:
        return header
    # mediaType is optional in OCI documents: fall back on their shape.
    return OCI_INDEX if "manifests" in body else OCI_MANIFEST


def _select_platform(index: Manifest, platform: Platform, ref: Reference) -> Descriptor:
    entries = index.body.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(f"{ref}: index {index.digest} has no manifest list")
    descriptors = [Descriptor.from_json(entry, ref) for entry in entries]
    candidates = [
        descriptor
        for descriptor in descriptors
        if descriptor.platform is not None
        and descriptor.platform.os == platform.os
        and descriptor.platform.architecture == platform.architecture
    ]
    wanted = platform.normalized_variant()
    for descriptor in candidates:
        assert descriptor.platform is not None
        if descriptor.platform.normalized_variant() == wanted:
            return descriptor
    # No variant asked for (e.g. plain "arm"): any build of the architecture will do.
    if candidates and platform.variant is None:
        return candidates[0]
    available = sorted({str(d.platform) for d in descriptors if d.platform is not None})
    raise PlatformNotFoundError(
        f"{ref}: no image for platform {platform} (available: {', '.join(available) or 'none'})"
    )


# --- pulling -------------------------------------------------------------------------


def pull_image(
    ref: Reference | str,
    dest: Path,
    *,
    client: RegistryClient,
    platform: Platform | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> PulledImage:
    """Pull ``ref`` for ``platform`` (default: this host) and extract its layers, in
    order and with whiteouts, into ``dest``: a staging folder, discarded on error."""
    ref = _as_reference(ref)
    platform = platform or Platform.host()
    _check_cancel(should_cancel, ref)
    image = client.resolve(ref, platform)
    tracker = _ProgressTracker(progress, sum(layer.size for layer in image.layers))
    for number, layer in enumerate(image.layers, 1):
        _check_cancel(should_cancel, ref)
        tracker.start_layer(
            f"layer {number}/{len(image.layers)} {layer.digest[:19]}", layer.size
        )
        # The download runs in extract_layer's producer thread; progress and cancel
        # callbacks (which may use the database) stay in this thread: the producer
        # only records chunk sizes, replayed here in order with a cancel check
        # before each one, as iter_blob itself would do.
        received: deque[int] = deque()
        chunks = client.iter_blob(ref, layer, on_bytes=received.append)

        def replay(received: deque[int] = received) -> None:
            while received:
                _check_cancel(should_cancel, ref)
                tracker.received(received.popleft())

        _extract_verified(chunks, Path(dest), ref, layer, replay)
        replay()
    return PulledImage(
        ref,
        image.digest,
        image.manifest_digest,
        tuple(layer.digest for layer in image.layers),
        tracker.total,
        platform,
    )


@dataclass
class _ProgressTracker:
    """Bytes accumulated over all layers (LocalAI restarts its count at each layer).

    A layer is extracted while it downloads, so "downloading" covers both; the last
    chunk of a layer is reported as "extracting", the tail end the user waits for.
    """

    callback: Callable[[Progress], None] | None
    total: int
    done: int = 0
    label: str = ""
    layer_end: int = 0

    def start_layer(self, label: str, size: int) -> None:
        self.label = label
        self.layer_end = self.done + size

    def received(self, size: int) -> None:
        self.done += size
        if self.callback is not None:
            phase = "extracting" if self.done >= self.layer_end else "downloading"
            self.callback(Progress(phase, self.label, self.done, self.total))


def _extract_verified(
    chunks: Iterator[bytes],
    dest: Path,
    ref: Reference,
    layer: Descriptor,
    on_piece: Callable[[], None] | None = None,
) -> None:
    try:
        extract_layer(chunks, dest, on_piece=on_piece)
    except ArchiveError as exc:
        # A corrupt download often breaks the decompressor before the digest can be
        # checked: read the rest, so a mismatch is reported as what it is.
        for _ in chunks:
            pass
        raise type(exc)(f"{ref}: layer {layer.digest}: {exc}") from exc


def pull_first(
    refs: Iterable[Reference | str],
    dest: Path,
    *,
    client: RegistryClient,
    platform: Platform | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> PulledImage:
    """Try each reference (primary, then mirrors) until one pulls; ``dest`` is emptied
    between attempts. Raises AllSourcesFailedError listing every failure."""
    failures: list[tuple[str, Exception]] = []
    for ref in refs:
        if failures:
            _empty_dir(Path(dest))
        try:
            return pull_image(
                ref,
                dest,
                client=client,
                platform=platform,
                progress=progress,
                should_cancel=should_cancel,
            )
        except (OCIError, ArchiveError) as exc:
            logger.warning("pull of %s failed: %s", ref, exc)
            failures.append((str(ref), exc))
    if not failures:
        raise ValueError("pull_first needs at least one reference")
    raise AllSourcesFailedError(failures)


def _check_cancel(should_cancel: Callable[[], bool] | None, ref: Reference) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"{ref}: cancelled")


def _empty_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
