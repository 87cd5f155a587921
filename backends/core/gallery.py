"""Backend galleries: parse LocalAI's YAML index of backends and fetch it from its sources.

A gallery document is a YAML sequence of mappings, one per backend. Entries share keys
through anchors and ``<<`` merge keys (a concrete build merges its meta and overrides
``name`` and ``uri``). A source is an ``https://``/``http://`` URL, a ``file://`` URL or
the ``github:owner/repo/path@ref`` shorthand, with mirrors tried in order.

No Django imports: the sync task, the resolver and the benchmarks use this module alone.
"""

from __future__ import annotations

import hashlib
import re
import time
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import yaml
from yaml.resolver import Resolver

# --- names -----------------------------------------------------------------------------

# Backend names become folder names under the backends path, so they must be a single
# safe path component.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_NAME_LENGTH = 255


def validate_name(value: object, what: str = "backend name") -> str:
    """Return ``value`` if it is a safe backend name, else raise ValueError saying why."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {_kind(value)}")
    if not value:
        raise ValueError(f"{what} is empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    # fullmatch, not match: "$" would also accept a trailing newline.
    if NAME_PATTERN.fullmatch(value) is None:
        raise ValueError(
            f"{what} {value!r} may only contain letters, digits, '.', '_' and '-'"
        )
    if value.startswith("."):
        # ".", ".." and hidden folders are never backend folders.
        raise ValueError(f"{what} {value!r} is not allowed: it may not start with '.'")
    return value


def validate_backend_id(value: str) -> str:
    """Return ``value`` if it is a safe ``name`` or ``gallery@name``, else ValueError."""
    gallery, _, name = value.rpartition("@")
    validate_name(name)
    if gallery:
        validate_name(gallery, "gallery name")
    return value


# --- entries ---------------------------------------------------------------------------

_NO_CAPABILITIES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GalleryEntry:
    """One backend of a gallery, with LocalAI's key names."""

    name: str
    uri: str = ""
    alias: str = ""
    description: str = ""
    license: str = ""
    icon: str = ""
    tags: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    # capability -> name of a concrete entry. Read-only; excluded from the hash because
    # a mapping has none (equality still compares it).
    capabilities: Mapping[str, str] = field(default=_NO_CAPABILITIES, hash=False)
    version: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        # Callers may pass a plain dict; keep our own read-only copy so a frozen entry
        # cannot change under a shared reference.
        if not isinstance(self.capabilities, MappingProxyType):
            object.__setattr__(
                self, "capabilities", MappingProxyType(dict(self.capabilities))
            )

    @property
    def is_meta(self) -> bool:
        """A meta backend only points at concrete builds: it has a map and no artifact."""
        return bool(self.capabilities) and not self.uri

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (``dataclasses.asdict`` cannot copy the read-only map)."""
        return {
            "name": self.name,
            "uri": self.uri,
            "alias": self.alias,
            "description": self.description,
            "license": self.license,
            "icon": self.icon,
            "tags": list(self.tags),
            "urls": list(self.urls),
            "mirrors": list(self.mirrors),
            "capabilities": dict(self.capabilities),
            "version": self.version,
            "sha256": self.sha256,
        }


@dataclass
class ParseResult:
    entries: list[GalleryEntry]
    # One message per skipped entry, naming the gallery and the entry.
    problems: list[str]
    # One message per name that occurs more than once (the first occurrence was kept).
    duplicates: list[str]


class GalleryError(Exception):
    """The whole document is unusable (the caller keeps its last good entries)."""


class _EntryProblem(Exception):
    """Why one entry is skipped."""


def _plain_text_resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    keep = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")
    table: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
    for first, resolvers in Resolver.yaml_implicit_resolvers.items():
        kept = [(tag, regexp) for tag, regexp in resolvers if tag in keep]
        if kept:
            table[first] = kept
    return table


class GalleryLoader(yaml.CSafeLoader):
    """libyaml's C loader, keeping every scalar as the text that was written.

    Every field of an entry is a string, so YAML 1.1's implicit typing only does harm:
    ``version: 1.10`` would become the float 1.1 and ``license: no`` the boolean False.
    Only null (an empty value) and the ``<<`` merge key keep their special meaning. This
    matches LocalAI, whose YAML decoder keeps the written text for string fields.
    """

    yaml_implicit_resolvers = _plain_text_resolvers()


_STRING_FIELDS = ("uri", "alias", "description", "license", "icon", "version", "sha256")
_LIST_FIELDS = ("tags", "urls", "mirrors")
# The database columns these land in; a longer value would break the whole sync there.
_MAX_LENGTH = {"uri": 2000, "icon": 2000, "license": 255, "version": 255}
_HEX_DIGITS = frozenset("0123456789abcdef")


def parse_gallery(data: bytes | str, gallery: str) -> ParseResult:
    """Parse a gallery document; entry problems are reported, never fatal."""
    return parse_entries(_load_yaml(data, gallery), gallery)


def parse_entries(data: object, gallery: str) -> ParseResult:
    """Build entries from an already loaded document (``FetchResult.data``).

    Entries are numbered from 1 in messages. Names compare case-insensitively, as LocalAI
    looks them up that way: of ``Foo`` and ``foo`` only the first is kept.
    """
    problem = _document_problem(data)
    if problem:
        raise GalleryError(f"gallery {gallery}: {problem}")
    assert isinstance(data, list)

    entries: list[GalleryEntry] = []
    problems: list[str] = []
    kept: dict[str, tuple[int, str]] = {}  # lower-cased name -> (number, name) kept
    repeats: dict[str, list[int]] = {}
    shared = _Shared()
    for number, raw in enumerate(data, start=1):
        label = f"gallery {gallery}, entry #{number}"
        try:
            name = _entry_name(raw)
            label = f"gallery {gallery}, entry {name!r} (#{number})"
            entry = _build_entry(raw, name, shared)
        except _EntryProblem as exc:
            problems.append(f"{label}: {exc}")
            continue
        key = name.lower()  # names are ASCII (NAME_PATTERN), so lower() is enough
        if key in kept:
            repeats.setdefault(key, []).append(number)
            continue
        kept[key] = (number, name)
        entries.append(entry)

    duplicates = []
    for key, numbers in repeats.items():
        first, name = kept[key]
        later = ", ".join(f"#{number}" for number in numbers)
        duplicates.append(
            f"gallery {gallery}: name {name!r} (#{first}) occurs again as entry {later}; "
            "the first one is kept"
        )
    return ParseResult(entries=entries, problems=problems, duplicates=duplicates)


def _entry_name(raw: object) -> str:
    if not isinstance(raw, dict):
        raise _EntryProblem(f"expected a mapping, got {_kind(raw)}")
    name = raw.get("name")
    if name is None or name == "":
        raise _EntryProblem("has no name")
    try:
        return validate_name(name, "name")
    except ValueError as exc:
        raise _EntryProblem(str(exc)) from None


class _Shared:
    """Lists and maps already converted in this document, by identity.

    Entries merged from an anchor share the anchor's very objects (a meta's capabilities
    map is reused by each of its concrete builds), so each is checked once per document.
    The document holds every object until parsing ends, so an id() is never reused here.
    """

    def __init__(self) -> None:
        self.lists: dict[int, tuple[str, ...]] = {}
        self.maps: dict[int, Mapping[str, str]] = {}

    def texts(self, value: object, key: str) -> tuple[str, ...]:
        if not value:
            return _texts(value, key)
        found = self.lists.get(id(value))
        if found is None:
            found = self.lists[id(value)] = _texts(value, key)
        return found

    def capabilities(self, value: object) -> Mapping[str, str]:
        if not value:
            return _capabilities(value)
        found = self.maps.get(id(value))
        if found is None:
            found = self.maps[id(value)] = _capabilities(value)
        return found


def _build_entry(raw: dict[Any, Any], name: str, shared: _Shared) -> GalleryEntry:
    strings = {key: _text(raw.get(key), key) for key in _STRING_FIELDS}
    # Names are taken exactly as written (no stripping), like the entry's own name.
    strings["alias"] = _scalar(raw.get("alias"), "alias")
    for key, limit in _MAX_LENGTH.items():
        if len(strings[key]) > limit:
            raise _EntryProblem(f"{key} is longer than {limit} characters")
    if strings["alias"]:
        # An alias names the installed backend too, so it obeys the same rules as a name.
        _check_name(strings["alias"], "alias")
    sha256 = strings["sha256"].lower()
    if sha256 and (len(sha256) != 64 or not _HEX_DIGITS.issuperset(sha256)):
        raise _EntryProblem("sha256 must be 64 hexadecimal digits")
    lists = {key: shared.texts(raw.get(key), key) for key in _LIST_FIELDS}
    return GalleryEntry(
        name=name,
        uri=strings["uri"],
        alias=strings["alias"],
        description=strings["description"],
        license=strings["license"],
        icon=strings["icon"],
        tags=lists["tags"],
        urls=lists["urls"],
        mirrors=lists["mirrors"],
        capabilities=shared.capabilities(raw.get("capabilities")),
        version=strings["version"],
        sha256=sha256,
    )


def _text(value: object, key: str) -> str:
    """A string field without surrounding blanks; empty or absent is ""."""
    return _scalar(value, key).strip()


def _scalar(value: object, key: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    # GalleryLoader never produces these, but a document loaded elsewhere (a plain
    # CSafeLoader) may hold numbers or booleans where text was meant: accept them as
    # text rather than reject the entry. Floats may already have lost digits (1.10).
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise _EntryProblem(f"{key} must be a string, not {_kind(value)}")


def _texts(value: object, key: str) -> tuple[str, ...]:
    """A list-of-strings field; empty or absent is ()."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _EntryProblem(f"{key} must be a list of strings, not {_kind(value)}")
    items = []
    for item in value:
        if item is None or isinstance(item, list | dict):
            raise _EntryProblem(f"{key} must be a list of strings, found {_kind(item)}")
        items.append(_text(item, key))
    return tuple(items)


