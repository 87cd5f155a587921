"""The source policy: private addresses, local files and registry credentials.

Every server here listens on loopback, which the suite allows by default
(tests/conftest.py); each test narrows the policy to what it is about. A "canary" is a
loopback server that must never see a request.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from backends.core import policy
from backends.core.gallery import GalleryFetchError, fetch_gallery
from backends.core.install import Installer, InstallError, Source
from backends.core.installed import Metadata
from backends.core.oci import (
    AuthenticationError,
    Credentials,
    RegistryClient,
    pull_image,
)
from backends.core.policy import SourcePolicy, SourceRefused, may_send_credentials
from backends.core.text import with_article
from backends.models import Gallery, GalleryBackend, Job, Node
from tests.base import BaseTestCase, PipelineTestCase, make_build
from tests.imagebuild import make_layer
from tests.registry_fixtures import FaultProxy, RegistryProcess
from tests.slowserver import tarball

BUILD = tarball({"run.sh": b"#!/bin/sh\necho policy\n"})
INDEX = b"- name: remote-thing\n  uri: quay.io/example/thing:latest\n"


@dataclass
class Server:
    """A loopback server that records each request and answers with ``reply``."""

    port: int
    requests: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def serving(
    status: int = 200, body: bytes = BUILD, headers: dict[str, str] | None = None
) -> Iterator[Server]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.requests.append({"path": self.path, **dict(self.headers)})
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    server = Server(http.server_address[1])
    threading.Thread(
        target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    try:
        yield server
    finally:
        http.shutdown()
        http.server_close()


def install_tarball(url: str, backends: Path, source_policy: SourcePolicy) -> Path:
    Installer(backends, policy=source_policy).install(
        "thing", Source(url), Metadata(uri=url)
    )
    return backends / "thing"


# --- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),  # reserved for future use, private to Python too
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str, kind: str) -> None:
    with pytest.raises(SourceRefused, match=f"{with_article(kind)} address") as refused:
        SourcePolicy().check_address("example.test", 443, address)

    assert "LOCALAI_ADMIN_PRIVATE_HOSTS" in str(refused.value)


def test_public_addresses_are_allowed() -> None:
    SourcePolicy().check_address("example.com", 443, "93.184.216.34")
    SourcePolicy().check_address("example.com", 443, "2606:2800:220:1::1")


def test_a_bad_private_hosts_entry_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="LOCALAI_ADMIN_PRIVATE_HOSTS: 'reg:http'"):
        SourcePolicy.parse(["reg:http"], [])


def test_a_download_from_a_loopback_canary_sends_no_request(tmp_path: Path) -> None:
    with serving() as canary, pytest.raises(InstallError) as refused:
        install_tarball(canary.url("/backend.tar.gz"), tmp_path, SourcePolicy())

    assert canary.requests == []
    assert "a loopback address" in str(refused.value)
    assert "LOCALAI_ADMIN_PRIVATE_HOSTS" in str(refused.value)


def test_a_name_is_judged_by_the_address_it_resolves_to(tmp_path: Path) -> None:
    with serving() as canary, pytest.raises(InstallError, match=r"localhost \(.*\)"):
        install_tarball(
            canary.url("/backend.tar.gz", host="localhost"),
            tmp_path,
            SourcePolicy.parse(["127.0.0.2"], []),
        )

    assert canary.requests == []


def test_a_redirect_into_a_loopback_canary_is_refused(tmp_path: Path) -> None:
    with serving() as canary:
        target = canary.url("/backend.tar.gz")
        with serving(302, b"", {"Location": target}) as allowed:
            only_allowed = SourcePolicy.parse([f"127.0.0.1:{allowed.port}"], [])
            with pytest.raises(InstallError, match="refused to connect to 127.0.0.1"):
                install_tarball(allowed.url("/backend.tar.gz"), tmp_path, only_allowed)

    assert len(allowed.requests) == 1
    assert canary.requests == []


def test_a_gallery_redirect_into_a_loopback_canary_is_refused() -> None:
    with serving(body=INDEX) as canary:
        redirect = {"Location": canary.url("/index.yaml")}
        with serving(302, b"", redirect) as allowed:
            only_allowed = SourcePolicy.parse([f"127.0.0.1:{allowed.port}"], [])
            with pytest.raises(GalleryFetchError, match="LOCALAI_ADMIN_PRIVATE_HOSTS"):
                fetch_gallery(allowed.url("/index.yaml"), policy=only_allowed)

    assert canary.requests == []


@pytest.mark.registry
def test_a_registry_redirect_into_a_loopback_canary_is_refused(
    fault_proxy: FaultProxy, registry: RegistryProcess, tmp_path: Path
) -> None:
    registry.push_image("policy/redirect", "v1", [make_layer({"run.sh": ("x", 0o755)})])
    only_registry = SourcePolicy.parse([fault_proxy.host], [])
    with serving() as canary:
        fault_proxy.redirect_blobs(f"localhost:{canary.port}")
        with (
            RegistryClient(policy=only_registry, backoff=0.001) as client,
            pytest.raises(SourceRefused, match="refused to connect to localhost"),
        ):
            pull_image(
                f"{fault_proxy.host}/policy/redirect:v1", tmp_path, client=client
            )

    assert fault_proxy.requests_for("/blobs/")
    assert canary.requests == []


@pytest.mark.parametrize(
    "entry, host",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:{port}", "127.0.0.1"),
        ("127.0.0.0/8", "127.0.0.1"),
        ("localhost", "localhost"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
    ],
)
def test_a_listed_private_host_is_reached(
    entry: str, host: str, tmp_path: Path
) -> None:
    with serving() as server:
        listed = SourcePolicy.parse([entry.format(port=server.port)], [])
        folder = install_tarball(
            server.url("/backend.tar.gz", host=host), tmp_path, listed
        )

    assert (folder / "run.sh").read_text() == "#!/bin/sh\necho policy\n"


def test_another_port_of_a_listed_host_port_is_refused(tmp_path: Path) -> None:
    with serving() as server, pytest.raises(InstallError, match="loopback"):
        install_tarball(
            server.url("/backend.tar.gz"),
            tmp_path,
            SourcePolicy.parse([f"127.0.0.1:{server.port + 1}"], []),
        )

    assert server.requests == []


# --- registry credentials -------------------------------------------------------------


@pytest.mark.parametrize(
    "registry, realm, realms, allowed",
    [
        ("https://reg.example", "https://reg.example/token", (), True),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5001/token", (), True),
        ("https://reg.example", "http://reg.example/token", (), False),
        ("https://reg.example", "https://auth.example/token", (), False),
        ("https://reg.example", "https://auth.example/token", ("auth.example",), True),
        ("https://reg.example", "http://auth.example/token", ("auth.example",), False),
        (
            "https://reg.example",
            "https://auth.example:8443/t",
            ("auth.example:443",),
            False,
        ),
    ],
)
def test_credentials_go_to_a_token_realm_only_on_the_same_host_or_a_listed_https_host(
    registry: str, realm: str, realms: tuple[str, ...], allowed: bool
) -> None:
    assert (
        may_send_credentials(httpx.URL(registry), httpx.URL(realm), realms) is allowed
    )


def test_a_plain_http_token_realm_on_another_host_gets_no_credentials(
    tmp_path: Path,
) -> None:
    token = json.dumps({"token": "anonymous"}).encode()
    with serving(body=token) as realm:
        challenge = f'Bearer realm="{realm.url("/token", host="localhost")}"'
        with serving(
            status=401, body=b"{}", headers={"WWW-Authenticate": challenge}
        ) as registry:
            host = f"127.0.0.1:{registry.port}"
            credentials = {host: Credentials("alice", "s3cret")}
            with (
                RegistryClient(credentials=credentials, backoff=0.001) as client,
                pytest.raises(AuthenticationError) as denied,
            ):
                client.get_manifest(f"{host}/private/thing:v1")

    assert realm.requests and all("Authorization" not in r for r in realm.requests)
    assert "LOCALAI_ADMIN_REGISTRY_CREDENTIALS" in str(denied.value)
    assert "s3cret" not in str(denied.value)


# --- local files ----------------------------------------------------------------------


def refusal(check_policy: SourcePolicy, path: str) -> str:
    with pytest.raises(SourceRefused) as refused:
        check_policy.check_local_uri(path)
    return str(refused.value).replace(path, "<path>")


@pytest.mark.parametrize(
    "present, absent",
    [
        ("file:///etc/shadow", "file:///etc/no-such-shadow"),
        ("/root", "/no-such-root"),
        ("/dev/zero", "/dev/no-such-device"),
    ],
)
def test_paths_outside_the_roots_are_refused_alike_whether_they_exist_or_not(
    present: str, absent: str, tmp_path: Path
) -> None:
    roots = SourcePolicy.parse([], [tmp_path])

    message = refusal(roots, present)

    assert message == refusal(roots, absent)
    assert "LOCALAI_ADMIN_LOCAL_ROOTS" in message


def test_a_symlink_out_of_the_roots_is_refused(tmp_path: Path) -> None:
    roots = tmp_path / "imports"
    roots.mkdir()
    (roots / "shadow").symlink_to("/etc/shadow")
    (roots / "gone").symlink_to("/etc/no-such-shadow")
    (roots / "zero").symlink_to("/dev/zero")
    inside = SourcePolicy.parse([], [roots])

    messages = {
        refusal(inside, str(roots / name)) for name in ("shadow", "gone", "zero")
    }
    messages.add(refusal(inside, f"{roots}/../../../etc/shadow"))

    assert len(messages) == 1 and "LOCALAI_ADMIN_LOCAL_ROOTS" in messages.pop()


def test_a_fifo_under_the_roots_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")

    with pytest.raises(SourceRefused, match="not a regular file or folder"):
        SourcePolicy.parse([], [tmp_path]).check_local(tmp_path / "pipe")


def test_a_local_folder_outside_the_roots_is_not_installed(tmp_path: Path) -> None:
    build = make_build(tmp_path / "elsewhere" / "build")
    installer = Installer(
        tmp_path / "backends", policy=SourcePolicy.parse([], [tmp_path / "imports"])
    )

    with pytest.raises(InstallError, match="LOCALAI_ADMIN_LOCAL_ROOTS"):
        installer.install("build", Source(str(build)), Metadata())

    assert not (tmp_path / "backends" / "build").exists()


def test_a_file_gallery_outside_the_roots_is_refused(tmp_path: Path) -> None:
    gallery = tmp_path / "index.yaml"
    gallery.write_bytes(INDEX)

    with pytest.raises(GalleryFetchError, match="LOCALAI_ADMIN_LOCAL_ROOTS"):
        fetch_gallery(
            gallery.as_uri(), policy=SourcePolicy.parse([], [tmp_path / "imports"])
        )


def test_the_default_policy_reaches_nothing_private() -> None:
    previous = policy.set_default_policy(SourcePolicy())
    try:
        with pytest.raises(GalleryFetchError, match="LOCALAI_ADMIN_LOCAL_ROOTS"):
            fetch_gallery("file:///etc/passwd")
    finally:
        policy.set_default_policy(previous)


# --- through the product --------------------------------------------------------------


class SourcePolicyTestCase(PipelineTestCase):
    def install_external(self, body: dict[str, str]):
        with self.captureOnCommitCallbacks(execute=True):
            return self.api_post("/api/backends/install-external", body)

    def test_an_external_install_from_a_loopback_canary_fails_unseen(self) -> None:
        with serving() as canary, self.settings(LOCALAI_ADMIN_PRIVATE_HOSTS=[]):
            r = self.install_external(
                {"uri": canary.url("/backend.tar.gz"), "name": "canary"}
            )
            status = self.status(r)

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("LOCALAI_ADMIN_PRIVATE_HOSTS", status["error"])
        self.assertEqual(canary.requests, [])

    def test_a_gallery_entry_pointing_at_a_loopback_canary_fails_unseen(self) -> None:
        with serving() as canary, self.settings(LOCALAI_ADMIN_PRIVATE_HOSTS=[]):
            GalleryBackend.objects.create(
                gallery=self.gallery, name="canary", uri=canary.url("/backend.tar.gz")
            )
            status = self.status(self.apply("canary"))

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("LOCALAI_ADMIN_PRIVATE_HOSTS", status["error"])
        self.assertEqual(canary.requests, [])

    def test_an_external_install_outside_the_roots_is_400_before_any_job(self) -> None:
        answers = {
            uri: self.install_external({"uri": uri, "name": "x"})
            for uri in ("file:///etc/shadow", "/root", "/no-such-folder", "/dev/zero")
        }

        for uri, r in answers.items():
            self.assertEqual(r.status_code, 400, uri)
            error = r.json()["error"]
            self.assertEqual(r.json()["code"], "source_refused")
            self.assertEqual(
                error["message"].replace(uri, "<uri>"),
                "<uri> is not under a folder local sources may be read from; "
                "LOCALAI_ADMIN_LOCAL_ROOTS lists those folders",
            )
        self.assertFalse(self.backends.joinpath("x").exists())

    def test_a_node_install_from_outside_the_roots_is_400(self) -> None:
        node = Node.objects.local()

        r = self.api_post(
            f"/api/nodes/{node.pk}/backends/install",
            {"uri": "file:///etc/shadow", "name": "x"},
        )

        self.assertEqual(r.status_code, 400, r.content)
        self.assertEqual(r.json()["code"], "source_refused")
        self.assertIn("LOCALAI_ADMIN_LOCAL_ROOTS", r.json()["error"]["message"])
        self.assertFalse(Job.objects.exists())

    def test_a_network_gallery_naming_local_sources_reports_each_entry(self) -> None:
        index = (
            b"- name: remote-thing\n  uri: quay.io/example/thing:latest\n"
            b"- name: reads-shadow\n  uri: file:///etc/shadow\n"
            b"- name: local-mirror\n  uri: quay.io/example/other:latest\n"
            b"  mirrors: [/srv/builds/other]\n"
        )
        with serving(body=index) as server:
            remote = Gallery.objects.create(
                name="remote", url=server.url("/index.yaml")
            )
            remote.sync(force=True)

        remote.refresh_from_db()
        names = set(remote.entries.values_list("name", flat=True))
        self.assertEqual(names, {"remote-thing"})
        self.assertEqual(len(remote.problems), 2, remote.problems)
        self.assertIn("entry 'reads-shadow'", remote.problems[0])
        self.assertIn("entry 'local-mirror'", remote.problems[1])
        self.assertIn("LOCALAI_ADMIN_LOCAL_ROOTS", remote.problems[0])

    def test_a_network_gallery_entry_naming_a_local_folder_is_not_installed(
        self,
    ) -> None:
        remote = Gallery.objects.create(
            name="remote", url="https://galleries.example/index.yaml"
        )
        GalleryBackend.objects.create(
            gallery=remote, name="sneaky", uri=str(self.sources / "cpu-bar")
        )

        status = self.status(self.apply("remote@sneaky"))

        self.assertEqual(status["state"], "failed", status)
        self.assertIn(
            "local source in a gallery fetched over the network", status["error"]
        )
        self.assertFalse(self.backends.joinpath("sneaky").exists())

    def test_a_file_gallery_may_name_local_folders_under_the_roots(self) -> None:
        status = self.status(self.apply("cpu-bar"))

        self.assertEqual(status["state"], "completed", status)


class NulInLocalUriTestCase(BaseTestCase):
    def test_a_percent_encoded_nul_in_a_file_uri_is_refused_not_a_crash(self) -> None:
        r = self.api_post(
            "/api/backends/install-external", {"uri": "file:///x%00", "name": "x"}
        )
        self.assertEqual(r.status_code, 400, r.content)
        self.assertIn("LOCALAI_ADMIN_LOCAL_ROOTS", r.json()["error"]["message"])

    def test_a_single_slash_file_uri_needs_the_path_permission(self) -> None:
        from backends import roles

        self.assertEqual(roles.to_install_from("file:/srv/x"), roles.INSTALL_FROM_PATH)
