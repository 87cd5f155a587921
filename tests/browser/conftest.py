"""Playwright driving Debian's chromium against pytest-django's live server.

One browser for the whole session (starting chromium is the slow part); each test gets
a fresh context, so cookies never leak between tests.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from backends.models import Gallery, KnownBackend
from tests.base import REAL_GALLERY

# Playwright's sync API runs an event loop in this thread; Django would then refuse ORM
# calls from the test body, which are plain synchronous code.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing (make system-deps installs Debian's chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@dataclass
class Console:
    """What a page reported: CSP violations arrive as console errors."""

    errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return [
            e
            for e in self.errors
            if "Content Security Policy" in e or "Refused to" in e
        ]


@pytest.fixture
def users(db: None) -> dict[str, User]:
    return {
        "alice": User.objects.create_user("alice", password="password", is_staff=True),
        "bob": User.objects.create_user("bob", password="password"),
    }


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def new_page(
    browser: Any, live_server: Any, console: Console
) -> Iterator[Callable[..., Any]]:
    """``new_page(user=None)``: a page in a fresh context, signed in as ``user`` if given.

    Every test ends by checking that no page reported a CSP violation or a script error.
    """
    contexts = []

    def make(user: User | None = None, **options: Any) -> Any:
        context = browser.new_context(base_url=live_server.url, **options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        if user is not None:
            client = Client()
            client.force_login(user)
            cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
            context.add_cookies(
                [
                    {
                        "name": settings.SESSION_COOKIE_NAME,
                        "value": cookie,
                        "url": live_server.url,
                    }
                ]
            )
        page = context.new_page()
        page.on(
            "console", lambda m: m.type == "error" and console.errors.append(m.text)
        )
        page.on("pageerror", lambda exc: console.errors.append(f"page error: {exc}"))
        return page

    yield make
    for context in contexts:
        context.close()
    assert console.csp_violations() == []
    assert [e for e in console.errors if e.startswith("page error")] == []


@pytest.fixture
def known_backends(db: None) -> None:
    """The known-backends registry, seeded by a migration: transactional tests before
    this one may have flushed it (and serialized rollback clashes with the content types
    a flush recreates), so seed it again when it is empty."""
    if not KnownBackend.objects.exists():
        seed = importlib.import_module(
            "backends.migrations.0002_seed_known_backends"
        ).seed
        seed(django_apps, None)


@pytest.fixture
def real_gallery(db: None, tmp_path: Path) -> Gallery:
    """The real LocalAI index (1,028 entries), synced from a file:// copy."""
    copy = tmp_path / "localai-index.yaml"
    shutil.copyfile(REAL_GALLERY, copy)
    gallery = Gallery.objects.create(name="localai", url=copy.as_uri())
    gallery.sync()
    assert gallery.entry_count > 1000, gallery.last_error
    return gallery
