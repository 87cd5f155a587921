"""A real Huey consumer killed with SIGKILL in the middle of an install, then restarted."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.base import make_build
from tests.slowserver import slow_server, tarball
from tests.workerhost import host_env, job_row, manage, run_worker, wait_for


def test_a_killed_worker_fails_its_job_and_the_previous_install_survives(
    tmp_path: Path,
) -> None:
    db = tmp_path / "db.sqlite3"
    backends = tmp_path / "backends"
    gallery = tmp_path / "gallery.yaml"
    env = host_env(tmp_path, gallery)
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

        first = run_worker(env, log)
        try:
            wait_for(lambda: job_row(db, job_id)[1] > 0)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert job_row(db, job_id)[0] == "running"
        assert (backends / "cpu-slow.install-tmp").exists()

        second = run_worker(env, log)
        try:
            state, _bytes, error = wait_for(
                lambda: row if (row := job_row(db, job_id))[0] != "running" else None
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
