"""The registry transport: distribution v2 requests on one httpx client.

Plain http for loopback and listed insecure registries, https otherwise; auth by
``RegistryAuth``; redirects (blob storage on S3 or a CDN) followed by httpx, which drops
the Authorization header when a redirect leaves the registry's origin; one retry loop,
with a doubling backoff, for connection errors and 5xx/429 answers on every request; a
blob transfer cut mid-way resumed with a Range request.

Every call takes an optional ``transfer.Watch`` (the job's deadlines and cancel switch;
without one, the stall period is the client's read timeout): a request that stalls is
one failed attempt, and a source that stalls ``transfer.STALL_ATTEMPTS`` times fails
with ``RegistryStalled``; a blob stalled mid-way resumes with a Range request, within
the same bound.

``mirrors`` maps a registry host to a pull-through mirror (``{"ghcr.io":
"http://mirror:5000"}``): each request for an image of that host goes to the mirror
first (same path, no upstream credentials: the mirror holds its own), and to the
registry itself when the mirror fails (unreachable, refused by the source policy,
stalled, or any answer but success). Digests are checked the same whichever answered.
A failed mirror is skipped for ``MIRROR_RETRY_SECONDS`` so a dead one costs one try.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import json
import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from typing import Any

import httpx

from backends.core.oci.auth import RETRY_STATUSES, Credentials, RegistryAuth
from backends.core.oci.errors import (
    AuthenticationError,
    DigestMismatchError,
    NotFoundError,
    OCIError,
    RegistryError,
    RegistryStalled,
)
from backends.core.oci.manifest import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    Descriptor,
    Manifest,
    ResolvedImage,
    image_layers,
    media_type_of,
    select_platform,
)
from backends.core.oci.reference import (
    Platform,
    Reference,
    as_reference,
    digest_of,
    is_digest,
)
from backends.core.policy import SourcePolicy, SourceRefused, default_policy
from backends.core.redact import redact_uri, scrub
from backends.core.transfer import (
    DEFAULT_STALL_SECONDS,
    POLL_SECONDS,
    STALL_ATTEMPTS,
    BodyTooLarge,
    Stalled,
    Watch,
    read_capped,
    stalled,
)

logger = logging.getLogger(__name__)

# A manifest is a small JSON document; refusing big ones bounds memory (the OCI
# distribution spec suggests registries accept at least 4 MiB).
MAX_MANIFEST_BYTES = 4 << 20
# Blob bytes are handed on (hashed, counted, decompressed) in pieces of about this
# size: the network gives 64 KiB reads, and in extraction every piece costs thread
# switches between the downloading thread and the one writing files.
BLOB_CHUNK = 256 << 10
_MAX_INDEX_DEPTH = 3
_MAX_REDIRECTS = 5
_MAX_BACKOFF = 8.0
_MAX_RESUMES = 5
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
MIRROR_RETRY_SECONDS = 60.0


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings (its CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR),
    built once per process: loading the CA bundle takes tens of milliseconds, more
    than pulling a small image from a nearby registry."""
    return httpx.create_ssl_context()


def refuse_oversized(ref: Reference, descriptor: Descriptor, limit: int) -> None:
    """RegistryError when a small blob (a payload, a bundle) announces more than
    ``limit`` bytes: refused before a byte is read, wherever it is stored."""
    if descriptor.size > limit:
        raise RegistryError(
            f"{ref}: blob {descriptor.digest} is {descriptor.size} bytes, over the {limit} allowed"
        )


