"""Installs stalled on a silent source hold neither fresh installs nor maintenance.

Real ``manage.py run_worker`` processes on SQLite queues, against loopback servers that
stall after the first byte.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from huey.contrib.djhuey import HUEY

from backends.services import dispatch
from tests.base import make_build
from tests.slowserver import slow_server, tarball
from tests.workerhost import ROOT, host_env, job_row, manage, run_worker, wait_for

BUILD = tarball({"run.sh": b"#!/bin/sh\necho run\n"})


@dataclass
class Host:
    env: dict[str, str]
    db: Path
    backends: Path
    gallery: Path
    log: Path

    def sql(self, query: str, *params: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db, timeout=10) as conn:
            return conn.execute(query, params).fetchall()

    def start_installs(self, *names: str) -> list[str]:
        code = "from backends.services import jobs\n" + "".join(
            f"print('job', jobs.start('install', {name!r}, force=True).pk)\n"
            for name in names
        )
        output = manage(self.env, "shell", "-c", code)
        return [line.split()[1] for line in output.splitlines() if line[:4] == "job "]

    def state(self, job_id: str) -> str:
        return job_row(self.db, job_id)[0]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    gallery = tmp_path / "gallery.yaml"
    env = host_env(tmp_path, gallery)
    manage(env, "migrate", "--noinput")
    return Host(
        env,
        tmp_path / "db.sqlite3",
        tmp_path / "backends",
        gallery,
        tmp_path / "worker.log",
    )


@contextmanager
def worker(host: Host, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    process = run_worker(host.env | env, host.log)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def stalled_source() -> Iterator[str]:
    """A tarball host that sends one byte, then nothing for ten minutes."""
    with slow_server(BUILD, chunk=1, pause=600) as url:
        yield url


def gallery_yaml(entries: dict[str, str], **versions: str) -> str:
    lines = []
    for name, uri in entries.items():
        lines += [f"- name: {name}", f"  uri: {uri}"]
        if name in versions:
            lines.append(f"  version: {versions[name]!r}")
    return "\n".join(lines) + "\n"


def test_a_fresh_install_completes_while_two_installs_stall(host: Host) -> None:
    with (
        stalled_source() as stalled,
        slow_server(BUILD) as fast,
        worker(host),
    ):
        host.gallery.write_text(
            gallery_yaml(
                {"cpu-stuck-a": stalled, "cpu-stuck-b": stalled, "cpu-fresh": fast}
            )
        )
        manage(host.env, "sync_galleries")
        stuck = host.start_installs("cpu-stuck-a", "cpu-stuck-b")
        wait_for(lambda: all(host.state(job) == "running" for job in stuck))

        [fresh] = host.start_installs("cpu-fresh")
        wait_for(lambda: host.state(fresh) not in ("queued", "running"), timeout=30)

        assert host.state(fresh) == "completed", host.log.read_text()
        assert [host.state(job) for job in stuck] == ["running", "running"]
    assert (host.backends / "cpu-fresh" / "run.sh").exists()


def test_gallery_sync_and_upgrade_check_complete_while_every_install_thread_is_busy(
    host: Host,
) -> None:
    old = make_build(host.backends / "cpu-old", "old")
    (old / "metadata.json").write_text(json.dumps({"name": "cpu-old", "version": "1"}))
    with stalled_source() as stalled, worker(host, LOCALAI_ADMIN_INSTALL_WORKERS="2"):
        entries = {"cpu-stuck-a": stalled, "cpu-stuck-b": stalled, "cpu-old": stalled}
        host.gallery.write_text(gallery_yaml(entries, **{"cpu-old": "2"}))
        manage(host.env, "sync_galleries")
        stuck = host.start_installs("cpu-stuck-a", "cpu-stuck-b")
        wait_for(lambda: all(host.state(job) == "running" for job in stuck))

        host.gallery.write_text(
            gallery_yaml(entries | {"cpu-later": stalled}, **{"cpu-old": "2"})
        )
        manage(
            host.env,
            "shell",
            "-c",
            "from backends import tasks; tasks.sync_galleries(); tasks.check_upgrades()",
        )
        wait_for(
            lambda: host.sql(
                "select 1 from backends_gallerybackend where name = 'cpu-later'"
            ),
            timeout=30,
        )
        [(upgrade_available,)] = wait_for(
            lambda: host.sql(
                "select upgrade_available from backends_installedbackend "
                "where name = 'cpu-old' and checked_at is not null"
            ),
            timeout=30,
        )

        assert upgrade_available == 1
        assert [host.state(job) for job in stuck] == ["running", "running"]


def test_an_interrupt_waits_for_running_installs_and_a_second_one_stops_now(
    host: Host,
) -> None:
    with stalled_source() as stalled, worker(host) as process:
        host.gallery.write_text(gallery_yaml({"cpu-stuck": stalled}))
        manage(host.env, "sync_galleries")
        [stuck] = host.start_installs("cpu-stuck")
        wait_for(lambda: host.state(stuck) == "running")

        process.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1)
        process.send_signal(signal.SIGINT)

        # Not waiting for the stalled install (its stall deadline is 60 s): the bound
        # leaves room for a loaded two-core machine to tear the process down.
        assert process.wait(timeout=30) == 0, host.log.read_text()


def test_install_jobs_and_periodic_tasks_run_on_separate_queues() -> None:
    midnight = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    minutes = [midnight + datetime.timedelta(minutes=m) for m in range(24 * 60)]

    assert dispatch.run_job.huey is dispatch.INSTALLS
    assert not any(dispatch.INSTALLS.read_periodic(when) for when in minutes)
    assert "sweep_offline_nodes" in {t.name for t in HUEY.read_periodic(midnight)}


def test_install_workers_below_one_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=os.environ
        | {
            "LOCALAI_ADMIN_DATA_DIR": str(tmp_path),
            "LOCALAI_ADMIN_INSTALL_WORKERS": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "LOCALAI_ADMIN_INSTALL_WORKERS must be 1 or more" in result.stderr


@pytest.fixture(autouse=True)
def isolated_host() -> None:
    """These tests drive their own processes and databases; no Django test setup."""
