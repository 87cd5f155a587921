"""A loopback registry and tarball host that trickles or stalls where a test says.

``HostileRegistry(layer, tarball, token=...)`` serves one image (``ref``: an OCI
manifest, its config and its layer) through the registry v2 API, a token service at
``/token`` (bearer auth is demanded on ``/v2/`` when ``token`` is true) and a tarball at
``/backend.tar.gz``. ``misbehave(fragment, mode)`` changes how requests whose path
contains ``fragment`` are answered:

* ``"trickle"``: headers, then one byte of the body per second;
* ``"stall"``: headers and half of the body, then nothing, the connection kept open;
* ``"silent"``: the request is read and never answered.

``hits(fragment)`` counts the requests seen, so a test knows the phase a job is in.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.imagebuild import OCI_CONFIG, OCI_MANIFEST, Blob

REPOSITORY = "hostile/backend"
TOKEN = "hostile-token"


class HostileRegistry:
    def __init__(self, layer: Blob, tarball: bytes = b"", *, token: bool = False):
        config = Blob(OCI_CONFIG, json.dumps({"os": "linux"}).encode())
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": [layer.descriptor()],
            }
        ).encode()
        self.layer = layer
        self._bodies: dict[str, tuple[bytes, str]] = {
            f"/v2/{REPOSITORY}/manifests/v1": (manifest, OCI_MANIFEST),
            f"/v2/{REPOSITORY}/blobs/{config.digest}": (config.data, OCI_CONFIG),
            f"/v2/{REPOSITORY}/blobs/{layer.digest}": (layer.data, layer.media_type),
            "/backend.tar.gz": (tarball, "application/gzip"),
            "/token": (json.dumps({"token": TOKEN}).encode(), "application/json"),
        }
        self._token = token
        self._modes: dict[str, str] = {}
        self._hits: list[str] = []
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        ).start()

    @property
    def ref(self) -> str:
        return f"{self.host}/{REPOSITORY}:v1"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def misbehave(self, fragment: str, mode: str) -> None:
        self._modes[fragment] = mode

    def hits(self, fragment: str) -> int:
        return sum(fragment in path for path in list(self._hits))

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HostileRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _mode(self, path: str) -> str:
        return next((m for f, m in self._modes.items() if f in path), "")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                registry._hits.append(path)
                mode = registry._mode(path)
                if mode == "silent":
                    registry._closing.wait()
                    return
                if (
                    registry._token
                    and path.startswith("/v2/")
                    and self.headers.get("Authorization") != f"Bearer {TOKEN}"
                ):
                    self.send_response(401)
                    self.send_header(
                        "WWW-Authenticate",
                        f'Bearer realm="http://{registry.host}/token",service="hostile"',
                    )
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in registry._bodies:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, content_type = registry._bodies[path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self._send_body(body, mode)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _send_body(self, body: bytes, mode: str) -> None:
                if mode == "trickle":
                    for index in range(len(body)):
                        if registry._closing.is_set():
                            break
                        self.wfile.write(body[index : index + 1])
                        self.wfile.flush()
                        time.sleep(1)
                    self.close_connection = True
                elif mode == "stall":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    registry._closing.wait()
                    self.close_connection = True
                else:
                    self.wfile.write(body)

        return Handler