def _capabilities(value: object) -> Mapping[str, str]:
    if value is None:
        return _NO_CAPABILITIES
    if not isinstance(value, dict):
        raise _EntryProblem(f"capabilities must be a mapping, not {_kind(value)}")
    result: dict[str, str] = {}
    for capability, target in value.items():
        if capability is None or isinstance(capability, list | dict | tuple):
            raise _EntryProblem(f"capabilities has a key that is {_kind(capability)}")
        key = _scalar(capability, "capability")
        if not key:
            raise _EntryProblem("capabilities has an empty key")
        if target is None or isinstance(target, list | dict):
            raise _EntryProblem(
                f"capability {key!r} must name a backend, not {_kind(target)}"
            )
        # Targets are installed as folders, so they must be safe names like any entry's.
        result[key] = _check_name(_scalar(target, key), f"capability {key!r} target")
    return MappingProxyType(result) if result else _NO_CAPABILITIES


def _check_name(value: str, what: str) -> str:
    try:
        return validate_name(value, what)
    except ValueError as exc:
        raise _EntryProblem(str(exc)) from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _load_yaml(data: bytes | str, gallery: str) -> object:
    try:
        return yaml.load(data, Loader=GalleryLoader)
    except yaml.YAMLError as exc:
        raise GalleryError(f"gallery {gallery}: {_describe_yaml_error(exc)}") from None


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    # Built from the problem and line only: the exception text can quote the document.
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if mark is not None:
            return f"invalid YAML at line {mark.line + 1}: {what}"
        return f"invalid YAML: {what}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"invalid YAML: {exc.reason} at byte {exc.position}"
    return "invalid YAML"


