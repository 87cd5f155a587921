"""Shared pieces: the Figure record, child-process workers, temporary databases, ports.

Nothing here imports Django. Workers (``python -m bench.<module> --worker '<json>'``) do,
in their own process with the environment built by ``django_env``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GALLERY_FIXTURE = (
    REPO / ".." / "shared" / "fixtures" / "galleries" / "localai-index.yaml"
)
RESULTS_DIR = REPO / "bench" / "results"
# The server that holds the throw-away benchmark database (created and dropped per run).
POSTGRES_ADMIN_URL = os.getenv(
    "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
RESULT_MARK = "BENCH-RESULT "


class Unavailable(Exception):
    """A figure cannot be measured yet (route missing, pipeline not built, no PostgreSQL)."""


@dataclass
class Figure:
    """One line of the report and one object of latest.json.

    ``limit`` applies to ``ratio`` (value / baseline): ``ratio <= limit`` when ``goal`` is
    "max", ``ratio >= limit`` when "min", ``ratio < limit`` when "below" (absolute
    targets, whose baseline is the target itself), ``|ratio - 1| <= limit`` when "within".
    """

    name: str
    unit: str
    target: str
    limit: float
    goal: str = "max"
    value: float | None = None
    baseline: float | None = None
    status: str = "ok"
    detail: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)
    # Conditions besides the ratio that the target includes ("12 non-2xx responses").
    violations: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.status != "ok" or ratio is None:
            return None
        if self.violations:
            return False
        if self.goal == "min":
            return ratio >= self.limit
        if self.goal == "below":
            return ratio < self.limit
        if self.goal == "within":
            return abs(ratio - 1) <= self.limit
        return ratio <= self.limit

    def line(self) -> str:
        def num(v: float | None) -> str:
            if v is None:
                return "-"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"

        met = {True: "yes", False: "NO", None: "n/a"}[self.met]
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else "-"
        head = (
            f"{self.name:<32} value {num(self.value):>7} {self.unit:<6} "
            f"baseline {num(self.baseline):>7} {self.unit:<6} ratio {ratio:>6}  "
            f"target {self.target:<22} met {met}"
        )
        tail = [
            s
            for s in (
                self.status if self.status != "ok" else "",
                *self.violations,
                self.detail,
            )
            if s
        ]
        return head + (f"  [{'; '.join(tail)}]" if tail else "")

    def to_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "name": self.name,
            "value": _round(self.value),
            "baseline": _round(self.baseline),
            "ratio": _round(ratio),
            "target": self.target,
            "met": self.met,
            "unit": self.unit,
            "status": self.status,
            "detail": "; ".join(
                [*self.violations, self.detail] if self.detail else self.violations
            ),
            "extra": self.extra,
            "samples": {k: [_round(x) for x in v] for k, v in self.samples.items()},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def median(values: list[float]) -> float:
    return statistics.median(values)


def unavailable(figure: Figure, why: str) -> Figure:
    figure.status = why
    return figure


# --- child processes -------------------------------------------------------------------


def django_env(
    tmp: Path,
    database_url: str,
    *,
    settings: str = "bench.settings",
    debug: bool = False,
) -> dict[str, str]:
    """A clean environment for a Django child: its own data dir, database and settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOCALAI_", "DATABASE_", "HUEY_", "SECURE_", "DJANGO_"))
        and k not in ("SECRET_KEY", "SECRET_KEY_FILE", "ALLOWED_HOSTS", "DEBUG")
    }
    data = tmp / "data"
    probe_root = tmp / "probe-root"
    data.mkdir(parents=True, exist_ok=True)
    probe_root.mkdir(exist_ok=True)
    env.update(
        DJANGO_SETTINGS_MODULE=settings,
        DEBUG="True" if debug else "False",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="127.0.0.1,testserver",
        LOCALAI_ADMIN_DATA_DIR=str(data),
        LOCALAI_BACKENDS_PATH=str(tmp / "backends"),
        # An empty probe root: a CPU-only host, and no GPU tools run during a measurement.
        LOCALAI_ADMIN_PROBE_ROOT=str(probe_root),
        # No default gallery: only the one the benchmark creates, from a file of its
        # temp dir, which local sources may then be read from.
        LOCALAI_BACKEND_GALLERIES="[]",
        LOCALAI_ADMIN_LOCAL_ROOTS=str(tmp),
        DATABASE_URL=database_url,
        BENCH_STATIC_ROOT=str(tmp / "static"),
        LOG_LEVEL="WARNING",
        PYTHONDONTWRITEBYTECODE="1",
    )
    # Experiments only ("DATABASE_CONN_MAX_AGE=60 LOG_LEVEL=INFO"): the default run
    # measures the product's defaults.
    for item in shlex.split(os.getenv("BENCH_ENV", "")):
        key, _, value = item.partition("=")
        env[key] = value
    return env


