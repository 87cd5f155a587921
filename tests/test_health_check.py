"""The health check before the swap: a staged build is started the way LocalAI starts it
and must answer the gRPC Health call, driven with small real gRPC backends
(tests/healthbackends.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from backends.core import oci
from backends.core.health import HealthCheck
from backends.core.install import Installer, InstallError, Source
from backends.core.installed import Metadata, read_metadata
from tests.base import make_build
from tests.healthbackends import grpc_backend, seen


@pytest.fixture
def backends(tmp_path: Path) -> Path:
    return tmp_path / "host" / "backends"


def checked_installer(backends: Path, timeout: float = 3, **extra: object) -> Installer:
    return Installer(
        backends,
        health_check=HealthCheck(timeout_seconds=timeout, grace_seconds=1),
        **extra,  # type: ignore[arg-type]
    )


def install(installer: Installer, source: Path) -> None:
    installer.install("cpu-bar", Source(str(source)), Metadata(uri=str(source)))


@pytest.fixture
def previous(backends: Path, tmp_path: Path) -> Path:
    """An installed version the failed upgrades must leave as it was."""
    Installer(backends).install(
        "cpu-bar", Source(str(make_build(tmp_path / "v1"))), Metadata()
    )
    return backends / "cpu-bar"


def assert_group_gone(build: Path) -> None:
    with pytest.raises(ProcessLookupError):
        os.killpg(seen(build)["pgid"], 0)


def assert_previous_kept(backends: Path, previous: Path) -> None:
    assert "v1" in (previous / "run.sh").read_text()
    assert sorted(p.name for p in backends.iterdir()) == ["cpu-bar"]  # no staging


def test_a_healthy_build_is_installed_and_stopped(
    backends: Path, tmp_path: Path, previous: Path
) -> None:
    build = grpc_backend(tmp_path / "healthy", "healthy")

    install(checked_installer(backends), build)

    assert (previous / "server.py").exists()
    assert read_metadata(previous) is not None
    assert_group_gone(build)


def test_the_build_runs_in_its_staging_folder_with_an_address_and_a_minimal_environment(
    backends: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://admin:pw@db/la")
    build = grpc_backend(tmp_path / "healthy", "healthy")

    install(checked_installer(backends), build)

    record = seen(build)
    assert record["cwd"] == str(backends / "cpu-bar.install-tmp")
    assert record["argv"][0] == "--addr"
    assert record["argv"][1].startswith("127.0.0.1:")
    assert "DATABASE_URL" not in record["env"]
    assert {"PATH", "HOME"} <= set(record["env"])
    assert record["pgid"] != os.getpgrp()


def test_a_build_that_exits_fails_with_the_tail_of_its_output(
    backends: Path, tmp_path: Path, previous: Path
) -> None:
    build = grpc_backend(tmp_path / "exits", "exits")

    with pytest.raises(InstallError) as failure:
        install(checked_installer(backends), build)

    message = str(failure.value)
    assert "exited with code 3" in message
    assert "libcuda.so.1: cannot open shared object file" in message
    assert "loading part 59" in message
    assert "loading part 10\n" not in message  # only the last 40 lines
    assert "hunter2secret" not in message and "abcdef123" not in message
    assert_previous_kept(backends, previous)
    assert_group_gone(build)


def test_a_build_that_never_answers_times_out(
    backends: Path, tmp_path: Path, previous: Path
) -> None:
    build = grpc_backend(tmp_path / "hangs", "hangs")

    started = time.monotonic()
    with pytest.raises(InstallError, match="did not answer the Health call within 2 s"):
        install(checked_installer(backends, timeout=2), build)

    assert time.monotonic() - started < 6
    assert_previous_kept(backends, previous)
    assert_group_gone(build)


def test_a_build_that_never_listens_times_out_with_its_output(
    backends: Path, tmp_path: Path, previous: Path
) -> None:
    build = grpc_backend(tmp_path / "never-listens", "never-listens")

    with pytest.raises(InstallError) as failure:
        install(checked_installer(backends, timeout=2), build)

    assert "nothing listened on its address" in str(failure.value)
    assert "warming up" in str(failure.value)
    assert_previous_kept(backends, previous)
    assert_group_gone(build)


def test_a_build_that_answers_something_else_than_ok_fails(
    backends: Path, tmp_path: Path, previous: Path
) -> None:
    build = grpc_backend(tmp_path / "not-ok", "not-ok")

    with pytest.raises(InstallError, match="LOADING"):
        install(checked_installer(backends), build)

    assert_previous_kept(backends, previous)
    assert_group_gone(build)


def test_a_process_that_ignores_sigterm_is_killed_with_its_group(
    backends: Path, tmp_path: Path
) -> None:
    build = grpc_backend(tmp_path / "stubborn", "healthy", stubborn_child=True)

    install(checked_installer(backends), build)

    assert_group_gone(build)


def test_a_cancel_during_the_health_wait_stops_the_build_within_two_seconds(
    backends: Path, tmp_path: Path, previous: Path
) -> None:
    build = grpc_backend(tmp_path / "never-listens", "never-listens")
    asked = threading.Event()
    threading.Timer(1.0, asked.set).start()

    started = time.monotonic()
    with pytest.raises(oci.Cancelled):
        install(
            checked_installer(backends, timeout=30, should_cancel=asked.is_set), build
        )

    assert time.monotonic() - started < 1.0 + 2.0 + 1  # grace of the stop included
    assert_previous_kept(backends, previous)
    assert_group_gone(build)


def test_without_the_check_a_build_that_would_fail_is_installed(
    backends: Path, tmp_path: Path
) -> None:
    build = grpc_backend(tmp_path / "exits", "exits")

    install(Installer(backends), build)

    assert (backends / "cpu-bar" / "server.py").exists()


def test_a_run_file_that_cannot_be_started_fails_the_check(
    backends: Path, tmp_path: Path, previous: Path
) -> None:
    build = tmp_path / "no-shebang"
    build.mkdir()
    (build / "run.sh").write_bytes(b"\x7fNOT-AN-EXECUTABLE\n")
    (build / "run.sh").chmod(0o755)

    with pytest.raises(InstallError, match="run.sh could not be started"):
        install(checked_installer(backends), build)

    assert_previous_kept(backends, previous)
