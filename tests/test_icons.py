"""Gallery icons: fetched by the worker from a loopback icon server, served by us."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

from django.conf import settings

from backends import tasks
from backends.core.icons import MAX_ICON_BYTES, icon_key
from backends.services import icons
from tests.base import BaseTestCase
from tests.slowserver import serve


def png(padding: int = 0) -> bytes:
    """A real 1x1 PNG, with an ancillary chunk of ``padding`` bytes to make it large."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00\x00\x00\x00")
    extra = chunk(b"tEXt", b"c\x00" + b"x" * padding) if padding else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + extra
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


ICONS: dict[str, tuple[bytes, str]] = {
    "/good.png": (png(), "image/png"),
    "/page.html": (b"<html><script>alert(1)</script></html>", "text/html"),
    "/liar.png": (b"<html><script>alert(1)</script></html>", "image/png"),
    "/drawing.svg": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
    "/huge.png": (png(MAX_ICON_BYTES + 1), "image/png"),
}


@contextmanager
def icon_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, content_type = ICONS.get(self.path, (b"", ""))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", content_type or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serve(Handler) as port:
        yield f"http://127.0.0.1:{port}"


class IconCacheTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.base = self.enterContext(icon_server())
        self.client.force_login(self.bob)

    def sync_with_icon(self, path: str) -> str:
        url = self.base + path
        self.gallery_file.write_text(
            f"- name: cpu-whisper\n  uri: quay.io/x/y:cpu-whisper\n  icon: {url}\n"
        )
        with self.settings(LOCALAI_ADMIN_GALLERY_ICONS=True):
            tasks.sync_gallery.call_local(self.gallery.pk)
        return icon_key(url)

    def test_a_sync_caches_the_icon_and_the_catalogue_shows_our_copy(self) -> None:
        key = self.sync_with_icon("/good.png")
        self.assertTrue((icons.icon_dir() / f"{key}.png").is_file())
        r = self.client.get("/")
        self.assertContains(r, f'src="/icons/{key}"')
        self.assertNotContains(r, self.base)

    def test_it_serves_a_cached_icon_with_a_long_cache_and_nosniff(self) -> None:
        key = self.sync_with_icon("/good.png")
        r = self.client.get(f"/icons/{key}")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.content, png())
        self.assertEqual(r["Content-Type"], "image/png")
        self.assertIn("max-age=31536000", r["Cache-Control"])
        self.assertEqual(r["X-Content-Type-Options"], "nosniff")

    def test_a_missing_icon_shows_the_placeholder(self) -> None:
        r = self.client.get(f"/icons/{'a' * 32}")
        self.assertRedirects(
            r, "/static/img/backend-placeholder.svg", fetch_redirect_response=False
        )
        self.assertEqual(self.client.get("/icons/../../etc").status_code, 404)

    def test_something_that_is_not_an_image_is_refused(self) -> None:
        for path in ("/page.html", "/liar.png"):
            with self.subTest(path=path):
                key = self.sync_with_icon(path)
                self.assertIsNone(icons.cached(key))
                marker = icons.icon_dir() / f"{key}.refused"
                self.assertIn("not", marker.read_text())

    def test_an_svg_icon_is_refused(self) -> None:
        key = self.sync_with_icon("/drawing.svg")
        self.assertIsNone(icons.cached(key))
        self.assertIn("SVG", (icons.icon_dir() / f"{key}.refused").read_text())

    def test_an_icon_larger_than_the_cap_is_refused(self) -> None:
        key = self.sync_with_icon("/huge.png")
        self.assertIsNone(icons.cached(key))
        self.assertIn(
            "larger than 256 KiB", (icons.icon_dir() / f"{key}.refused").read_text()
        )

    def test_an_icon_on_a_host_the_source_policy_refuses_is_not_fetched(self) -> None:
        with self.settings(LOCALAI_ADMIN_PRIVATE_HOSTS=[]):
            key = self.sync_with_icon("/good.png")
        self.assertIsNone(icons.cached(key))

    def test_pages_allow_images_from_this_origin_only(self) -> None:
        csp = self.client.get("/")["Content-Security-Policy"]
        self.assertIn("img-src 'self' data:", csp)
        self.assertNotIn("https:", csp)

    def test_it_is_for_viewers(self) -> None:
        self.client.force_login(self.dave)
        self.assertEqual(self.client.get(f"/icons/{'a' * 32}").status_code, 403)


class IconsOffTestCase(BaseTestCase):
    def test_no_icon_is_fetched_when_icons_are_off(self) -> None:
        self.assertFalse(settings.LOCALAI_ADMIN_GALLERY_ICONS)
        tasks.sync_gallery.call_local(self.gallery.pk)
        self.assertFalse(icons.icon_dir().exists())