def _document_problem(data: object) -> str | None:
    """Why a loaded document cannot be a gallery, or None if it is a non-empty list.

    An empty list is refused as well: a sync must never replace a catalogue with nothing
    because a source briefly served ``[]``.
    """
    if isinstance(data, list):
        return None if data else "the document is an empty list"
    if data is None:
        return "the document is empty"
    return f"the document is {_kind(data)}, not a list of backends"


# --- sources ---------------------------------------------------------------------------

ALLOWED_SCHEMES = ("https", "http", "file", "github")
USER_AGENT = "localai-admin"
# The real index is under 300 KB; anything far larger is a wrong URL or hostile.
MAX_GALLERY_BYTES = 64 * 1024 * 1024
_GITHUB_RAW = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class FetchResult:
    body: bytes = field(repr=False)
    # The candidate that answered, as configured (before github: expansion). It may hold
    # credentials: show redact_url(source) to people.
    source: str
    etag: str
    sha256: str
    # True on HTTP 304, or when the body's sha256 equals the one the caller already has:
    # the caller keeps its entries and skips parsing (``data`` is then None).
    not_modified: bool
    # The loaded document (a non-empty list) for parse_entries, so the body that was
    # checked is not parsed a second time.
    data: object = field(default=None, repr=False, compare=False)
    # Candidates that failed before this one answered ("<url>: <why>"), for the UI.
    errors: tuple[str, ...] = ()


