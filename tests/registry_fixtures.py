"""Session fixtures that start a real OCI registry (Debian's ``docker-registry``).

Fixtures (loaded as a plugin by tests/conftest.py):

* ``registry`` (session): a plain registry on 127.0.0.1, no auth. Attributes ``url``
  (``http://127.0.0.1:PORT``), ``host`` (``127.0.0.1:PORT``), ``storage``; helpers
  ``push_image(repository, tag, layers, platform=..., docker=...)``,
  ``push_index(repository, tag, [(image, "linux/arm64"), ...])`` and
  ``ref(repository, tag)``. Layers come from ``tests.imagebuild.make_layer``.
* ``token_registry`` (session): a second registry process over the *same storage*
  configured with ``auth: token``, plus a token service on 127.0.0.1 that signs RS256
  JWTs with a key made by the openssl CLI. Users ``TOKEN_USERS``; anonymous callers may
  pull ``public/*`` only. Push through ``registry`` and pull through ``token_registry``.
  ``token_requests`` records each token request (for cache checks).
* ``fault_proxy`` (function): a loopback HTTP proxy in front of ``registry`` that can
  answer errors, cut a blob mid-body, serve a corrupt blob, redirect blob downloads to
  another host name, or demand basic auth. It records every request it sees.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.imagebuild import Blob, PushedImage, push_image, push_index
from tests.parts import missing_part

REGISTRY_BINARY = "docker-registry"
TOKEN_SERVICE = "localai-admin-test-registry"
TOKEN_ISSUER = "localai-admin-test-issuer"
TOKEN_USERS = {"alice": "wonderland"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited early:\n{log.read_text()}")
        try:
            httpx.get(
                url, timeout=1
            )  # any answer (200, or 401 with token auth) will do
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer on {url}:\n{log.read_text()}")


def _registry_config(storage: Path, port: int, auth: str = "") -> str:
    # JSON is valid YAML: no need for a YAML writer.
    return json.dumps(
        {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(storage)},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": "localai-admin-tests"},
            **({"auth": json.loads(auth)} if auth else {}),
        }
    )


@dataclass
class RegistryProcess:
    url: str
    host: str
    storage: Path
    process: subprocess.Popen[bytes]

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    def push_image(
        self,
        repository: str,
        tag: str,
        layers: Sequence[Blob],
        *,
        platform: str = "linux/amd64",
        docker: bool = False,
    ) -> PushedImage:
        return push_image(
            self.url, repository, tag, layers, platform=platform, docker=docker
        )

    def push_index(
        self,
        repository: str,
        tag: str,
        images: Sequence[tuple[PushedImage, str]],
        *,
        docker: bool = False,
    ) -> PushedImage:
        return push_index(self.url, repository, tag, images, docker=docker)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _start_registry(workdir: Path, storage: Path, auth: str = "") -> RegistryProcess:
    if shutil.which(REGISTRY_BINARY) is None:
        missing_part("Debian's docker-registry is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = workdir / "config.yml"
    config.write_text(_registry_config(storage, port, auth))
    log = workdir / "registry.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(f"{url}/v2/", process, log)
    except BaseException:
        process.kill()
        raise
    return RegistryProcess(url, f"127.0.0.1:{port}", storage, process)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    workdir = tmp_path_factory.mktemp("registry")
    server = _start_registry(workdir, workdir / "storage")
    yield server
    server.stop()


# --- token auth ----------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """Issues registry JWTs (RS256, certificate chain in the x5c header)."""

    key: Path
    certificate_der: bytes
    users: dict[str, str]
    requests: list[dict[str, object]] = field(default_factory=list)

    def grant(self, user: str | None, scopes: list[str]) -> list[dict[str, object]]:
        access: list[dict[str, object]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            wanted = [action for action in actions.split(",") if action]
            if user is None:  # anonymous: read-only, public repositories only
                wanted = [
                    a for a in wanted if a == "pull" and name.startswith("public/")
                ]
            access.append({"type": kind, "name": name, "actions": wanted})
        return access

    def token(self, user: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64.b64encode(self.certificate_der).decode()],
        }
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": user or "",
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self.grant(user, scopes),
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"


def _token_handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            user = None
            authorization = self.headers.get("Authorization", "")
            if authorization.startswith("Basic "):
                name, _, password = (
                    base64.b64decode(authorization[6:]).decode().partition(":")
                )
                if service.users.get(name) != password:
                    service.requests.append({"user": name, "ok": False})
                    self._reply(401, {"details": "invalid credentials"})
                    return
                user = name
            scopes = query.get("scope", [])
            service.requests.append({"user": user, "ok": True, "scopes": scopes})
            token = service.token(user, scopes)
            self._reply(200, {"token": token, "access_token": token, "expires_in": 300})

    return Handler


@dataclass
class TokenRegistry:
    url: str
    host: str
    token_url: str
    users: dict[str, str]
    service: TokenService
    registry: RegistryProcess

    @property
    def token_requests(self) -> list[dict[str, object]]:
        return self.service.requests

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"


def _make_signing_key(workdir: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        missing_part("the openssl CLI is needed to sign registry tokens")
    key, certificate = workdir / "token.key", workdir / "token.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localai-admin test token issuer",
            "-keyout", str(key), "-out", str(certificate),
        ],
        capture_output=True,
        check=True,
    )  # fmt: skip
    return key, certificate


def _pem_to_der(pem: str) -> bytes:
    body = "".join(
        line for line in pem.splitlines() if line and not line.startswith("-----")
    )
    return base64.b64decode(body)


@pytest.fixture(scope="session")
def token_registry(
    registry: RegistryProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenRegistry]:
    workdir = tmp_path_factory.mktemp("token-registry")
    key, certificate = _make_signing_key(workdir)
    service = TokenService(key, _pem_to_der(certificate.read_text()), dict(TOKEN_USERS))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(service))
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    token_url = f"http://127.0.0.1:{server.server_address[1]}/token"
    auth = json.dumps(
        {
            "token": {
                "realm": token_url,
                "service": TOKEN_SERVICE,
                "issuer": TOKEN_ISSUER,
                "rootcertbundle": str(certificate),
            }
        }
    )
    process = _start_registry(workdir, registry.storage, auth)
    yield TokenRegistry(
        process.url, process.host, token_url, service.users, service, registry
    )
    process.stop()
    server.shutdown()
    server.server_close()


# --- fault injection -----------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    host: str


class FaultProxy:
    """A loopback proxy in front of the registry that misbehaves on demand.

    * ``fail_next(count, status=500, path_contains="")``: answer ``status`` to the next
      ``count`` matching requests, then pass through.
    * ``cut_blob_once(digest, after_bytes)``: the next GET of that blob sends the full
      Content-Length, ``after_bytes`` of body, then closes the connection.
    * ``corrupt_blob(digest)``: serve that blob with one byte flipped in the middle.
    * ``redirect_blobs(host)``: answer blob GETs with a 307 to ``http://<host>/_blob/...``
      (``localhost:PORT`` reaches this same proxy under another host name).
    * ``require_basic(user, password)``: demand basic auth on /v2/ (not on /_blob/).
    * ``answer(path, body, content_type, after=0)``: serve ``body`` (200) for that exact
      path, e.g. a referrers API the registry behind lacks; with ``after``, only once
      that many requests of it have passed through (a tag that moves).
    * ``requests``: every request seen (method, path, headers, Host).
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._failures: list[tuple[int, int, str]] = []
        self._cuts: dict[str, int] = {}
        self._corrupt: set[str] = set()
        self._redirect_host: str | None = None
        self._basic: str | None = None
        self._answers: dict[str, tuple[bytes, str, int]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()

    def fail_next(self, count: int, status: int = 500, path_contains: str = "") -> None:
        with self._lock:
            self._failures.append((count, status, path_contains))

    def cut_blob_once(self, digest: str, after_bytes: int) -> None:
        with self._lock:
            self._cuts[digest] = after_bytes

    def corrupt_blob(self, digest: str) -> None:
        with self._lock:
            self._corrupt.add(digest)

    def redirect_blobs(self, host: str) -> None:
        self._redirect_host = host

    def require_basic(self, user: str, password: str) -> None:
        self._basic = (
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        )

    def answer(self, path: str, body: bytes, content_type: str, after: int = 0) -> None:
        with self._lock:
            self._answers[path] = (body, content_type, after)

    def _take_answer(self, path: str) -> tuple[bytes, str] | None:
        with self._lock:
            if path not in self._answers:
                return None
            body, content_type, after = self._answers[path]
            if after:
                self._answers[path] = (body, content_type, after - 1)
                return None
            return body, content_type

    def ref(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}"

    def requests_for(self, fragment: str) -> list[RecordedRequest]:
        return [request for request in self.requests if fragment in request.path]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take_failure(self, path: str) -> int | None:
        with self._lock:
            for index, (count, status, fragment) in enumerate(self._failures):
                if fragment in path:
                    if count <= 1:
                        del self._failures[index]
                    else:
                        self._failures[index] = (count - 1, status, fragment)
                    return status
        return None

    def _take_cut(self, digest: str) -> int | None:
        with self._lock:
            return self._cuts.pop(digest, None)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _simple(
                self,
                status: int,
                body: bytes = b"",
                headers: dict[str, str] | None = None,
            ) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                proxy.requests.append(
                    RecordedRequest(
                        self.command,
                        self.path,
                        dict(self.headers),
                        self.headers.get("Host", ""),
                    )
                )
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path
                if path.startswith("/_blob/"):
                    path = path[
                        len("/_blob") :
                    ]  # the redirect target: no auth, no faults
                else:
                    status = proxy._take_failure(path)
                    if status is not None:
                        error = json.dumps(
                            {"errors": [{"code": "UNKNOWN", "message": "injected"}]}
                        ).encode()
                        self._simple(
                            status, error, {"Content-Type": "application/json"}
                        )
                        return
                    answer = proxy._take_answer(path)
                    if answer is not None:
                        canned, content_type = answer
                        self._simple(200, canned, {"Content-Type": content_type})
                        return
                    if (
                        proxy._basic
                        and self.headers.get("Authorization") != proxy._basic
                    ):
                        self._simple(
                            401,
                            b"{}",
                            {"WWW-Authenticate": 'Basic realm="fault-proxy"'},
                        )
                        return
                    if (
                        proxy._redirect_host
                        and "/blobs/sha256:" in path
                        and self.command == "GET"
                    ):
                        self._simple(
                            307,
                            b"",
                            {"Location": f"http://{proxy._redirect_host}/_blob{path}"},
                        )
                        return
                self._forward(path, body)

            def _forward(self, path: str, body: bytes | None) -> None:
                assert proxy.upstream.hostname is not None
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=10
                )
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "connection")
                }
                upstream.request(self.command, path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                digest = path.rsplit("/", 1)[-1]
                cut = None
                if (
                    "/blobs/" in path
                    and self.command == "GET"
                    and response.status in (200, 206)
                ):
                    if digest in proxy._corrupt:
                        middle = len(data) // 2
                        data = (
                            data[:middle]
                            + bytes([data[middle] ^ 0xFF])
                            + data[middle + 1 :]
                        )
                    cut = proxy._take_cut(digest)
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                    ):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if cut is not None:
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler


@pytest.fixture
def fault_proxy(registry: RegistryProcess) -> Iterator[FaultProxy]:
    proxy = FaultProxy(registry.url)
    yield proxy
    proxy.close()
