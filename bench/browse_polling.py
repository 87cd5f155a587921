"""Figure: job-status polling while 16 users browse a 100,000-entry catalogue.

Deployment as the polling figure (gunicorn, ``bench.polling.GUNICORN_ARGS``, production
settings; SQLite by default, ``BENCH_POLLING_DB=postgresql`` for PostgreSQL). A child
first syncs the 100k gallery of ``bench.scale`` (the real index with renamed copies),
makes the catalogue's runs-here set for this host, a staff user with a session and an
API token, and a running Job.

One poller asks ``/backends/jobs/<uuid>`` back to back over a kept-alive connection,
as a dashboard polls a job, for ``duration`` seconds idle, then for ``duration``
seconds while ``BROWSERS`` threads load catalogue pages (``/?page=<n>``, every fourth a
search) with the session; idle and loaded alternate ``runs`` times. p99 of the
poller's latencies is reported for each; the medians are compared.

Target: p99 while browsing <= 3x the idle p99, and no poll answered other than 200.
"""

from __future__ import annotations

import http.client
import os
import random
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    REPO,
    Figure,
    Unavailable,
    django_env,
    free_port,
    median,
    postgres_database,
    run_worker,
    setup_django,
    sqlite_url,
    stop,
    unavailable,
    wait_for_port,
    worker_main,
)
from bench.polling import GUNICORN_ARGS
from bench.scale import ENTRIES, WORKER_TIMEOUT

TARGET = 3.0
BROWSERS = 16
DATABASE = os.getenv("BENCH_POLLING_DB", "sqlite")
SEARCHES = ("whisper", "llama", "cuda", "tts", "vllm")


def run(runs: int, duration: int, **_: Any) -> list[Figure]:
    figure = Figure(
        f"status_poll_during_browse_{DATABASE}",
        "ms",
        f"p99 ratio <= {TARGET:g}",
        TARGET,
    )
    try:
        with ExitStack() as stack:
            tmp = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-browse-"))
            )
            gallery = tmp / "gallery.yaml"
            run_worker(
                "bench.scale",
                {"task": "write", "gallery": str(gallery), "entries": ENTRIES},
                timeout=WORKER_TIMEOUT,
            )
            if DATABASE == "postgresql":
                url = stack.enter_context(postgres_database("browse"))
            else:
                url = sqlite_url(tmp)
            env = django_env(tmp, url)
            env["LOCALAI_ADMIN_GALLERY_MAX_ENTRIES"] = str(max(ENTRIES, 20_000))
            env["LOCALAI_ADMIN_LOCAL_ROOTS"] = str(tmp)
            prepared = run_worker(
                "bench.browse_polling",
                {"task": "prepare", "gallery": str(gallery)},
                env,
                WORKER_TIMEOUT,
            )
            port = free_port()
            log = stack.enter_context(open(tmp / "gunicorn.log", "w"))
            server = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "gunicorn",
                    *GUNICORN_ARGS.split(),
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--error-logfile",
                    "-",
                    "--log-level",
                    "warning",
                    "localai_admin.wsgi:application",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(stop, server)
            wait_for_port(port, server)
            return [_measure(figure, port, prepared, runs, duration)]
    except Unavailable as exc:
        return [unavailable(figure, str(exc))]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _measure(
    figure: Figure, port: int, prepared: dict[str, Any], runs: int, duration: int
) -> Figure:
    token_headers = {
        "Authorization": f"Bearer {prepared['token']}",
        "X-Forwarded-Proto": "https",
    }
    session_headers = {
        "Cookie": f"{prepared['cookie']}={prepared['session']}",
        "X-Forwarded-Proto": "https",
    }
    status_path = f"/backends/jobs/{prepared['job']}"
    pages = max(1, prepared["shown"] // 50)

    def poll(seconds: float) -> tuple[list[float], int]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        latencies, bad = [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            connection.request("GET", status_path, headers=token_headers)
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - start)
            bad += response.status != 200
        connection.close()
        return latencies, bad

    def browse(stop_at: list[float], served: list[int], failed: list[int]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        number = 0
        while time.monotonic() < stop_at[0]:
            number += 1
            if number % 4 == 0:
                path = f"/?q={random.choice(SEARCHES)}"
            else:
                path = f"/?page={random.randint(1, pages)}"
            connection.request("GET", path, headers=session_headers)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                served[0] += 1
            else:
                failed[0] += 1
        connection.close()

    # Warm-up: both gunicorn workers import, connect and read the runs-here set.
    poll(2)
    warm = [time.monotonic() + 3]
    threads = [threading.Thread(target=browse, args=(warm, [0], [0])) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    idle_p99, busy_p99, bad_polls = [], [], 0
    served, failed = [0], [0]
    for _ in range(runs):
        latencies, bad = poll(duration)
        idle_p99.append(_p99(latencies) * 1000)
        bad_polls += bad
        stop_at = [time.monotonic() + duration + 1]
        threads = [
            threading.Thread(target=browse, args=(stop_at, served, failed))
            for _ in range(BROWSERS)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # every browser has a request in flight
        latencies, bad = poll(duration)
        busy_p99.append(_p99(latencies) * 1000)
        bad_polls += bad
        for thread in threads:
            thread.join()
    figure.value = median(busy_p99)
    figure.baseline = median(idle_p99)
    figure.samples = {"ours": busy_p99, "baseline": idle_p99}
    if bad_polls:
        figure.violations.append(f"{bad_polls} polls answered other than 200")
    figure.detail = (
        f"{prepared['entries']} entries; {BROWSERS} browsers loaded {served[0]} pages "
        f"({failed[0]} not 200) over {runs} x {duration} s; gunicorn {GUNICORN_ARGS}"
    )
    figure.extra["pages_loaded"] = served[0]
    figure.extra["pages_failed"] = failed[0]
    return figure


# --- worker ------------------------------------------------------------------------------


def _prepare(args: dict[str, Any]) -> dict[str, Any]:
    """Schema, the synced 100k gallery, its runs-here set, a user with a session and a
    token, and a running job, before gunicorn starts."""
    setup_django()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from backends.models import ApiToken, Gallery, Job, Node, RunsHere
    from backends.services import catalogue

    call_command("collectstatic", interactive=False, verbosity=0)
    gallery = Gallery.objects.create(name="bench", url=Path(args["gallery"]).as_uri())
    summary = gallery.sync(force=True)
    if gallery.last_error:
        raise RuntimeError(summary)
    capability = Node.objects.local().current_capability()
    catalogue.runs_here_set(capability)
    user = get_user_model().objects.create_user(
        "bench", "bench@example.invalid", is_staff=True, is_superuser=True
    )
    _, value = ApiToken.objects.create_token(user, "bench")
    client = Client()
    client.force_login(user)
    job = Job.objects.create(
        kind="install",
        target="x",
        node=Node.objects.local(),
        state="running",
        progress=42,
        started_at=timezone.now(),
    )
    return {
        "token": value,
        "job": str(job.pk),
        "cookie": settings.SESSION_COOKIE_NAME,
        "session": client.cookies[settings.SESSION_COOKIE_NAME].value,
        "entries": gallery.entry_count,
        "shown": RunsHere.objects.filter(capability=capability).count(),
    }


if __name__ == "__main__":
    worker_main({"prepare": _prepare})