class GalleryFetchError(GalleryError):
    """Every candidate failed; the message lists each one and why."""


class _SourceFailed(Exception):
    """Why one candidate could not be used; the next one is tried."""


def expand_source(url: str) -> str:
    """The URL to read for a configured source, or ValueError for an unusable one."""
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ALLOWED_SCHEMES:
        raise ValueError(
            f"unsupported source {redact_url(url)!r}: use one of "
            + ", ".join(f"{allowed}:" for allowed in ALLOWED_SCHEMES)
        )
    if scheme == "github":
        return _expand_github(rest)
    parts = urlsplit(url)
    if scheme == "file":
        # file://host/... would be a network share; only local paths are meant.
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(
                f"file source {redact_url(url)!r} must be file:///absolute/path"
            )
        return url
    if not parts.hostname:
        raise ValueError(f"source {redact_url(url)!r} has no host")
    return url


def _expand_github(rest: str) -> str:
    # github:owner/repo/path/to/index.yaml@ref (also github://...); ref defaults to main.
    # The ref is what follows the last "@", so refs like "release/v1" work.
    spec = rest.removeprefix("//")
    location, at, ref = spec.rpartition("@")
    if not at:
        location, ref = spec, "main"
    owner, _, remainder = location.partition("/")
    repo, _, path = remainder.partition("/")
    if not (owner and repo and path and ref) or path.endswith("/"):
        raise ValueError(
            f"github source {'github:' + spec!r} must be github:owner/repo/path@ref"
        )
    return f"{_GITHUB_RAW}/{owner}/{repo}/{ref}/{path}"


def candidates(url: str, mirrors: Sequence[str]) -> list[str]:
    """The sources to try in order: the primary, then each mirror, without blanks or repeats."""
    result: list[str] = []
    for source in (url, *mirrors):
        if not isinstance(source, str):
            # Mirrors come from JSON configuration; say so rather than crash on .strip().
            raise ValueError(f"gallery source must be a string, not {_kind(source)}")
        source = source.strip()
        if source and source not in result:
            result.append(source)
    return result


