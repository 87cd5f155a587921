"""Credentials inside source URIs, and registry credentials, never reach what people or
other programs read: pages, API answers, metadata.json, logs, the admin. The database
keeps them, so upgrades fetch again."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Permission, User

from backends.models import Gallery, InstalledBackend, Job, Node
from tests.base import PipelineTestCase
from tests.slowserver import serve, tarball

TOKEN = "tok-7f3a9c21e5d84b06"
PASSWORD = "pw-c0ffee-5ec7e7"
GALLERY_TOKEN = "gal-91d2e0b7aa45"
MIRROR_PASSWORD = "mirror-pw-3b8e1f"
REGISTRY_PASSWORD = "reg-pw-4d1c9a77e2"
BEARER = "bearer-5a6b7c8d9e0f1a2b"
SECRETS = (TOKEN, PASSWORD, GALLERY_TOKEN, MIRROR_PASSWORD, REGISTRY_PASSWORD, BEARER)


def assert_no_secret(text: str | bytes) -> None:
    shown = text.decode() if isinstance(text, bytes) else text
    for secret in SECRETS:
        assert secret not in shown, f"{secret} is shown"


@dataclass
class SecretServer:
    """A loopback tarball host that serves only with ``?token=TOKEN`` or Basic
    ``user:PASSWORD``, and records every request it sees."""

    port: int = 0
    seen: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = tarball({"run.sh": b"#!/bin/sh\necho secret\n"})

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/b.tar.gz?ref=main&token={TOKEN}"

    @property
    def basic_uri(self) -> str:
        return f"http://user:{PASSWORD}@127.0.0.1:{self.port}/b.tar.gz"

    def tokens_seen(self) -> int:
        return sum(TOKEN in path for path, _ in self.seen)


@contextmanager
def secret_server() -> Iterator[SecretServer]:
    state = SecretServer()
    basic = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization", "")
            state.seen.append((self.path, auth))
            query = parse_qs(urlsplit(self.path).query)
            if query.get("token") != [TOKEN] and auth != basic:
                self.send_response(403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    with serve(Handler) as port:
        state.port = port
        yield state


@contextmanager
def echoing_registry(scheme: str) -> Iterator[str]:
    """A registry that asks for ``scheme`` auth (Basic, or Bearer through its own token
    realm) and then refuses with an error body echoing what it was sent."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any], **headers: str) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            host = f"127.0.0.1:{cast(tuple[str, int], self.server.server_address)[1]}"
            auth = self.headers.get("Authorization", "")
            if self.path.startswith("/token"):
                self._reply(200, {"token": BEARER, "expires_in": 300})
                return
            if not auth:
                challenge = (
                    f'Bearer realm="http://{host}/token",service="echo"'
                    if scheme == "bearer"
                    else 'Basic realm="echo"'
                )
                self._reply(401, {"errors": []}, WWW_Authenticate=challenge)
                return
            decoded = ""
            if auth.startswith("Basic "):
                decoded = base64.b64decode(auth[6:]).decode()
            message = f"you sent {auth!r} ({decoded})"
            self._reply(403, {"errors": [{"code": "DENIED", "message": message}]})

        def log_message(self, *args: object) -> None:
            pass

    with serve(Handler) as port:
        yield f"127.0.0.1:{port}"


