"""Figure: job-status polling while 16 users browse a 100,000-entry catalogue.

Deployment: the production stack itself, ``deploy/serve`` as ``make serve`` runs it
(``bench.common.production_stack``: nginx with TLS in front of gunicorn's two lanes, the
app lane niced, the status lane for the polled routes, and the worker), with production
settings; SQLite by default, ``BENCH_POLLING_DB=postgresql`` for PostgreSQL. Its
variables keep their defaults: ``BENCH_ENV="STATUS_LANE=off GUNICORN_NICE=0"`` measures
the single-gunicorn arrangement for comparison. Before it starts, a child syncs the 100k
gallery of ``bench.scale`` (the real index with renamed copies), makes the catalogue's
runs-here set for this host, a staff user with a session and an API token, and a running
Job.

One poller asks ``/backends/jobs/<uuid>`` back to back over a kept-alive HTTPS
connection, as a script polls a job, for ``duration`` seconds idle, then for ``duration``
seconds while ``BENCH_BROWSERS`` (default 16; a list such as ``1,4,16`` measures each
count in turn on the same stack, one figure each, named ``..._<n>_browsers``) threads
of another process load catalogue pages (``/?page=<n>``, every fourth a search) with the session; idle and loaded alternate
``runs`` times. p99 of the poller's latencies is reported for each; the medians are
compared.

Target: p99 while browsing <= 3x the idle p99, and no poll answered other than 200.
"""

from __future__ import annotations

import http.client
import json
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
    RESULT_MARK,
    Figure,
    Unavailable,
    django_env,
    median,
    postgres_database,
    production_stack,
    run_worker,
    setup_django,
    sqlite_url,
    unavailable,
    unverified_tls,
    worker_main,
)
from bench.scale import ENTRIES, WORKER_TIMEOUT

TARGET = 3.0
BROWSERS = [int(n) for n in os.getenv("BENCH_BROWSERS", "16").split(",")]
DATABASE = os.getenv("BENCH_POLLING_DB", "sqlite")
SEARCHES = ("whisper", "llama", "cuda", "tts", "vllm")
# The browsers' process starts and has a request in flight before the poller starts.
BROWSE_LEAD = 1.5


def run(runs: int, duration: int, **_: Any) -> list[Figure]:
    figures = [
        Figure(
            f"status_poll_during_browse_{DATABASE}"
            + (f"_{count}_browsers" if len(BROWSERS) > 1 else ""),
            "ms",
            f"p99 ratio <= {TARGET:g}",
            TARGET,
        )
        for count in BROWSERS
    ]
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
            # Nothing leaves loopback: no icon downloads queued by the sync.
            env["LOCALAI_ADMIN_GALLERY_ICONS"] = "False"
            prepared = run_worker(
                "bench.browse_polling",
                {"task": "prepare", "gallery": str(gallery)},
                env,
                WORKER_TIMEOUT,
            )
            port = stack.enter_context(production_stack(env, tmp / "serve.log"))
            lanes = (
                f"status lane {env.get('STATUS_LANE', 'on')}, "
                f"app lane nice {env.get('GUNICORN_NICE', '10')}"
            )
            return [
                _measure(figure, count, port, prepared, runs, duration, lanes)
                for figure, count in zip(figures, BROWSERS, strict=True)
            ]
    except Unavailable as exc:
        return [unavailable(figure, str(exc)) for figure in figures]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _connection(port: int) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=120, context=unverified_tls()
    )


def _browsers(
    prepared: dict[str, Any], port: int, seconds: float, count: int
) -> subprocess.Popen[str]:
    """``count`` clients in a process of their own: the poller's timings never wait
    for their threads' turn at this process's interpreter lock."""
    args = {
        "task": "browse",
        "port": port,
        "cookie": f"{prepared['cookie']}={prepared['session']}",
        "pages": max(1, prepared["shown"] // 50),
        "browsers": count,
        "seconds": seconds,
    }
    return subprocess.Popen(
        [PYTHON, "-m", "bench.browse_polling", "--worker", json.dumps(args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def _browsed(process: subprocess.Popen[str]) -> dict[str, int]:
    out, _ = process.communicate(timeout=600)
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, int] = json.loads(line[len(RESULT_MARK) :])
            return result
    raise RuntimeError(f"the browsers' process failed (exit {process.returncode})")


def _measure(
    figure: Figure,
    count: int,
    port: int,
    prepared: dict[str, Any],
    runs: int,
    duration: int,
    lanes: str,
) -> Figure:
    headers = {"Authorization": f"Bearer {prepared['token']}"}
    status_path = f"/backends/jobs/{prepared['job']}"

    def poll(seconds: float) -> tuple[list[float], int]:
        connection = _connection(port)
        latencies, bad = [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            connection.request("GET", status_path, headers=headers)
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - start)
            bad += response.status != 200
        connection.close()
        return latencies, bad

    # Warm-up: every gunicorn worker imports, connects and reads the runs-here set.
    poll(2)
    _browsed(_browsers(prepared, port, 3, count))

    idle_p99, busy_p99, bad_polls = [], [], 0
    served = failed = 0
    for _ in range(runs):
        latencies, bad = poll(duration)
        idle_p99.append(_p99(latencies) * 1000)
        bad_polls += bad
        browsers = _browsers(prepared, port, BROWSE_LEAD + duration + 0.5, count)
        time.sleep(BROWSE_LEAD)
        latencies, bad = poll(duration)
        busy_p99.append(_p99(latencies) * 1000)
        bad_polls += bad
        browsed = _browsed(browsers)
        served += browsed["served"]
        failed += browsed["failed"]
    load = os.getloadavg()
    figure.value = median(busy_p99)
    figure.baseline = median(idle_p99)
    figure.samples = {"ours": busy_p99, "baseline": idle_p99}
    if bad_polls:
        figure.violations.append(f"{bad_polls} polls answered other than 200")
    figure.detail = (
        f"{prepared['entries']} entries; {count} browsers loaded {served} pages "
        f"({failed} not 200) over {runs} x {duration} s; make serve's stack ({lanes}); "
        f"load average {load[0]:.1f}"
    )
    figure.extra.update(
        browsers=count,
        entries=prepared["entries"],
        pages_loaded=served,
        pages_failed=failed,
        lanes=lanes,
        load_average=[round(x, 2) for x in load],
    )
    return figure


# --- worker ------------------------------------------------------------------------------


def _prepare(args: dict[str, Any]) -> dict[str, Any]:
    """Schema, the synced 100k gallery, its runs-here set, a user with a session and a
    token, and a running job, before the stack starts."""
    setup_django()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    from backends.models import ApiToken, Gallery, Job, Node, RunsHere
    from backends.services import catalogue

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


def _browse(args: dict[str, Any]) -> dict[str, int]:
    """``browsers`` threads, each loading catalogue pages back to back over its own
    kept-alive connection for ``seconds``, as logged-in users do."""
    stop_at = time.monotonic() + args["seconds"]
    headers = {"Cookie": args["cookie"]}
    counts = {"served": 0, "failed": 0}
    lock = threading.Lock()

    def browse() -> None:
        connection = _connection(args["port"])
        number = random.randrange(4)
        while time.monotonic() < stop_at:
            number += 1
            if number % 4 == 0:
                path = f"/?q={random.choice(SEARCHES)}"
            else:
                path = f"/?page={random.randint(1, args['pages'])}"
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            with lock:
                counts["served" if response.status == 200 else "failed"] += 1
        connection.close()

    threads = [threading.Thread(target=browse) for _ in range(args["browsers"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


if __name__ == "__main__":
    worker_main({"prepare": _prepare, "browse": _browse})
