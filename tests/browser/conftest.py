"""Playwright driving Debian's chromium against pytest-django's live server.

One browser for all the browser tests (starting chromium is the slow part), closed after
the last of them; each test gets a fresh context, so cookies never leak between tests.
"""

from __future__ import annotations

import importlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from backends.models import Gallery, KnownBackend
from backends.services import dispatch, pipeline
from tests.base import REAL_GALLERY, user_with_role
from tests.imagebuild import file, make_layer
from tests.parts import missing_part
from tests.registry_fixtures import RegistryProcess

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage

ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"
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


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        missing_part(
            f"{CHROMIUM} is missing (make system-deps installs Debian's chromium)"
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread while the browser
    # lives; Django would then refuse ORM calls from the tests, which are plain
    # synchronous code. Allowed while the browser lives and no longer: the tests after
    # these ones, and the processes they start, must run with Django's usual guard.
    previous = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            del os.environ[ASYNC_UNSAFE]
        else:
            os.environ[ASYNC_UNSAFE] = previous


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
        "alice": user_with_role("alice", "admin", is_staff=True),
        "bob": user_with_role("bob", "viewer"),
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

        def record_error(message: ConsoleMessage) -> None:
            if message.type == "error":
                console.errors.append(message.text)

        page.on("console", record_error)
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


@pytest.fixture
def job_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[threading.Thread]]:
    """Run each job in a thread of its own, the way a Huey consumer would.

    The tests run Huey in immediate mode, which runs a job inside the request that queues
    it: the page would never see the job queued or running, and a cancel could never
    reach it. Here the job still goes through ``Job.enqueue`` and the real pipeline; only
    Huey's transport is swapped for a thread. Teardown waits for every job to end, so no
    thread writes to the database once the test has flushed it.
    """
    threads: list[threading.Thread] = []

    def work(job_id: str) -> None:
        try:
            pipeline.run_job(job_id)
        finally:
            connections.close_all()

    def run_job(job_id: str) -> None:
        thread = threading.Thread(target=work, args=(job_id,), daemon=True)
        threads.append(thread)
        thread.start()

    monkeypatch.setattr(dispatch, "run_job", run_job)
    yield threads
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a job never ended"


# Records each state a job card shows in the element ``#<id>``, across htmx swaps: a
# state that lasts less than Playwright's polling interval would otherwise be missed.
WATCH_STATES = """(id) => {
  window.seenStates = [];
  const record = () => {
    const badge = document.querySelector(`#${id} .job-progress .badge`);
    const text = badge ? badge.textContent.trim() : "";
    if (text && window.seenStates[window.seenStates.length - 1] !== text) {
      window.seenStates.push(text);
    }
  };
  record();
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true});
}"""


@pytest.fixture
def watch_states() -> Callable[[Any, str], Callable[[], list[str]]]:
    """``seen = watch_states(page, element_id)``; later ``seen()`` lists the job states."""

    def watch(page: Any, element_id: str) -> Callable[[], list[str]]:
        page.evaluate(WATCH_STATES, element_id)
        return lambda: list(page.evaluate("window.seenStates"))

    return watch


@pytest.fixture
def whisper_gallery(db: None) -> Callable[[str], Gallery]:
    """``whisper_gallery(uri)``: a gallery listing whisper the way LocalAI's does, a meta
    and its CPU build, whose image or tarball is at ``uri``."""

    def make(uri: str) -> Gallery:
        gallery = Gallery.objects.create(name="localai", url="file:///dev/null")
        gallery.entries.create(
            name="whisper",
            is_meta=True,
            description="Speech to text (meta)",
            tags=["asr"],
            capabilities={"default": "cpu-whisper"},
        )
        gallery.entries.create(
            name="cpu-whisper",
            alias="whisper",
            uri=uri,
            description="Speech to text, CPU build",
            tags=["asr"],
            position=1,
        )
        return gallery

    return make


@pytest.fixture
def whisper_image(registry: RegistryProcess) -> str:
    """A small backend image in the session's registry (a run.sh and 2 MiB of model)."""
    layer = make_layer(
        [
            file("run.sh", "#!/bin/sh\necho whisper\n", 0o755),
            file("lib/model.bin", os.urandom(2 << 20)),
        ]
    )
    registry.push_image("browser/whisper", "cpu", [layer])
    return registry.ref("browser/whisper", "cpu")
