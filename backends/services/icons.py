"""The icon cache: gallery icons fetched by the worker, read by the icon view."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from backends.core import icons
from backends.models import GalleryBackend
from backends.services.pipeline import source_policy

log = logging.getLogger(__name__)

KEY = re.compile(r"[0-9a-f]{32}")
# A refused icon is tried again after this long (the gallery may have fixed it).
RETRY_REFUSED_SECONDS = 24 * 3600


def icon_dir() -> Path:
    return Path(settings.LOCALAI_ADMIN_CACHE_DIR) / "icons"


def cached(key: str) -> tuple[Path, str] | None:
    """The cached file of an icon key and its content type, or None."""
    if not KEY.fullmatch(key):
        return None
    for content_type, extension in icons.RASTER_TYPES.items():
        path = icon_dir() / f"{key}.{extension}"
        if path.is_file():
            return path, content_type
    return None


@dataclass
class Outcome:
    fetched: int = 0
    kept: int = 0
    refused: int = 0


def _recently_refused(key: str) -> bool:
    marker = icon_dir() / f"{key}.refused"
    try:
        return time.time() - marker.stat().st_mtime < RETRY_REFUSED_SECONDS
    except FileNotFoundError:
        return False


def _write(path: Path, body: bytes) -> None:
    # Whole files only: the view may read while the worker writes.
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=".icon-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def cache_icons() -> Outcome:
    """Fetch the enabled galleries' icons not cached yet (maintenance, after a sync)."""
    outcome = Outcome()
    urls = set(
        GalleryBackend.objects.enabled()
        .exclude(icon="")
        .values_list("icon", flat=True)
        .distinct()
    )
    if not urls:
        return outcome
    folder = icon_dir()
    folder.mkdir(parents=True, exist_ok=True)
    policy = source_policy()
    for url in sorted(urls):
        key = icons.icon_key(url)
        if cached(key) or _recently_refused(key):
            outcome.kept += 1
            continue
        try:
            icon = icons.fetch_icon(url, policy)
        except icons.IconRefused as exc:
            # The message names the URL redacted; the marker holds only the reason.
            log.warning("icon not cached: %s", exc)
            _write(folder / f"{key}.refused", str(exc).encode())
            outcome.refused += 1
            continue
        _write(folder / f"{key}.{icon.extension}", icon.body)
        (folder / f"{key}.refused").unlink(missing_ok=True)
        outcome.fetched += 1
    return outcome
