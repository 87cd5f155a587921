"""A real Huey consumer killed with SIGKILL in the middle of an install, then restarted."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.base import make_build
from tests.slowserver import slow_server, tarball

ROOT = Path(__file__).resolve().parent.parent


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


def consumer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
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


def wait_for(predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_killed_worker_fails_its_job_and_the_previous_install_survives(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db.sqlite3"
    backends = tmp_path / "backends"
    gallery = tmp_path / "gallery.yaml"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HUEY_REDIS_URL", "DATABASE_URL", "HUEY_IMMEDIATE")
    } | {
        "DEBUG": "True",
        "DATABASE_URL": f"sqlite:///{db}",
        "LOCALAI_ADMIN_DATA_DIR": str(tmp_path / "data"),
        "LOCALAI_BACKENDS_PATH": str(backends),
        # Plain shell builds that speak no gRPC (tests/conftest.py turns it off too).
        "LOCALAI_ADMIN_HEALTH_CHECK": "off",
        "LOCALAI_ADMIN_PROBE_ROOT": str(tmp_path),
        "LOCALAI_BACKEND_GALLERIES": json.dumps(
            [{"name": "localai", "url": gallery.as_uri()}]
        ),
        # The gallery file and the download server are local: the source policy must
        # allow them, as a deployment would.
        "LOCALAI_ADMIN_LOCAL_ROOTS": str(tmp_path),
        "LOCALAI_ADMIN_PRIVATE_HOSTS": "127.0.0.1",
    }
    old = make_build(backends / "cpu-slow", "old")
    (old / "metadata.json").write_text(json.dumps({"name": "cpu-slow"}))
    body = tarball({"run.sh": b"#!/bin/sh\necho new\n", "big.bin": os.urandom(4 << 20)})
    log = tmp_path / "consumer.log"
    with slow_server(body) as url:
        gallery.write_text(f"- name: cpu-slow\n  uri: {url}\n")
        manage(env, "migrate", "--noinput")
        manage(env, "sync_galleries")
        job_id = manage(
            env,
            "shell",
            "-c",
            "from backends.services import jobs; "
            "print(jobs.start('install', 'cpu-slow', force=True).pk)",
        ).split()[-1]

        first = consumer(env, log)
        try:
            wait_for(lambda: job_row(db, job_id)[1] > 0)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert job_row(db, job_id)[0] == "running"
        assert (backends / "cpu-slow.install-tmp").exists()

        second = consumer(env, log)
        try:
            state, _bytes, error = wait_for(
                lambda: (row := job_row(db, job_id))[0] != "running" and row
            )
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            second.wait(timeout=30)

    assert state == "failed", log.read_text()
    assert "worker stopped" in error
    assert "old" in (backends / "cpu-slow" / "run.sh").read_text()
    assert sorted(p.name for p in backends.iterdir()) == ["cpu-slow"]


@pytest.fixture(autouse=True)
def isolated_host() -> None:
    """This test drives its own processes and database; no Django test setup needed."""