class RegistryClient:
    """A registry v2 client. Thread-safe; reuse one for many pulls (connection pool,
    token cache). ``retries`` extra attempts follow a failed request with a doubling
    ``backoff``; ``policy`` says which addresses it may connect to."""

    def __init__(
        self,
        *,
        credentials: Mapping[str, Credentials] | None = None,
        insecure: Iterable[str] = (),
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        policy: SourcePolicy | None = None,
        mirrors: Mapping[str, str] | None = None,
    ) -> None:
        self._insecure = frozenset(insecure)
        self._mirrors = {host: url.rstrip("/") for host, url in (mirrors or {}).items()}
        # Mirror base URL -> monotonic time until which it is not tried again.
        self._mirror_down: dict[str, float] = {}
        # What a registry's error body must not repeat: it may echo what it was sent.
        self._secrets = tuple(
            secret
            for cred in (credentials or {}).values()
            for secret in (cred.password, f"{cred.username}:{cred.password}")
        )
        self.retries = retries
        self.backoff = backoff
        self._http = httpx.Client(
            auth=RegistryAuth(credentials),
            # Every connection (the registry, each redirect hop, the token realm) is
            # checked against the source policy.
            transport=(policy or default_policy()).transport(verify=tls_context()),
            timeout=timeout,
            follow_redirects=True,
            max_redirects=_MAX_REDIRECTS,
            headers={"User-Agent": "localai-admin"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def watch(self, should_cancel: Callable[[], bool] | None = None) -> Watch:
        """A watch with this client's read timeout as its stall period."""
        stall = self._http.timeout.read or DEFAULT_STALL_SECONDS
        return Watch(should_cancel, stall_seconds=stall)

    def base_url(self, registry: str) -> str:
        host = _split_host(registry)
        plain = (
            _is_loopback(host) or registry in self._insecure or host in self._insecure
        )
        return f"{'http' if plain else 'https'}://{registry}"

    # -- manifests --

    def resolve(
        self,
        ref: Reference | str,
        platform: Platform | None = None,
        *,
        watch: Watch | None = None,
    ) -> ResolvedImage:
        """Manifest (through the index, for ``platform``) and layer list of ``ref``."""
        ref = as_reference(ref)
        platform = platform or Platform.host()
        top = manifest = self.get_manifest(ref, watch=watch)
        for _ in range(_MAX_INDEX_DEPTH):
            if manifest.media_type not in INDEX_TYPES:
                break
            manifest = self.get_manifest(
                ref, select_platform(manifest, platform, ref).digest, watch=watch
            )
        return ResolvedImage(
            ref, top.digest, manifest.digest, image_layers(manifest, ref)
        )

    def get_manifest(
        self,
        ref: Reference | str,
        reference: str | None = None,
        *,
        watch: Watch | None = None,
    ) -> Manifest:
        """The manifest or index ``reference`` (default: the ref's tag or digest)
        names, verified against the digest it was asked by or announced with."""
        ref = as_reference(ref)
        reference = reference or ref.reference
        url = f"{self._repository_url(ref)}/manifests/{reference}"
        what = f"manifest {reference}"
        watch = watch or self.watch()

        def fetch() -> tuple[httpx.Response, bytes]:
            with closing(
                self._request(
                    ref, "GET", url, {"Accept": MANIFEST_ACCEPT}, watch, stream=True
                )
            ) as response:
                _raise_for_status(response, ref, what, watch, self._secrets)
                raw = _read_limited(
                    response, MAX_MANIFEST_BYTES, f"{ref}: {what}", watch=watch
                )
            return response, raw

        # In a helper thread when the caller must keep polling for a cancel.
        response, raw = watch.call(fetch)
        digest = digest_of(raw)
        expected = (
            reference
            if is_digest(reference)
            else response.headers.get("Docker-Content-Digest", "")
        )
        if is_digest(expected):
            # In the algorithm it names: an index may point at a platform manifest
            # by sha512, and an unchecked one could be any manifest the registry likes.
            algorithm = expected.partition(":")[0]
            got = digest if algorithm == "sha256" else digest_of(raw, algorithm)
            if got != expected:
                raise DigestMismatchError(
                    f"{ref}: digest mismatch for {what}: expected {expected}, got {got}"
                )
        try:
            body = json.loads(raw)
        except ValueError:
            raise RegistryError(f"{ref}: {what} is not JSON") from None
        if not isinstance(body, dict):
            raise RegistryError(f"{ref}: {what} is not a JSON object")
        content_type = response.headers.get("Content-Type", "")
        return Manifest(media_type_of(body, content_type), digest, body, raw)

    def head_digest(self, ref: Reference | str, *, watch: Watch | None = None) -> str:
        """Digest the reference points to now (Docker-Content-Digest of a HEAD)."""
        ref = as_reference(ref)
        url = f"{self._repository_url(ref)}/manifests/{ref.reference}"
        watch = watch or self.watch()

        def head() -> str:
            with closing(
                self._request(ref, "HEAD", url, {"Accept": MANIFEST_ACCEPT}, watch)
            ) as response:
                _raise_for_status(
                    response, ref, f"manifest {ref.reference}", watch, self._secrets
                )
                return str(response.headers.get("Docker-Content-Digest", ""))

        digest = watch.call(head)
        if is_digest(digest):
            return digest
        # Some registries omit the header on HEAD.
        return self.get_manifest(ref, watch=watch).digest

    def referrers(
        self, ref: Reference | str, digest: str, *, watch: Watch | None = None
    ) -> list[dict[str, Any]]:
        """The descriptors of the artifacts (signatures, SBOMs) whose subject is
        ``digest``: from the OCI 1.1 referrers API, else from the referrers tag schema
        (an index tagged ``sha256-<hex>``) on registries without the API. An image
        nothing refers to gives []."""
        ref = as_reference(ref)
        if not is_digest(digest):
            raise RegistryError(f"{ref}: malformed digest {digest!r}")
        url = f"{self._repository_url(ref)}/referrers/{digest}"
        what = f"referrers of {digest}"
        watch = watch or self.watch()

        def fetch() -> tuple[int, bytes]:
            with closing(
                self._request(
                    ref, "GET", url, {"Accept": OCI_INDEX}, watch, stream=True
                )
            ) as response:
                # 404 (and 400/405 on some registries): no referrers API here.
                if response.status_code in (400, 404, 405):
                    return response.status_code, b""
                _raise_for_status(response, ref, what, watch, self._secrets)
                return 200, _read_limited(
                    response, MAX_MANIFEST_BYTES, f"{ref}: {what}", watch=watch
                )

        status, raw = watch.call(fetch)
        if status == 200:
            try:
                body = json.loads(raw)
            except ValueError:
                raise RegistryError(f"{ref}: {what} is not JSON") from None
        else:
            tag = digest.replace(":", "-", 1)
            try:
                body = self.get_manifest(ref, tag, watch=watch).body
            except NotFoundError:
                return []
        entries = body.get("manifests") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise RegistryError(f"{ref}: {what}: not an index")
        return [entry for entry in entries if isinstance(entry, dict)]

    def read_small_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        limit: int,
        *,
        watch: Watch | None = None,
    ) -> bytes:
        """A blob of at most ``limit`` bytes (a signature payload, a config), whole and
        checked against its digest; a bigger announced size is refused unread."""
        refuse_oversized(ref, descriptor, limit)
        return b"".join(self.iter_blob(ref, descriptor, watch=watch))

    # -- blobs --

    def iter_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        *,
        on_bytes: Callable[[int], None] | None = None,
        watch: Watch | None = None,
    ) -> Iterator[bytes]:
        """Yield the blob's bytes as they arrive, in pieces of about BLOB_CHUNK bytes
        (``on_bytes`` gets each piece's size); raise DigestMismatchError at the end if
        they are not what the descriptor promised. A transfer cut or stalled mid-way
        resumes with a Range request, so the consumer just sees one continuous stream.

        The stall and cancel checks run on every network read, not per piece. Meant
        to be read in a thread other than the watch's (``pull_image`` reads it in the
        extraction's producer thread): a cancel there shuts the socket down."""
        watch = watch or self.watch()
        algorithm, _, expected = descriptor.digest.partition(":")
        hasher = hashlib.new(algorithm)
        url = f"{self._repository_url(ref)}/blobs/{descriptor.digest}"
        what = f"blob {descriptor.digest}"
        received = 0
        resumes = 0
        stalls = 0
        # What arrived before a cut is handed on before resuming.
        pieces = _Pieces(hasher, on_bytes)
        while True:
            headers = {"Accept-Encoding": "identity"}
            if received:
                headers["Range"] = f"bytes={received}-"
            with closing(
                self._request(ref, "GET", url, headers, watch, stream=True)
            ) as response:
                _raise_for_status(response, ref, what, watch, self._secrets)
                skip = _already_received(response, received, ref, what)
                try:
                    for chunk in watch.read(response, raw=True):
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
                except Stalled as exc:
                    if piece := pieces.take():
                        yield piece
                    stalls += 1
                    if stalls >= STALL_ATTEMPTS:
                        raise RegistryStalled(f"{ref}: {exc}") from exc
                    logger.info("%s: %s, resuming", ref, exc)
                    continue
                except httpx.TransportError as exc:
                    if piece := pieces.take():
                        yield piece
                    resumes += 1
                    if resumes > _MAX_RESUMES:
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
                    self._sleep(resumes - 1, watch)
                    continue
            break
        if piece := pieces.take():
            yield piece
        if received != descriptor.size or hasher.hexdigest() != expected:
            raise DigestMismatchError(
                f"{ref}: digest mismatch for {what}: got {algorithm}:{hasher.hexdigest()} ({received} bytes)"
            )

    # -- HTTP plumbing --

    def _repository_url(self, ref: Reference) -> str:
        return f"{self.base_url(ref.registry)}/v2/{ref.repository}"

    def _request(
        self,
        ref: Reference,
        method: str,
        url: str,
        headers: Mapping[str, str],
        watch: Watch,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """Send (with auth, following redirects); connection errors, stalls and
        5xx/429 answers, the token service's included, are retried (a stall at most
        STALL_ATTEMPTS times in all). The last answer is returned whatever its status;
        errors name ``ref``. A request for a mirrored registry goes to its mirror first
        (see the module's docstring)."""
        mirror = self._mirror_for(ref)
        if mirror:
            mirrored = mirror + url.removeprefix(self.base_url(ref.registry))
            try:
                response = self._send(
                    ref, method, mirrored, headers, watch, stream=stream, retries=0
                )
            except (OCIError, SourceRefused) as exc:  # down, stalled, not allowed
                self._mirror_failed(mirror, ref, str(exc))
            else:
                if response.status_code in (200, 206):
                    return response
                response.close()
                # A 404 is not the mirror's fault (the tag may be newer upstream than
                # its cache): fall back for this request without skipping the mirror.
                if response.status_code != 404:
                    self._mirror_failed(
                        mirror, ref, f"{method} answered {response.status_code}"
                    )
        return self._send(ref, method, url, headers, watch, stream=stream)

    def _mirror_for(self, ref: Reference) -> str:
        mirror = self._mirrors.get(ref.registry, "")
        if mirror and self._mirror_down.get(mirror, 0.0) > time.monotonic():
            return ""
        return mirror

    def _mirror_failed(self, mirror: str, ref: Reference, reason: str) -> None:
        logger.warning(
            "%s: mirror %s failed (%s); pulling from %s",
            ref,
            redact_uri(mirror),
            scrub(reason, self._secrets),
            ref.registry,
        )
        self._mirror_down[mirror] = time.monotonic() + MIRROR_RETRY_SECONDS

    def _send(
        self,
        ref: Reference,
        method: str,
        url: str,
        headers: Mapping[str, str],
        watch: Watch,
        *,
        stream: bool = False,
        retries: int | None = None,
    ) -> httpx.Response:
        retries = self.retries if retries is None else retries
        attempt = 0
        stalls = 0
        while True:
            watch.check()
            request = self._http.build_request(
                method,
                url,
                headers=headers,
                timeout=watch.timeout,
                extensions=watch.extensions,
            )
            try:
                response = self._http.send(request, stream=stream)
            except AuthenticationError as exc:
                raise AuthenticationError(f"{ref}: {exc}") from exc
            except (httpx.TimeoutException, Stalled) as exc:
                watch.check()
                stalls += 1
                reason = (
                    exc
                    if isinstance(exc, Stalled)
                    else stalled(exc.request.url, watch.stall_seconds)
                )
                if stalls >= STALL_ATTEMPTS or attempt >= retries:
                    raise RegistryStalled(f"{ref}: {reason}") from exc
                logger.info("%s: %s, retrying", ref, reason)
            except httpx.TransportError as exc:
                watch.check()  # a cancel shut the socket: not a network failure
                if attempt >= retries:
                    raise RegistryError(f"{ref}: {method} {url} failed: {exc}") from exc
                logger.info("%s: %s %s failed (%s), retrying", ref, method, url, exc)
            except httpx.RequestError as exc:  # too many redirects and the like
                raise RegistryError(f"{ref}: {method} {url} failed: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt >= retries:
                    return response
                response.close()
                logger.info(
                    "%s: %s %s answered %s, retrying",
                    ref,
                    method,
                    url,
                    response.status_code,
                )
            self._sleep(attempt, watch)
            attempt += 1

    def _sleep(self, attempt: int, watch: Watch) -> None:
        # In slices, so that a cancel during the backoff is seen at once.
        end = time.monotonic() + min(self.backoff * 2**attempt, _MAX_BACKOFF)
        while (left := end - time.monotonic()) > 0:
            watch.check()
            time.sleep(min(left, POLL_SECONDS))


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


def _raise_for_status(
    response: httpx.Response,
    ref: Reference,
    what: str,
    watch: Watch,
    secrets: Iterable[str] = (),
) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    detail = ""
    if response.request.method != "HEAD":
        detail = _registry_error_detail(
            _read_limited(response, 64 << 10, "", empty_if_larger=True, watch=watch),
            [*secrets, *_sent_credentials(response.request)],
        )
    detail = f" ({detail})" if detail else f" (HTTP {status})"
    if response.url.host != _split_host(ref.registry).strip("[]").lower():
        # A redirect target or the token service answered: say which (the host only,
        # as a presigned URL's query is a credential).
        detail += f" from {response.url.host}"
    if status in (401, 403):
        raise AuthenticationError(f"{ref}: access to {what} denied{detail}")
    if status == 404:
        raise NotFoundError(f"{ref}: {what} not found{detail}")
    raise RegistryError(f"{ref}: {what}: HTTP {status}{detail}")


def _already_received(
    response: httpx.Response, received: int, ref: Reference, what: str
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


def _read_limited(
    response: httpx.Response,
    limit: int,
    what: str,
    *,
    empty_if_larger: bool = False,
    watch: Watch,
) -> bytes:
    """A small body (a manifest, an error document), at most ``limit`` bytes; a larger
    one is an error, or with ``empty_if_larger`` nothing (an error body that large is
    no registry's error document: cut, its JSON would not parse anyway)."""
    try:
        # The attempt's own stall rule bounds the time: no deadline of its own here.
        return read_capped(response, watch, max_bytes=limit, deadline=math.inf)
    except BodyTooLarge:
        if empty_if_larger:
            return b""
        raise RegistryError(f"{what} is larger than {limit} bytes") from None
    except Stalled as exc:
        # A body is read once its headers came: a stall here is the attempt's end.
        raise RegistryStalled(f"{what or 'registry'}: {exc}") from exc


def _registry_error_detail(body: bytes, secrets: Iterable[str] = ()) -> str:
    """'MANIFEST_UNKNOWN: manifest unknown' from the registry's JSON error body, without
    any of ``secrets`` (a hostile or careless registry may echo the credentials)."""
    try:
        errors = json.loads(body)["errors"]
        detail = "; ".join(
            f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
            for error in errors
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
    return scrub(detail, secrets)


def _sent_credentials(request: httpx.Request) -> list[str]:
    """The credential the request carried (a bearer token, or Basic's base64 pair)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if not value:
        return []
    if scheme.lower() == "basic":
        try:
            return [value, base64.b64decode(value).decode()]
        except (ValueError, UnicodeDecodeError):
            return [value]
    return [value]
