"""Refresh the known-backends registry from a JSON file or URL (backends.core.known)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from django.core.management.base import BaseCommand, CommandError, CommandParser

from backends.core.known import BUNDLED, RegistryError, parse_registry
from backends.models import KnownBackend

# The registry is a few KiB: anything much larger is not one.
MAX_BYTES = 1024 * 1024
TIMEOUT_SECONDS = 30


class Command(BaseCommand):
    help = (
        "Replace the known-backends registry with the entries of a JSON file or https "
        "URL (default: the copy that ships with the app)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--from",
            dest="source",
            default=str(BUNDLED),
            help="a path, file:// URL or https:// URL of a registry JSON file",
        )

    def handle(self, *args: Any, source: str, **options: Any) -> str:
        try:
            entries = parse_registry(self.read(source))
        except RegistryError as exc:
            raise CommandError(f"{source}: {exc}") from None
        added, changed, removed = KnownBackend.objects.replace_all(entries)
        return (
            f"Known backends: {len(entries)} entries ({added} added, {changed} changed, "
            f"{removed} removed)."
        )

    def read(self, source: str) -> bytes:
        scheme = urlsplit(source).scheme
        if scheme == "https":
            return self.download(source)
        if scheme not in ("", "file"):
            raise CommandError(f"{source}: use a path, a file:// or an https:// URL")
        path = Path(unquote(urlsplit(source).path) if scheme else source)
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_BYTES + 1)
        except OSError as exc:
            raise CommandError(f"{source}: {exc.strerror or exc}") from None
        return self.bounded(source, data)

    def download(self, url: str) -> bytes:
        try:
            with httpx.stream(
                "GET", url, timeout=TIMEOUT_SECONDS, follow_redirects=True
            ) as response:
                response.raise_for_status()
                data = b""
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_BYTES:
                        break
        except httpx.HTTPError as exc:
            raise CommandError(f"{url}: {exc}") from None
        return self.bounded(url, data)

    def bounded(self, source: str, data: bytes) -> bytes:
        if len(data) > MAX_BYTES:
            raise CommandError(f"{source}: larger than {MAX_BYTES} bytes")
        return data
