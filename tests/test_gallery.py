"""Gallery parsing and fetching (backends/gallery.py): no Django, no network beyond 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from backends.core import gallery
from backends.core.gallery import (
    GalleryEntry,
    GalleryError,
    GalleryFetchError,
    candidates,
    expand_source,
    fetch_gallery,
    parse_gallery,
    validate_name,
)

REAL_INDEX = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "fixtures"
    / "galleries"
    / "localai-index.yaml"
)
HERE = Path(__file__).parent / "galleries"

GOOD_BODY = b"- name: remote\n  uri: quay.io/example/backends:remote\n"
OTHER_BODY = b"- name: mirrored\n  uri: quay.io/example/backends:mirrored\n"


def parse(text: str) -> gallery.ParseResult:
    return parse_gallery(text, "test")


# --- validate_name ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["llama-cpp", "cuda12-llama-cpp", "a", "A.b_c-1", "x...", "x" * 255]
)
def test_it_accepts_safe_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("", "is empty"),
        (".", "not allowed"),
        ("..", "not allowed"),
        (".hidden", "not allowed"),
        ("a/b", "may only contain"),
        ("../etc", "may only contain"),
        ("a\\b", "may only contain"),
        ("a b", "may only contain"),
        ("name\n", "may only contain"),
        ("café", "may only contain"),
        ("x" * 256, "longer than 255"),
        (None, "must be a string, not null"),
        (12, "must be a string, not a number"),
        (["a"], "must be a string, not a list"),
    ],
)
def test_it_refuses_unsafe_names(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        validate_name(value)


def test_it_names_the_thing_being_validated() -> None:
    with pytest.raises(ValueError, match="^alias 'a/b' may only"):
        validate_name("a/b", "alias")


# --- the real index ---------------------------------------------------------------------


def test_it_parses_the_real_index() -> None:
    result = parse_gallery(REAL_INDEX.read_bytes(), "localai")

    assert result.problems == []
    assert len(result.entries) == 1028
    assert sum(entry.is_meta for entry in result.entries) == 140
    assert sum(not entry.is_meta for entry in result.entries) == 888
    assert len(result.duplicates) == 5
    for name in ("metal-whisper", "metal-crispasr", "intel-rfdetr"):
        assert any(f"name {name!r}" in message for message in result.duplicates)

    by_name = {entry.name: entry for entry in result.entries}
    kokoro, cpu_kokoro = by_name["kokoro"], by_name["cpu-kokoro"]
    assert kokoro.is_meta
    assert kokoro.capabilities["default"] == "cpu-kokoro"
    assert cpu_kokoro.uri == "quay.io/go-skynet/local-ai-backends:latest-cpu-kokoro"
    # Concrete builds merge their meta, so they carry its map but stay concrete.
    assert cpu_kokoro.capabilities == kokoro.capabilities
    assert not cpu_kokoro.is_meta
    assert cpu_kokoro.mirrors


# --- anchors and merge keys --------------------------------------------------------------


def test_it_resolves_anchors_and_merge_keys() -> None:
    result = parse_gallery((HERE / "anchors.yaml").read_bytes(), "test")
    assert result.problems == [] and result.duplicates == []
    meta, cpu, cuda, dev = result.entries

    assert meta.is_meta and meta.uri == ""
    for build in (cpu, cuda):
        assert not build.is_meta
        assert build.description == "Speech to text"
        assert build.tags == ("asr", "CPU")
        assert build.alias == "whisper"
        assert build.capabilities == {
            "default": "cpu-whisper",
            "nvidia": "cuda12-whisper",
        }
    assert (cpu.name, cpu.uri) == (
        "cpu-whisper",
        "quay.io/example/backends:latest-cpu-whisper",
    )
    assert cpu.mirrors == ("example/backends:latest-cpu-whisper",)
    assert cpu.license == "mit"
    # Keys written on the entry win over merged ones.
    assert cuda.name == "cuda12-whisper"
    assert cuda.license == "apache-2.0"
    assert dev.is_meta
    assert dev.capabilities == {"default": "cpu-whisper-development"}
    assert dev.tags == meta.tags


# --- whole-document errors --------------------------------------------------------------


def test_it_reports_invalid_yaml_with_its_line() -> None:
    with pytest.raises(
        GalleryError, match=r"^gallery test: invalid YAML at line 3: mapping"
    ):
        parse("- name: a\n  uri: b\n  tags: x: y\n- name: c\n")


def test_it_refuses_python_tags() -> None:
    with pytest.raises(GalleryError, match="invalid YAML at line 1"):
        parse("- !!python/object/apply:os.system ['true']\n")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: a\nuri: b\n", "is a mapping, not a list"),
        ("just text\n", "is a string, not a list"),
        ("", "is empty"),
        ("---\n", "is empty"),
        ("# nothing but a comment\n", "is empty"),
        ("[]\n", "empty list"),
    ],
)
def test_it_refuses_a_document_that_is_not_a_list(text: str, fragment: str) -> None:
    with pytest.raises(GalleryError, match=f"^gallery test: .*{fragment}"):
        parse(text)


# --- entry problems ----------------------------------------------------------------------


def test_it_skips_broken_entries_and_keeps_the_rest() -> None:
    result = parse_gallery((HERE / "mixed.yaml").read_bytes(), "localai")

    assert [entry.name for entry in result.entries] == ["good-one", "good-two"]
    assert result.problems == [
        "gallery localai, entry #2: expected a mapping, got a string",
        "gallery localai, entry #3: has no name",
        "gallery localai, entry 'bad-tags' (#4): tags must be a list of strings, not a string",
    ]


@pytest.mark.parametrize(
    "name",
    [
        '"a/b"',
        '".."',
        '"."',
        '"../../x"',
        '"a b"',
        '"a\\\\b"',
        '"x\\n"',
        "[a]",
        '""',
        "~",
    ],
)
def test_it_skips_entries_with_unsafe_names(name: str) -> None:
    result = parse(f"- name: ok\n- name: {name}\n  uri: quay.io/x:y\n")

    assert [entry.name for entry in result.entries] == ["ok"]
    (problem,) = result.problems
    # The name is not usable, so the entry is named by its position.
    assert problem.startswith("gallery test, entry #2: ")


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ("tags: CPU", "tags must be a list of strings, not a string"),
        ("tags: [a, [b]]", "tags must be a list of strings, found a list"),
        ("urls: {a: b}", "urls must be a list of strings, not a mapping"),
        ("mirrors: quay.io/x:y", "mirrors must be a list of strings, not a string"),
        ("mirrors: [[quay.io/x:y]]", "mirrors must be a list of strings, found a list"),
        ("uri: [quay.io/x:y]", "uri must be a string, not a list"),
        ("uri: {a: b}", "uri must be a string, not a mapping"),
        ("description: {a: b}", "description must be a string, not a mapping"),
        ("capabilities: [cpu-x]", "capabilities must be a mapping, not a list"),
        ("capabilities: cpu-x", "capabilities must be a mapping, not a string"),
        (
            "capabilities: {default: ../x}",
            "capability 'default' target '../x' may only",
        ),
        ("capabilities: {default: a/b}", "capability 'default' target 'a/b' may only"),
        (
            "capabilities: {default: [x]}",
            "capability 'default' must name a backend, not a list",
        ),
        (
            "capabilities: {default: }",
            "capability 'default' must name a backend, not null",
        ),
        ("alias: ../x", "alias '../x' may only"),
        ("sha256: deadbeef", "sha256 must be 64 hexadecimal digits"),
        ("version: [1]", "version must be a string, not a list"),
    ],
)
# LocalAI validates no capability target or alias as a path component (backends 7).
def test_it_skips_entries_with_wrong_types(fields: str, fragment: str) -> None:
    result = parse(f"- name: broken\n  {fields}\n- name: fine\n  uri: quay.io/x:y\n")

    assert [entry.name for entry in result.entries] == ["fine"]
    (problem,) = result.problems
    assert problem.startswith(f"gallery test, entry 'broken' (#1): {fragment}")


def test_it_keeps_scalars_as_written() -> None:
    (entry,) = parse(
        "- name: 1.10\n  version: 1.10\n  description: 123\n  license: no\n"
        "  icon: 2024-01-01\n  tags: [1, yes, 0x10]\n  capabilities: {12: '1.0'}\n"
    ).entries

    assert entry.name == "1.10"
    assert entry.version == "1.10"
    assert entry.description == "123"
    assert entry.license == "no"
    assert entry.icon == "2024-01-01"
    assert entry.tags == ("1", "yes", "0x10")
    assert entry.capabilities == {"12": "1.0"}


def test_it_treats_empty_values_as_absent() -> None:
    (entry,) = parse(
        "- name: a\n  uri:\n  tags:\n  capabilities:\n  mirrors: []\n"
    ).entries

    assert entry == GalleryEntry(name="a")


def test_it_ignores_unknown_keys() -> None:
    (entry,) = parse(
        "- name: a\n  uri: x\n  files: [1]\n  installed: true\n  size: 3\n"
    ).entries

    assert entry == GalleryEntry(name="a", uri="x")


def test_it_reads_sha256_and_version() -> None:
    digest = "AB" * 32
    (entry, legacy) = parse(
        f"- name: a\n  sha256: {digest}\n  version: 1.2.3\n- name: b\n"
    ).entries

    assert entry.sha256 == digest.lower()
    assert entry.version == "1.2.3"
    assert (legacy.sha256, legacy.version) == ("", "")


def test_it_strips_text_fields_but_not_names() -> None:
    (entry,) = parse(
        "- name: a\n  uri: '  quay.io/x:y  '\n  description: |\n    text\n"
    ).entries

    assert (entry.uri, entry.description) == ("quay.io/x:y", "text")
    assert parse("- name: a\n  alias: ' a '\n").problems


def test_it_refuses_values_longer_than_their_columns() -> None:
    result = parse(f"- name: a\n  uri: {'x' * 2001}\n")

    assert result.problems == [
        "gallery test, entry 'a' (#1): uri is longer than 2000 characters"
    ]


# --- duplicates ---------------------------------------------------------------------------


def test_it_keeps_the_first_of_duplicate_names_case_insensitively() -> None:
    result = parse(
        "- name: whisper\n  uri: first\n"
        "- name: other\n"
        "- name: WHISPER\n  uri: second\n"
        "- name: whisper\n  uri: third\n"
    )

    assert [(entry.name, entry.uri) for entry in result.entries] == [
        ("whisper", "first"),
        ("other", ""),
    ]
    assert result.duplicates == [
        "gallery test: name 'whisper' (#1) occurs again as entry #3, #4; the first one is kept"
    ]
    assert result.problems == []


def test_it_lets_a_valid_entry_win_over_an_earlier_broken_one() -> None:
    result = parse("- name: a\n  tags: x\n- name: a\n  uri: good\n")

    assert [entry.uri for entry in result.entries] == ["good"]
    assert result.duplicates == []
    assert len(result.problems) == 1


# --- GalleryEntry -------------------------------------------------------------------------


def test_it_tells_meta_from_concrete() -> None:
    assert GalleryEntry(name="m", capabilities={"default": "c"}).is_meta
    assert not GalleryEntry(
        name="c", uri="quay.io/x:y", capabilities={"default": "c"}
    ).is_meta
    assert not GalleryEntry(name="c", capabilities={}).is_meta
    assert not GalleryEntry(name="c").is_meta
    (meta, concrete, empty) = parse(
        "- name: m\n  capabilities: {default: c}\n"
        "- name: c\n  uri: quay.io/x:y\n  capabilities: {default: c}\n"
        "- name: e\n  capabilities: {}\n"
    ).entries
    assert meta.is_meta
    assert not concrete.is_meta
    assert not empty.is_meta


def test_it_keeps_entries_immutable() -> None:
    source = {"default": "cpu-x"}
    entry = GalleryEntry(name="x", capabilities=source)
    source["nvidia"] = "cuda-x"

    assert dict(entry.capabilities) == {"default": "cpu-x"}
    with pytest.raises(TypeError):
        entry.capabilities["nvidia"] = "cuda-x"  # type: ignore[index]
    assert hash(entry) == hash(
        GalleryEntry(name="x", capabilities={"default": "cpu-x"})
    )


# --- sources ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        (
            "github:mudler/LocalAI/backend/index.yaml@master",
            "https://raw.githubusercontent.com/mudler/LocalAI/master/backend/index.yaml",
        ),
        (
            "github://mudler/LocalAI/backend/index.yaml@v3.0.0",
            "https://raw.githubusercontent.com/mudler/LocalAI/v3.0.0/backend/index.yaml",
        ),
        (
            "github:owner/repo/index.yaml",
            "https://raw.githubusercontent.com/owner/repo/main/index.yaml",
        ),
        (
            "github:owner/repo/a/b.yaml@release/v1",
            "https://raw.githubusercontent.com/owner/repo/release/v1/a/b.yaml",
        ),
        ("https://index.localai.io/backends", "https://index.localai.io/backends"),
        ("http://127.0.0.1:8080/index.yaml", "http://127.0.0.1:8080/index.yaml"),
        ("file:///srv/galleries/index.yaml", "file:///srv/galleries/index.yaml"),
    ],
)
def test_it_expands_sources(source: str, expected: str) -> None:
    assert expand_source(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "ftp://example.com/index.yaml",
        "huggingface://owner/repo/index.yaml",
        "index.yaml",
        "/srv/index.yaml",
        "github:owner/repo",
        "github:owner/repo/",
        "github:owner/repo/index.yaml@",
        "https:///index.yaml",
        "file://otherhost/index.yaml",
    ],
)
def test_it_refuses_unusable_sources(source: str) -> None:
    with pytest.raises(ValueError):
        expand_source(source)


def test_it_lists_candidates_without_blanks_or_repeats() -> None:
    primary, mirror = "https://a.example/index.yaml", "github:o/r/index.yaml"

    assert candidates(primary, ["", primary, mirror, mirror, " "]) == [primary, mirror]
    assert candidates("", [mirror]) == [mirror]
    assert candidates("", []) == []
    with pytest.raises(ValueError, match="must be a string"):
        candidates(primary, [1])  # type: ignore[list-item]


# --- a real HTTP server on 127.0.0.1 ------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = GOOD_BODY
    etag: str = ""
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Server:
    base: str
    routes: dict[str, Route]
    # (path, request headers) of every request, in order.
    hits: list[tuple[str, dict[str, str]]]

    def url(self, path: str) -> str:
        return self.base + path

    def paths(self) -> list[str]:
        return [path for path, _ in self.hits]


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, Route] = {}
    hits: list[tuple[str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append((self.path, dict(self.headers)))
            route = routes.get(self.path, Route(status=404, body=b"<h1>Not Found</h1>"))
            time.sleep(route.delay)
            if route.etag and self.headers.get("If-None-Match") == route.etag:
                self.send_response(304)
                self.send_header("ETag", route.etag)
                self.end_headers()
                return
            self.send_response(route.status)
            if route.etag:
                self.send_header("ETag", route.etag)
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval keeps shutdown() (run after every test) fast.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", routes, hits)
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/index.yaml"


@pytest.mark.parametrize("status", [500, 404])
def test_it_falls_back_to_a_mirror(server: Server, status: int) -> None:
    server.routes["/primary"] = Route(status=status, body=b"oops")
    server.routes["/mirror"] = Route(body=OTHER_BODY, etag='"m1"')

    result = fetch_gallery(server.url("/primary"), [server.url("/mirror")])

    assert result.source == server.url("/mirror")
    assert result.body == OTHER_BODY
    assert result.etag == '"m1"'
    assert result.sha256 == hashlib.sha256(OTHER_BODY).hexdigest()
    assert not result.not_modified
    assert result.errors == (
        f"{server.url('/primary')}: HTTP {status} "
        f"{'Internal Server Error' if status == 500 else 'Not Found'}",
    )
    assert [entry.name for entry in parse_gallery(result.body, "test").entries] == [
        "mirrored"
    ]


def test_it_never_contacts_the_mirror_when_the_primary_works(server: Server) -> None:
    server.routes["/primary"] = Route()
    server.routes["/mirror"] = Route(body=OTHER_BODY)

    result = fetch_gallery(server.url("/primary"), [server.url("/mirror")])

    assert result.source == server.url("/primary")
    assert result.errors == ()
    assert server.paths() == ["/primary"]
    assert server.hits[0][1]["User-Agent"] == "localai-admin"
    assert "If-None-Match" not in server.hits[0][1]


def test_it_lists_every_failed_candidate(server: Server) -> None:
    server.routes["/primary"] = Route(status=502, body=b"bad gateway")
    refused = closed_port_url()

    with pytest.raises(GalleryFetchError) as caught:
        fetch_gallery(server.url("/primary"), [refused, "ftp://example.com/x.yaml"])

    message = str(caught.value)
    assert message.startswith("all 3 source(s) failed: ")
    assert f"{server.url('/primary')}: HTTP 502 Bad Gateway" in message
    assert f"{refused}: connection failed" in message
    assert "ftp://example.com/x.yaml: unsupported source" in message


def test_it_fails_without_any_source() -> None:
    with pytest.raises(GalleryFetchError, match="neither a URL nor mirrors"):
        fetch_gallery("", ["", " "])


def test_it_reports_timeouts(server: Server) -> None:
    server.routes["/slow"] = Route(delay=0.5)

    with pytest.raises(GalleryFetchError, match=r"/slow: timed out after 0.1s"):
        fetch_gallery(server.url("/slow"), timeout=0.1)


def test_it_sends_the_etag_and_honours_304(server: Server) -> None:
    server.routes["/index.yaml"] = Route(etag='"v1"')

    first = fetch_gallery(server.url("/index.yaml"))
    again = fetch_gallery(
        server.url("/index.yaml"), etag=first.etag, sha256=first.sha256
    )

    assert (first.etag, first.not_modified) == ('"v1"', False)
    assert again.not_modified
    assert again.body == b""
    assert (again.etag, again.sha256) == ('"v1"', first.sha256)
    assert server.hits[1][1]["If-None-Match"] == '"v1"'


def test_it_reports_an_unchanged_body_as_not_modified(server: Server) -> None:
    server.routes["/index.yaml"] = Route()  # no ETag: only the hash can tell

    result = fetch_gallery(
        server.url("/index.yaml"), sha256=hashlib.sha256(GOOD_BODY).hexdigest()
    )

    assert result.not_modified
    assert result.body == GOOD_BODY


@pytest.mark.parametrize(
    "body, reason",
    [
        (
            b"<!doctype html><html><body>Sign in to the Wi-Fi</body></html>",
            "is a string",
        ),
        (b"", "is empty"),
        (b"[]", "empty list"),
        (b"---\n", "is empty"),
        (b"name: a\n", "is a mapping"),
        (b"- a: [\n", "invalid YAML at line 2"),
    ],
)
def test_it_rejects_a_200_that_is_not_a_gallery(
    server: Server, body: bytes, reason: str
) -> None:
    server.routes["/portal"] = Route(body=body)
    server.routes["/mirror"] = Route(body=OTHER_BODY)

    result = fetch_gallery(server.url("/portal"), [server.url("/mirror")])

    assert result.source == server.url("/mirror")
    (error,) = result.errors
    assert error.startswith(server.url("/portal") + ": ")
    assert reason in error


def test_it_follows_redirects(server: Server) -> None:
    server.routes["/old"] = Route(status=302, body=b"", headers={"Location": "/new"})
    server.routes["/new"] = Route()

    result = fetch_gallery(server.url("/old"))

    assert result.source == server.url("/old")
    assert server.paths() == ["/old", "/new"]


def test_it_keeps_credentials_out_of_messages(server: Server) -> None:
    base = server.base.replace("http://", "http://admin:hunter2@")

    with pytest.raises(GalleryFetchError) as caught:
        fetch_gallery(
            f"{base}/missing?token=s3cret", [closed_port_url() + "?key=s3cret2"]
        )

    message = str(caught.value)
    # The user name stays, as the redaction policy keeps it (tests/test_redact.py).
    assert "hunter2" not in message and "admin:***@" in message
    assert "s3cret" not in message
    assert "HTTP 404" in message


def test_it_refuses_oversized_bodies(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gallery, "MAX_GALLERY_BYTES", 10)
    server.routes["/index.yaml"] = Route()

    with pytest.raises(GalleryFetchError, match="larger than 10 bytes"):
        fetch_gallery(server.url("/index.yaml"))


def test_it_uses_a_given_client(server: Server) -> None:
    server.routes["/index.yaml"] = Route()

    with httpx.Client(headers={"User-Agent": "something-else"}) as client:
        result = fetch_gallery(server.url("/index.yaml"), client=client)

    assert result.source == server.url("/index.yaml")
    assert server.hits[0][1]["User-Agent"] == "localai-admin"


# --- file:// -------------------------------------------------------------------------------


def test_it_reads_a_file_source(tmp_path: Path) -> None:
    index = tmp_path / "my index.yaml"
    index.write_bytes(GOOD_BODY)
    url = index.as_uri()  # spaces become %20

    result = fetch_gallery(url)

    assert (result.source, result.body, result.etag) == (url, GOOD_BODY, "")
    assert not result.not_modified
    assert fetch_gallery(url, sha256=result.sha256).not_modified


def test_it_falls_back_from_a_missing_file(tmp_path: Path) -> None:
    missing = (tmp_path / "missing.yaml").as_uri()
    present = tmp_path / "present.yaml"
    present.write_bytes(OTHER_BODY)

    result = fetch_gallery(missing, [present.as_uri()])

    assert result.source == present.as_uri()
    assert result.errors == (f"{missing}: file not found: {tmp_path / 'missing.yaml'}",)


def test_it_fails_on_a_missing_file_alone(tmp_path: Path) -> None:
    with pytest.raises(GalleryFetchError, match="file not found"):
        fetch_gallery((tmp_path / "missing.yaml").as_uri())
    with pytest.raises(GalleryFetchError, match="is a directory"):
        fetch_gallery(tmp_path.as_uri())
