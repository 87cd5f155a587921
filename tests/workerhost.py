"""A host of its own for tests that run real ``manage.py`` processes (the worker tests):
a temporary folder with its SQLite database, backends folder and gallery file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def host_env(tmp_path: Path, gallery: Path) -> dict[str, str]:
    """The environment of a host kept in ``tmp_path``: ``db.sqlite3``, ``backends/``,
    ``data/``, and one gallery read from ``gallery``."""
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("HUEY_REDIS_URL", "DATABASE_URL", "HUEY_IMMEDIATE")
    } | {
        "DEBUG": "True",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "LOCALAI_ADMIN_DATA_DIR": str(tmp_path / "data"),
        "LOCALAI_BACKENDS_PATH": str(tmp_path / "backends"),
        # Plain shell builds that speak no gRPC (tests/conftest.py turns it off too).
        "LOCALAI_ADMIN_HEALTH_CHECK": "off",
        "LOCALAI_ADMIN_PROBE_ROOT": str(tmp_path),
        "LOCALAI_BACKEND_GALLERIES": json.dumps(
            [{"name": "localai", "url": gallery.as_uri()}]
        ),
        # The sources are loopback servers and files in the test folder: the source
        # policy must allow them, as a deployment would.
        "LOCALAI_ADMIN_PRIVATE_HOSTS": "127.0.0.1",
        "LOCALAI_ADMIN_LOCAL_ROOTS": str(tmp_path),
    }


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``manage.py run_worker`` in a session of its own (killed as a group), its output
    appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "run_worker"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def job_row(db: Path, job_id: str) -> tuple[str, int, str]:
    with sqlite3.connect(db, timeout=10) as conn:
        row = conn.execute(
            "select state, current_bytes, error from backends_job where id = ?",
            (job_id.replace("-", ""),),
        ).fetchone()
    assert row is not None, f"no job {job_id}"
    state, current_bytes, error = row
    return str(state), int(current_bytes), str(error)


def wait_for[T](predicate: Callable[[], T | None], timeout: float = 60) -> T:
    """The first true value ``predicate`` gives, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")
