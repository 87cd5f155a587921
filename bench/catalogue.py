"""Figure: server time of the catalogue page with the real gallery loaded.

A child process with production settings (DEBUG=False, static files collected into the
run's temp dir so the manifest storage works) syncs the real index, signs a staff user
in with ``django.test.Client.force_login`` and times ``client.get`` of each page in
``PAGES``: the whole Django request cycle (middleware, view, queries, template), no
network. Three warm-up requests, then ``max(runs, 15)`` timed ones; the median is
reported. The number of SQL queries of one request is shown for profiling.

Target: under 100 ms (absolute: the baseline column holds the target itself).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    GALLERY_FIXTURE,
    Figure,
    Unavailable,
    django_env,
    median,
    postgres_database,
    run_worker,
    setup_django,
    sqlite_url,
    unavailable,
    worker_main,
)

TARGET_MS = 100.0
# (figure name, path, query): keep this generic, the view behind "/" may change.
PAGES = [
    ("catalogue_first_page", "/", {}),
    ("catalogue_search", "/", {"q": "whisper"}),
]
DATABASES = ("sqlite", "postgresql")


def run(runs: int, **_: Any) -> list[Figure]:
    figures: list[Figure] = []
    for database in DATABASES:
        names = [f"{name}_{database}" for name, _, _ in PAGES]
        try:
            if not GALLERY_FIXTURE.is_file():
                raise Unavailable(f"fixture missing: {GALLERY_FIXTURE.resolve()}")
            result = _measure(database, max(runs, 15))
        except Unavailable as exc:
            figures += [unavailable(_figure(name), str(exc)) for name in names]
            continue
        for name, page in zip(names, result["pages"], strict=True):
            figure = _figure(name)
            if page["status"] != 200:
                figures.append(
                    unavailable(figure, f"{page['url']} answered HTTP {page['status']}")
                )
                continue
            figure.value = median(page["times"]) * 1000
            figure.baseline = TARGET_MS
            figure.samples = {"ours": [t * 1000 for t in page["times"]]}
            figure.detail = (
                f"{page['url']}: {page['queries']} queries, {page['bytes'] // 1024} KiB, "
                f"{result['entries']} entries loaded"
            )
            figures.append(figure)
    return figures


def _figure(name: str) -> Figure:
    return Figure(name, "ms", f"< {TARGET_MS:g} ms", 1.0, goal="below")


def _measure(database: str, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp_name:
        tmp = Path(tmp_name)
        args = {"task": "measure", "runs": runs, "tmp": str(tmp), "pages": PAGES}
        if database == "sqlite":
            return run_worker("bench.catalogue", args, django_env(tmp, sqlite_url(tmp)))
        with postgres_database("catalogue") as url:
            return run_worker("bench.catalogue", args, django_env(tmp, url))


# --- worker ------------------------------------------------------------------------------


def _measure_pages(args: dict[str, Any]) -> dict[str, Any]:
    setup_django()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from backends.models import Gallery

    call_command("collectstatic", interactive=False, verbosity=0)
    copy = Path(args["tmp"]) / "localai-index.yaml"
    shutil.copyfile(GALLERY_FIXTURE, copy)
    gallery = Gallery.objects.create(name="localai", url=copy.as_uri())
    summary = gallery.sync(force=True)
    if gallery.last_error:
        raise RuntimeError(summary)

    user = get_user_model().objects.create_user(
        "bench", "bench@example.invalid", is_staff=True, is_superuser=True
    )
    client = Client(
        raise_request_exception=False
    )  # a broken view is a status, not a crash
    client.force_login(user)
    pages = []
    for _, path, query in args["pages"]:
        # secure=True: production settings redirect plain HTTP to HTTPS.
        def get(path: str = path, query: dict[str, str] = query) -> Any:
            return client.get(path, query, secure=True)

        response = get()
        page: dict[str, Any] = {
            "url": response.request["PATH_INFO"]
            + ("?" + response.request["QUERY_STRING"] if query else ""),
            "status": response.status_code,
            "bytes": len(response.content),
            "times": [],
        }
        if response.status_code == 200:
            for _ in range(2):
                get()
            with CaptureQueriesContext(connection) as queries:
                get()
            page["queries"] = len(queries)
            for _ in range(args["runs"]):
                start = time.perf_counter()
                response = get()
                page["times"].append(time.perf_counter() - start)
                assert response.status_code == 200
        pages.append(page)
    return {"pages": pages, "entries": gallery.entry_count}


if __name__ == "__main__":
    worker_main({"measure": _measure_pages})