def run_worker(
    module: str,
    args: dict[str, Any],
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run ``python -m <module> --worker <json>`` and return the JSON it reports."""
    proc = subprocess.run(
        [PYTHON, "-m", module, "--worker", json.dumps(args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return result
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise RuntimeError(f"{module} worker failed (exit {proc.returncode}): {tail}")


def worker_main(handlers: dict[str, Callable[[dict[str, Any]], Any]]) -> None:
    """Entry point of a worker: ``--worker '{"task": ..., ...}'``; prints the result."""
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit(
            f"usage: python -m {sys.argv[0]} --worker '<json>' (run by python -m bench)"
        )
    args = json.loads(sys.argv[2])
    result = handlers[args["task"]](args)
    print(RESULT_MARK + json.dumps(result), flush=True)


def setup_django(migrate: bool = True) -> None:
    """In a worker: configure Django from the environment and create the schema."""
    import django
    from django.core.management import call_command

    django.setup()
    if migrate:
        call_command("migrate", interactive=False, verbosity=0)


# --- databases -------------------------------------------------------------------------


def sqlite_url(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'data' / 'bench.sqlite3'}"


@contextmanager
def postgres_database(tag: str) -> Iterator[str]:
    """Create a throw-away PostgreSQL database, yield its URL, drop it afterwards."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a product dependency
        raise Unavailable(f"PostgreSQL unavailable: {exc}") from None
    name = f"localai_admin_bench_{tag}_{os.getpid()}"
    parts = urlsplit(POSTGRES_ADMIN_URL)
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        raise Unavailable(
            f"PostgreSQL unavailable at {parts.hostname}:{parts.port}"
        ) from exc
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        with psycopg.connect(
            POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- network ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args!r} exited with {proc.returncode} before listening"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s")


def stop(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Stop a child we started (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the production stack ---------------------------------------------------------------


@contextmanager
def production_stack(env: dict[str, str], log_path: Path) -> Iterator[int]:
    """``deploy/serve``, what ``make serve`` runs (nginx with TLS in front of gunicorn's
    lanes, and the worker), on free loopback ports with ``env`` (a ``django_env``: its
    data dir, database and secret key); yields nginx's HTTPS port. The stack's own
    variables (``STATUS_LANE``, ``GUNICORN_NICE``...) keep their defaults unless ``env``
    sets them (``BENCH_ENV``)."""
    https, http, app, status = _free_ports(4)
    serve_env = {
        "BIN": str(Path(PYTHON).parent),
        "SERVE_HOST": "127.0.0.1",
        "SERVE_HTTPS_PORT": str(https),
        "SERVE_HTTP_PORT": str(http),
        "SERVE_APP_PORT": str(app),
        "SERVE_STATUS_PORT": str(status),
        "LOCALAI_ADMIN_PASSWORD": secrets.token_urlsafe(12),
    } | env
    # Nothing leaves loopback: the worker would fetch the galleries' icons.
    serve_env["LOCALAI_ADMIN_GALLERY_ICONS"] = "False"
    with open(log_path, "wb") as log:
        # Its own session: stopping it reaches every process it started.
        proc = subprocess.Popen(
            [str(REPO / "deploy" / "serve")],
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=serve_env,
        )
    try:
        deadline = time.monotonic() + 300
        while not re.search(r"^localai-admin: https://", log_path.read_text(), re.M):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text().strip().splitlines()[-5:]
                raise RuntimeError(f"deploy/serve did not start: {' | '.join(tail)}")
            time.sleep(0.2)
        yield https
    finally:
        _stop_group(proc)


def unverified_tls() -> ssl.SSLContext:
    """For the self-signed certificate deploy/serve makes."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return list(ports)


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the session deploy/serve leads (it stops its children), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