class SecretsNeverShownTestCase(PipelineTestCase):
    @pytest.fixture(autouse=True)
    def _logs(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        self.caplog = caplog

    def setUp(self) -> None:
        super().setUp()
        self.server = self.enterContext(secret_server())

    def install_external(self, uri: str, name: str) -> dict[str, Any]:
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post(
                "/api/backends/install-external", {"uri": uri, "name": name}
            )
        self.assertEqual(r.status_code, 200, r.content)
        status: dict[str, Any] = self.api_get(f"/backends/jobs/{r.json()['id']}").json()
        return status

    def as_bob(self) -> None:
        self.client.force_login(self.bob)

    def test_an_install_from_a_tokenised_url_works(self) -> None:
        status = self.install_external(self.server.token_uri, "tokened")

        self.assertEqual(status["state"], "completed", status)
        self.assertEqual(self.server.tokens_seen(), 1)
        row = InstalledBackend.objects.get(name="tokened")
        self.assertEqual(row.uri, self.server.token_uri)

    def test_an_install_from_a_url_with_a_password_works(self) -> None:
        status = self.install_external(self.server.basic_uri, "basic")

        self.assertEqual(status["state"], "completed", status)
        self.assertTrue(self.server.seen[-1][1].startswith("Basic "))
        self.assertEqual(
            InstalledBackend.objects.get(name="basic").uri, self.server.basic_uri
        )

    def test_metadata_json_holds_the_uri_redacted(self) -> None:
        self.install_external(self.server.token_uri, "tokened")
        self.install_external(self.server.basic_uri, "basic")

        tokened = json.loads((self.backends / "tokened" / "metadata.json").read_text())
        basic = (self.backends / "basic" / "metadata.json").read_text()
        self.assertTrue(tokened["uri"].endswith("/b.tar.gz?ref=main&token=***"))
        self.assertIn("user:***@127.0.0.1", basic)
        assert_no_secret(json.dumps(tokened) + basic)

    def test_the_api_shows_no_secret(self) -> None:
        status = self.install_external(self.server.token_uri, "tokened")
        self.install_external(self.server.basic_uri, "basic")
        node = Node.objects.local()

        self.assertIn("token=***", status["outcome"])
        for url in (
            "/backends",
            f"/backends/jobs/{status['id']}",
            "/backends/jobs",
            f"/api/nodes/{node.pk}/backends",
        ):
            with self.subTest(url=url):
                r = self.api_get(url)
                self.assertEqual(r.status_code, 200)
                assert_no_secret(r.content)
        installed = {row["Name"]: row for row in self.api_get("/backends").json()}
        self.assertIn("token=***", installed["tokened"]["Metadata"]["uri"])

    def test_a_reader_sees_no_secret_on_the_pages(self) -> None:
        status = self.install_external(self.server.token_uri, "tokened")
        self.install_external(self.server.basic_uri, "basic")
        self.as_bob()

        for url in ("/jobs/", f"/jobs/{status['id']}/", "/installed/"):
            with self.subTest(url=url):
                r = self.client.get(url)
                self.assertEqual(r.status_code, 200)
                assert_no_secret(r.content)
        self.assertContains(self.client.get(f"/jobs/{status['id']}/"), "token=***")

    def test_a_failed_install_records_and_logs_no_secret(self) -> None:
        self.server.body = b"not a tarball"
        uri = self.server.token_uri.replace("/b.tar.gz", "/x.tar.gz")

        status = self.install_external(uri, "broken")

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("token=***", status["error"])
        assert_no_secret(json.dumps(status))
        job = Job.objects.get(pk=status["id"])
        assert_no_secret(job.message + job.error + job.file_name)
        self.assertEqual(job.external_uri, uri)
        self.assertIn("fetching failed", self.caplog.text)
        assert_no_secret(self.caplog.text)

    def test_the_logs_of_an_install_hold_no_secret(self) -> None:
        self.install_external(self.server.token_uri, "tokened")
        self.install_external(self.server.basic_uri, "basic")

        self.assertTrue(self.caplog.records)
        assert_no_secret(self.caplog.text)

    def test_a_registry_error_body_echoing_basic_credentials_is_scrubbed(
        self,
    ) -> None:
        with (
            echoing_registry("basic") as registry,
            self.settings(
                LOCALAI_ADMIN_REGISTRY_CREDENTIALS={
                    registry: {"username": "reg-user", "password": REGISTRY_PASSWORD}
                }
            ),
        ):
            status = self.install_external(f"{registry}/org/image:v1", "echo")

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("DENIED", status["error"])
        assert_no_secret(json.dumps(status))
        basic = base64.b64encode(f"reg-user:{REGISTRY_PASSWORD}".encode()).decode()
        self.assertNotIn(basic, json.dumps(status))
        assert_no_secret(self.caplog.text)

    def test_a_registry_error_body_echoing_a_bearer_token_is_scrubbed(self) -> None:
        with echoing_registry("bearer") as registry:
            status = self.install_external(f"{registry}/org/image:v1", "echo")

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("Bearer ***", status["error"])
        assert_no_secret(json.dumps(status))


class SecretGalleryTestCase(PipelineTestCase):
    """A gallery whose own URL and whose entries' URIs carry credentials."""

    def setUp(self) -> None:
        super().setUp()
        self.server = self.enterContext(secret_server())
        self.secret_gallery = Gallery.objects.create(
            name="private",
            url=f"http://127.0.0.1:{self.server.port}/index.yaml?token={GALLERY_TOKEN}",
            mirrors=[f"https://user:{MIRROR_PASSWORD}@mirror.example/index.yaml"],
            position=5,
        )
        self.private_file = self.gallery_file.parent / "private.yaml"
        self.write_private(version="1")

    def write_private(self, version: str) -> None:
        self.private_file.write_text(
            f"- name: tokened\n  uri: {self.server.token_uri}\n"
            f"  mirrors: ['{self.server.basic_uri}']\n  version: '{version}'\n"
        )
        # Synced from a local copy: the URL on the row is what pages must redact.
        url, self.secret_gallery.url = (
            self.secret_gallery.url,
            self.private_file.as_uri(),
        )
        self.secret_gallery.sync(force=True)
        self.secret_gallery.url = url
        self.secret_gallery.save(update_fields=("url",))

    def test_the_galleries_page_and_api_show_the_urls_redacted(self) -> None:
        r = self.api_get("/backends/galleries")
        private = next(g for g in r.json() if g["name"] == "private")
        self.assertEqual(
            private["url"],
            f"http://127.0.0.1:{self.server.port}/index.yaml?token=***",
        )
        self.assertEqual(
            private["mirrors"], ["https://user:***@mirror.example/index.yaml"]
        )
        assert_no_secret(r.content)

        self.client.force_login(self.bob)
        page = self.client.get("/galleries/")
        self.assertContains(page, "index.yaml?token=***")
        assert_no_secret(page.content)

    def test_the_catalogue_shows_entry_uris_redacted(self) -> None:
        r = self.api_get("/backends/available")
        self.assertEqual(r.status_code, 200)
        assert_no_secret(r.content)
        entry = next(e for e in r.json() if e["name"] == "tokened")
        self.assertIn("token=***", entry["uri"])

        self.client.force_login(self.bob)
        page = self.client.get("/catalogue/private/tokened/")
        self.assertContains(page, "token=***")
        assert_no_secret(page.content)

    def test_an_upgrade_fetches_again_with_the_full_uri(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post("/backends/apply", {"id": "private@tokened"})
        self.assertEqual(self.status(r)["state"], "completed", self.status(r))
        self.write_private(version="2")

        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post("/backends/upgrade/tokened")
        status = self.status(r)

        self.assertEqual(status["state"], "completed", status)
        self.assertEqual(self.server.tokens_seen(), 2)
        metadata = (self.backends / "tokened" / "metadata.json").read_text()
        self.assertIn('"version": "2"', metadata)
        assert_no_secret(metadata)
        row = InstalledBackend.objects.get(name="tokened")
        self.assertEqual(row.uri, self.server.token_uri)
        self.assertEqual(row.gallery_url, self.secret_gallery.url)

    def test_the_admin_lists_show_uris_redacted(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post("/backends/apply", {"id": "private@tokened"})
        job = self.status(r)
        root = User.objects.create_superuser("root", password="password")
        self.client.force_login(root)

        for url in (
            "/admin/backends/gallery/",
            "/admin/backends/gallerybackend/",
            "/admin/backends/installedbackend/",
            "/admin/backends/job/",
            f"/admin/backends/job/{job['id']}/change/",
            f"/admin/backends/installedbackend/{InstalledBackend.objects.get(name='tokened').pk}/change/",
            f"/admin/backends/gallerybackend/{self.secret_gallery.entries.get().pk}/change/",
        ):
            with self.subTest(url=url):
                page = self.client.get(url)
                self.assertEqual(page.status_code, 200)
                assert_no_secret(page.content)

    def test_the_admin_edit_form_keeps_the_real_url_for_editors_only(self) -> None:
        change = f"/admin/backends/gallery/{self.secret_gallery.pk}/change/"
        root = User.objects.create_superuser("root", password="password")
        self.client.force_login(root)
        self.assertContains(self.client.get(change), GALLERY_TOKEN)

        viewer = User.objects.create_user("viewer", password="password", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_gallery"))
        self.client.force_login(viewer)
        page = self.client.get(change)
        self.assertEqual(page.status_code, 200)
        self.assertContains(page, "index.yaml?token=***")
        assert_no_secret(page.content)
