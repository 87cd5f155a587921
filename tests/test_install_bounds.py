"""An install is bounded (bytes written, free space kept, path depth and length), and
every tree that gets in can be replaced, deleted and cleaned up after a crash."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from backends.core import limits
from backends.core.extract import UnsafeArchiveError
from backends.core.install import (
    BACKUP_SUFFIX,
    STAGING_SUFFIX,
    Installer,
    InstallError,
    Source,
)
from backends.core.installed import Metadata, folder_size
from backends.core.limits import Budget, LimitExceeded, Limits, has_room
from tests.base import PipelineTestCase, make_build
from tests.imagebuild import Entries, MiB, bomb, compress, file, make_tar
from tests.slowserver import serve

RUN = file("run.sh", "#!/bin/sh\necho new\n", 0o755)
# Limits raised far enough to let very deep trees in: what must then still work.
DEEP_LIMITS = Limits(max_path_depth=10_000, max_path_bytes=1 << 20)


def deep(depth: int) -> str:
    return "/".join(["d"] * depth + ["leaf.txt"])


def tarball(folder: Path, entries: Entries, name: str = "build.tar.gz") -> Source:
    path = folder / name
    path.write_bytes(compress(make_tar(entries), "gzip"))
    return Source(path.as_uri())


def bomb_tarball(folder: Path, compression: str, mebibytes: int) -> Source:
    path = folder / f"bomb.tar.{compression[:2]}"
    path.write_bytes(b"".join(bomb(compression, mebibytes)))
    return Source(path.as_uri())


@pytest.fixture
def backends(tmp_path: Path) -> Path:
    folder = tmp_path / "backends"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def previous(backends: Path) -> Path:
    """An installed build the failed installs must leave as it was."""
    Installer(backends).install(
        "demo", Source(str(make_build(backends.parent / "v1"))), Metadata()
    )
    return backends / "demo"


def leftovers(backends: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in backends.iterdir()
        if entry.name.endswith((STAGING_SUFFIX, BACKUP_SUFFIX))
        or entry.name.startswith(".download-")
    )


def assert_untouched(previous: Path) -> None:
    assert (previous / "run.sh").read_text() == "#!/bin/sh\necho v1\n"
    assert leftovers(previous.parent) == []


# --- bytes written -------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_bomb_tarball_fails_at_the_byte_limit_and_keeps_the_previous_install(
    backends: Path, previous: Path, compression: str
) -> None:
    source = bomb_tarball(backends.parent, compression, 1024)  # 1 GiB unpacked
    installer = Installer(backends, limits=Limits(max_backend_bytes=4 * MiB))

    with pytest.raises(InstallError) as raised:
        installer.install("demo", source, Metadata())

    assert "more than 4.0 MiB" in str(raised.value)
    assert "LOCALAI_ADMIN_MAX_BACKEND_BYTES" in str(raised.value)
    assert_untouched(previous)


def test_a_folder_copy_fails_at_the_byte_limit(backends: Path, previous: Path) -> None:
    folder = make_build(backends.parent / "big")
    (folder / "weights.bin").write_bytes(bytes(2 * MiB))
    installer = Installer(backends, limits=Limits(max_backend_bytes=MiB))

    with pytest.raises(InstallError, match="LOCALAI_ADMIN_MAX_BACKEND_BYTES"):
        installer.install("demo", Source(str(folder)), Metadata())

    assert_untouched(previous)


@contextmanager
def endless_server() -> Iterator[str]:
    """A loopback server whose answer never ends (no length, zeros until hung up)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(bytes(256 << 10))
            except OSError:
                pass

        def log_message(self, *args: object) -> None:
            pass

    with serve(Handler) as port:
        yield f"http://127.0.0.1:{port}/backend.tar.gz"


def test_an_endless_download_fails_at_the_byte_limit(
    backends: Path, previous: Path
) -> None:
    installer = Installer(backends, limits=Limits(max_backend_bytes=4 * MiB))

    with (
        endless_server() as url,
        pytest.raises(InstallError, match="the download writes more than 4.0 MiB"),
    ):
        installer.install("demo", Source(url), Metadata())

    assert_untouched(previous)


# --- free space ----------------------------------------------------------------------


def test_an_install_stops_before_free_space_falls_under_the_reserve(
    backends: Path, previous: Path
) -> None:
    source = tarball(backends.parent, [RUN])
    free = os.statvfs(backends).f_bavail * os.statvfs(backends).f_frsize
    installer = Installer(backends, limits=Limits(disk_reserve_bytes=free + (1 << 30)))

    with pytest.raises(InstallError) as raised:
        installer.install("demo", source, Metadata())

    assert "must stay free" in str(raised.value)
    assert "LOCALAI_ADMIN_DISK_RESERVE_BYTES" in str(raised.value)
    assert_untouched(previous)


def test_the_disk_space_check_before_a_pull_names_the_reserve(backends: Path) -> None:
    budget = Budget(Limits(disk_reserve_bytes=3 << 30), backends)

    with pytest.raises(LimitExceeded) as raised:
        budget.check_disk(1 << 60)

    assert "3.0 GiB must stay free" in str(raised.value)
    assert "LOCALAI_ADMIN_DISK_RESERVE_BYTES" in str(raised.value)


