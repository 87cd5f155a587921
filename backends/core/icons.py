"""Backend icons: fetched once from the gallery's address and served by us.

A gallery is untrusted, so its icon URLs are too: the browser never loads them (that
would tell every icon host who opens the dashboard, and loosen the CSP). The worker
fetches each one through the source policy, under a deadline and a size cap, and keeps
only raster images whose bytes say what they are. SVG is refused: it is a document that
can carry script, and served from our origin it would run as ours.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from backends.core.policy import SourcePolicy, SourceRefused
from backends.core.redact import redact_uri
from backends.core.transfer import (
    BodyTimedOut,
    BodyTooLarge,
    Stalled,
    Watch,
    read_capped,
)

MAX_ICON_BYTES = 256 * 1024
ICON_TIMEOUT_SECONDS = 20.0
ICON_STALL_SECONDS = 10.0
USER_AGENT = "localai-admin"

# Served content type -> file extension of the cached copy.
RASTER_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
}


class IconRefused(Exception):
    """An icon that is not cached, and why (a message safe to show)."""


@dataclass(frozen=True)
class Icon:
    content_type: str
    body: bytes

    @property
    def extension(self) -> str:
        return RASTER_TYPES[self.content_type]


def icon_key(url: str) -> str:
    """The cache file name of ``url``: the URL never reaches a path or a page."""
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def sniff(body: bytes) -> str:
    """The raster type the bytes start with, or "" for anything else."""
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if body.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if body.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    return ""


def check_icon(declared: str, body: bytes) -> Icon:
    """The icon if the server's content type and the bytes agree on a raster image."""
    media = declared.split(";", 1)[0].strip().lower()
    if media == "image/svg+xml":
        raise IconRefused("SVG icons are not served (they can carry script)")
    if media not in RASTER_TYPES:
        raise IconRefused(f"not an image: content type {media or 'missing'}")
    found = sniff(body)
    if not found:
        raise IconRefused(f"the body is not a {media} image")
    # Serve what the bytes are, whatever the header claimed among the raster types.
    return Icon(found, body)


def fetch_icon(
    url: str,
    policy: SourcePolicy,
    *,
    max_bytes: int = MAX_ICON_BYTES,
    timeout: float = ICON_TIMEOUT_SECONDS,
    stall_seconds: float = ICON_STALL_SECONDS,
) -> Icon:
    """Download one icon over http(s), within the policy, the deadline and the cap."""
    shown = redact_uri(url)
    if urlsplit(url).scheme not in ("http", "https"):
        raise IconRefused(f"{shown}: only http and https icons are fetched")
    deadline = time.monotonic() + timeout
    watch = Watch(stall_seconds=min(stall_seconds, timeout))
    try:
        with (
            httpx.Client(
                headers={"User-Agent": USER_AGENT},
                transport=policy.transport(),
                timeout=watch.timeout,
            ) as client,
            client.stream(
                "GET", url, follow_redirects=True, extensions=watch.extensions
            ) as response,
        ):
            if response.status_code != 200:
                raise IconRefused(f"{shown}: HTTP {response.status_code}")
            try:
                body = read_capped(
                    response, watch, max_bytes=max_bytes, deadline=deadline
                )
            except BodyTooLarge:
                raise IconRefused(
                    f"{shown}: larger than {max_bytes // 1024} KiB"
                ) from None
            except BodyTimedOut:
                raise IconRefused(f"{shown}: timed out after {timeout:g}s") from None
            content_type = response.headers.get("content-type", "")
    except SourceRefused as exc:
        raise IconRefused(f"{shown}: {exc}") from None
    except Stalled as exc:
        raise IconRefused(str(exc)) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise IconRefused(f"{shown}: {type(exc).__name__}") from None
    try:
        return check_icon(content_type, body)
    except IconRefused as exc:
        raise IconRefused(f"{shown}: {exc}") from None