def redact_url(url: str) -> str:
    """``url`` without user info and query values, safe for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{key}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def fetch_gallery(
    url: str,
    mirrors: Sequence[str] = (),
    *,
    etag: str = "",
    sha256: str = "",
    client: httpx.Client | None = None,
    timeout: float = 60.0,
) -> FetchResult:
    """Fetch a gallery from the first candidate that serves a usable document.

    ``etag`` and ``sha256`` describe the copy the caller already holds: an HTTP 304 or
    an identical body returns ``not_modified=True``. A body that is not a non-empty YAML
    list (an HTML error page behind a 200, ``[]``, an empty file) fails that candidate,
    so the next mirror is tried.
    """
    sources = candidates(url, mirrors)
    if not sources:
        raise GalleryFetchError("the gallery has neither a URL nor mirrors")
    failures: list[str] = []
    with ExitStack() as stack:
        http = client
        for source in sources:
            try:
                target = expand_source(source)
                if urlsplit(target).scheme.lower() == "file":
                    body, new_etag = _read_file(target), ""
                else:
                    if http is None:
                        # Created only when needed: a file:// gallery loads no TLS setup.
                        http = stack.enter_context(
                            httpx.Client(
                                headers={"User-Agent": USER_AGENT}, timeout=timeout
                            )
                        )
                    response = _read_http(http, target, etag, timeout)
                    if response is None:
                        return FetchResult(
                            b"", source, etag, sha256, True, None, tuple(failures)
                        )
                    body, new_etag = response
                return _accept(body, source, new_etag, sha256, tuple(failures))
            except (ValueError, _SourceFailed) as exc:
                failures.append(f"{redact_url(source)}: {_scrub(str(exc), source)}")
    raise GalleryFetchError(
        f"all {len(sources)} source(s) failed: " + "; ".join(failures)
    )


def _accept(
    body: bytes, source: str, etag: str, known_sha256: str, failures: tuple[str, ...]
) -> FetchResult:
    digest = hashlib.sha256(body).hexdigest()
    if known_sha256 and digest == known_sha256.lower():
        return FetchResult(body, source, etag, digest, True, None, failures)
    try:
        data = yaml.load(body, Loader=GalleryLoader)
    except yaml.YAMLError as exc:
        raise _SourceFailed(_describe_yaml_error(exc)) from None
    problem = _document_problem(data)
    if problem:
        raise _SourceFailed(problem)
    return FetchResult(body, source, etag, digest, False, data, failures)


def _read_file(url: str) -> bytes:
    path = Path(urllib.request.url2pathname(urlsplit(url).path))
    try:
        if path.stat().st_size > MAX_GALLERY_BYTES:
            raise _SourceFailed(f"larger than {MAX_GALLERY_BYTES} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise _SourceFailed(f"file not found: {path}") from None
    except IsADirectoryError:
        raise _SourceFailed(f"is a directory: {path}") from None
    except PermissionError:
        raise _SourceFailed(f"permission denied: {path}") from None
    except OSError as exc:
        raise _SourceFailed(f"cannot read {path}: {exc.strerror}") from None


def _read_http(
    client: httpx.Client, url: str, etag: str, timeout: float
) -> tuple[bytes, str] | None:
    """(body, etag) of a successful GET, or None when the server says 304 Not Modified."""
    headers = {"User-Agent": USER_AGENT}
    if etag:
        headers["If-None-Match"] = etag
    # httpx's timeout bounds each network operation; the deadline bounds the transfer,
    # so a server trickling bytes cannot hold a sync forever.
    deadline = time.monotonic() + timeout
    try:
        with client.stream(
            "GET", url, headers=headers, follow_redirects=True, timeout=timeout
        ) as response:
            status = response.status_code
            if status == 304 and etag:
                return None
            if not 200 <= status < 300:
                # Never parse an error page as an index.
                raise _SourceFailed(f"HTTP {status} {response.reason_phrase}".rstrip())
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_GALLERY_BYTES:
                raise _SourceFailed(f"larger than {MAX_GALLERY_BYTES} bytes")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_GALLERY_BYTES:
                    raise _SourceFailed(f"larger than {MAX_GALLERY_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise _SourceFailed(f"timed out after {timeout:g}s")
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("etag", "")
    except httpx.TimeoutException:
        raise _SourceFailed(f"timed out after {timeout:g}s") from None
    except httpx.ConnectError as exc:
        raise _SourceFailed(f"connection failed: {exc}") from None
    except httpx.TooManyRedirects:
        raise _SourceFailed("too many redirects") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _SourceFailed(f"{type(exc).__name__}: {exc}") from None


def _scrub(message: str, url: str) -> str:
    """Remove the credentials of ``url`` from an error text that may quote it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return message
    secrets = [parts.netloc.rpartition("@")[0]] if "@" in parts.netloc else []
    if parts.password:
        secrets.append(parts.password)
    secrets += [value for _, value in parse_qsl(parts.query) if value]
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message