def test_a_fetch_fits_when_the_reserve_stays_free_after_it(
    backends: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reserve = 1 << 30
    monkeypatch.setattr(limits, "free_bytes", lambda disk: reserve + 100)
    budget = Budget(Limits(disk_reserve_bytes=reserve), backends)

    budget.check_disk(100)
    with pytest.raises(LimitExceeded):
        budget.check_disk(101)
    # The plans answer by the same rule.
    assert has_room(reserve + 100, 100, reserve)
    assert not has_room(reserve + 100, 101, reserve)


# --- path depth and length -----------------------------------------------------------


def test_a_folder_copy_refuses_a_path_deeper_than_the_limit_by_name(
    backends: Path, previous: Path
) -> None:
    folder = make_build(backends.parent / "deep")
    (folder / deep(70)).parent.mkdir(parents=True)
    (folder / deep(70)).write_text("x")

    with pytest.raises(InstallError, match=r"'d/d/.*deeper than 64 folders"):
        Installer(backends).install("demo", Source(str(folder)), Metadata())

    assert_untouched(previous)


@pytest.mark.parametrize("depth", [1900, 3000])
def test_a_deep_tree_is_refused_by_name_and_leaves_no_staging_folder(
    backends: Path, previous: Path, depth: int
) -> None:
    source = tarball(backends.parent, [RUN, file(deep(depth), "x")])

    with pytest.raises(UnsafeArchiveError, match="deeper than 64 folders"):
        Installer(backends).install("demo", source, Metadata())

    assert_untouched(previous)


def test_a_tree_too_deep_for_the_kernel_leaves_no_staging_folder(
    backends: Path, previous: Path
) -> None:
    # With the limits raised past PATH_MAX, 3,000 levels fail part way down (the
    # kernel refuses the path); the 2,000 levels made by then must still go.
    source = tarball(backends.parent, [RUN, file(deep(3000), "x")])

    with pytest.raises(InstallError, match="File name too long"):
        Installer(backends, limits=DEEP_LIMITS).install("demo", source, Metadata())

    assert_untouched(previous)


# --- every tree that got in can be replaced, deleted, recovered ----------------------


@pytest.fixture
def deep_install(backends: Path) -> Path:
    """A backend 1,900 folders deep, let in by raised limits."""
    source = tarball(backends.parent, [RUN, file(deep(1900), "bottom")], "deep.tar.gz")
    Installer(backends, limits=DEEP_LIMITS).install("deep", source, Metadata())
    assert (backends / "deep" / deep(1900)).read_text() == "bottom"
    return backends / "deep"


def test_a_1900_deep_backend_can_be_reinstalled(
    backends: Path, deep_install: Path
) -> None:
    source = tarball(backends.parent, [RUN], "flat.tar.gz")

    Installer(backends).install("deep", source, Metadata())

    assert (deep_install / "run.sh").read_text() == "#!/bin/sh\necho new\n"
    assert not (deep_install / "d").exists()
    assert leftovers(backends) == []


def test_a_1900_deep_backend_can_be_deleted(backends: Path, deep_install: Path) -> None:
    assert Installer(backends).delete("deep") == ["deep"]

    assert not deep_install.exists()


@pytest.mark.parametrize("suffix", [STAGING_SUFFIX, BACKUP_SUFFIX])
def test_crash_recovery_removes_a_1900_deep_working_folder(
    backends: Path, deep_install: Path, suffix: str
) -> None:
    # A worker killed mid-install leaves the half-written staging folder, or the
    # backup of a build that is back in place.
    make_build(backends / "deep-copy")
    os.rename(deep_install, backends / f"deep-copy{suffix}")

    actions = Installer(backends).recover()

    assert actions == [f"removed deep-copy{suffix}"]
    assert sorted(entry.name for entry in backends.iterdir()) == ["deep-copy"]


def test_the_size_of_a_1900_deep_backend_is_counted(deep_install: Path) -> None:
    assert folder_size(deep_install) >= len("bottom")


# --- the settings reach the installer ------------------------------------------------


class InstallLimitSettingsTestCase(PipelineTestCase):
    def install_external(self, source: Source) -> dict[str, str]:
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post(
                "/api/backends/install-external", {"uri": source.uri, "name": "bomb"}
            )
        body: dict[str, str] = self.api_get(f"/backends/jobs/{r.json()['id']}").json()
        return body

    def test_the_byte_limit_is_read_from_its_setting(self) -> None:
        source = bomb_tarball(self.sources, "gzip", 64)

        with self.settings(LOCALAI_ADMIN_MAX_BACKEND_BYTES=MiB):
            status = self.install_external(source)

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("more than 1.0 MiB", status["error"])
        self.assertIn("LOCALAI_ADMIN_MAX_BACKEND_BYTES", status["error"])
        self.assertEqual(leftovers(self.backends), [])

    def test_the_disk_reserve_is_read_from_its_setting(self) -> None:
        source = tarball(self.sources, [RUN])

        with self.settings(LOCALAI_ADMIN_DISK_RESERVE_BYTES=1 << 60):
            status = self.install_external(source)

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("LOCALAI_ADMIN_DISK_RESERVE_BYTES", status["error"])
