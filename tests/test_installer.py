"""The installer on its own: staging, the atomic swap with its backup, rollback, recovery
after a kill, and the run.sh checks, driven with local folders and tarballs."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from unittest import mock

import pytest

from backends.core import extract
from backends.core.install import Installer, InstallError, Source
from backends.core.installed import Metadata, read_metadata
from tests.base import make_build
from tests.slowserver import tarball


@pytest.fixture
def installer(tmp_path: Path) -> Installer:
    return Installer(tmp_path / "host" / "backends")


def install(installer: Installer, source: Path | str, name: str = "cpu-bar") -> None:
    uri = source.as_uri() if isinstance(source, Path) and source.is_file() else source
    installer.install(name, Source(str(uri)), Metadata(uri=str(uri)))


def listing(installer: Installer) -> list[str]:
    return sorted(p.name for p in installer.backends_path.iterdir())


def run_file(installer: Installer, name: str = "cpu-bar") -> str:
    return (installer.backends_path / name / "run.sh").read_text()


# --- install, swap and rollback -----------------------------------------------------------


def test_it_installs_a_folder_with_its_metadata_and_leaves_no_temp_folder(
    installer: Installer, tmp_path: Path
) -> None:
    install(installer, make_build(tmp_path / "v1"))

    assert "v1" in run_file(installer)
    metadata = read_metadata(installer.backends_path / "cpu-bar")
    assert metadata is not None
    assert (metadata.name, metadata.uri) == ("cpu-bar", str(tmp_path / "v1"))
    assert metadata.installed_at
    assert listing(installer) == ["cpu-bar"]


def test_a_reinstall_replaces_the_whole_folder(
    installer: Installer, tmp_path: Path
) -> None:
    install(installer, make_build(tmp_path / "v1", extra={"old.so": "old"}))
    install(installer, make_build(tmp_path / "v2", "v2"))

    assert "v2" in run_file(installer)
    assert not (installer.backends_path / "cpu-bar" / "old.so").exists()
    assert listing(installer) == ["cpu-bar"]


def test_a_reinstall_whose_build_has_no_run_sh_keeps_the_previous_install(
    installer: Installer, tmp_path: Path
) -> None:
    install(installer, make_build(tmp_path / "v1"))
    broken = tmp_path / "broken"
    broken.mkdir()

    with pytest.raises(InstallError, match="no run.sh"):
        install(installer, broken)

    assert "v1" in run_file(installer)
    assert listing(installer) == ["cpu-bar"]


def test_a_reinstall_from_a_missing_source_keeps_the_previous_install(
    installer: Installer, tmp_path: Path
) -> None:
    install(installer, make_build(tmp_path / "v1"))

    with pytest.raises(InstallError, match="download failed"):
        install(installer, (tmp_path / "gone.tar.gz").as_uri())

    assert "v1" in run_file(installer)
    assert listing(installer) == ["cpu-bar"]


def test_a_swap_that_fails_after_the_backup_puts_the_previous_install_back(
    installer: Installer, tmp_path: Path
) -> None:
    install(installer, make_build(tmp_path / "v1"))
    real_rename = os.rename

    def rename(src: Path, dst: Path) -> None:
        # The second rename of the swap (staging -> live) fails, as on a full disk.
        if Path(src).name.endswith(".install-tmp"):
            raise OSError("disk full")
        real_rename(src, dst)

    with (
        mock.patch("backends.core.install.os.rename", side_effect=rename),
        pytest.raises(OSError, match="disk full"),
    ):
        install(installer, make_build(tmp_path / "v2", "v2"))

    assert "v1" in run_file(installer)
    assert listing(installer) == ["cpu-bar"]


def test_a_first_install_whose_swap_fails_leaves_nothing(
    installer: Installer, tmp_path: Path
) -> None:
    with (
        mock.patch("backends.core.install.os.rename", side_effect=OSError("nope")),
        pytest.raises(OSError),
    ):
        install(installer, make_build(tmp_path / "v1"))

    assert listing(installer) == []


def test_a_tarball_is_extracted_into_staging_and_swapped_in(
    installer: Installer, tmp_path: Path
) -> None:
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(tarball({"run.sh": b"#!/bin/sh\necho tar\n"}))

    install(installer, archive)

    assert "tar" in run_file(installer)
    assert listing(installer) == ["cpu-bar"]


def test_a_target_that_is_a_file_or_a_symlink_is_refused(
    installer: Installer, tmp_path: Path
) -> None:
    installer.backends_path.mkdir(parents=True)
    (installer.backends_path / "cpu-bar").write_text("not a folder")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (installer.backends_path / "linked").symlink_to(elsewhere)
    build = make_build(tmp_path / "v1")

    for name in ("cpu-bar", "linked"):
        with pytest.raises(InstallError, match="is not a folder"):
            install(installer, build, name)

    assert (installer.backends_path / "cpu-bar").read_text() == "not a folder"
    assert list(elsewhere.iterdir()) == []
    assert listing(installer) == ["cpu-bar", "linked"]


# --- run.sh checks ------------------------------------------------------------------------


def test_a_build_without_run_sh_is_refused(
    installer: Installer, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()

    with pytest.raises(InstallError, match="has no run.sh"):
        install(installer, tmp_path / "empty")

    assert listing(installer) == []


def test_a_directory_named_run_sh_is_refused(
    installer: Installer, tmp_path: Path
) -> None:
    (tmp_path / "odd" / "run.sh").mkdir(parents=True)

    with pytest.raises(InstallError, match="run.sh is not a regular file"):
        install(installer, tmp_path / "odd")

    assert listing(installer) == []


@pytest.mark.parametrize("target", ["/bin/sh", "../../outside.sh", "inside.sh"])
def test_a_run_sh_that_is_a_symlink_is_refused(
    installer: Installer, tmp_path: Path, target: str
) -> None:
    build = tmp_path / "linked"
    build.mkdir()
    (build / "inside.sh").write_text("#!/bin/sh\n")
    (build / "run.sh").symlink_to(target)

    with pytest.raises(InstallError, match="run.sh is not a regular file"):
        install(installer, build)

    assert listing(installer) == []


def test_a_tarball_whose_run_sh_links_out_of_the_tree_installs_nothing(
    installer: Installer, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("run.sh")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../bin/sh"
        tar.addfile(info)
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(buffer.getvalue())

    with pytest.raises(extract.UnsafeArchiveError, match="outside the destination"):
        install(installer, archive)

    assert listing(installer) == []


def test_a_run_sh_without_the_execute_bit_is_made_executable(
    installer: Installer, tmp_path: Path
) -> None:
    build = make_build(tmp_path / "v1")
    (build / "run.sh").chmod(0o644)

    install(installer, build)

    assert os.access(installer.backends_path / "cpu-bar" / "run.sh", os.X_OK)


# --- recover() after a kill ---------------------------------------------------------------


def test_recover_removes_staging_and_puts_back_a_swap_cut_in_half(
    installer: Installer,
) -> None:
    backends = installer.backends_path
    make_build(backends / "cpu-bar.install-tmp")
    make_build(backends / "cpu-foo.install-backup", "old")
    make_build(backends / "whisper")
    make_build(backends / "whisper.install-backup", "older")
    (backends / ".download-abc").write_bytes(b"partial")

    actions = installer.recover()

    assert len(actions) == 4
    assert listing(installer) == ["cpu-foo", "whisper"]
    assert "old" in run_file(installer, "cpu-foo")
    assert "v1" in run_file(installer, "whisper")


def test_recover_on_a_missing_folder_does_nothing(installer: Installer) -> None:
    assert installer.recover() == []


def test_recover_leaves_a_tidy_folder_alone(
    installer: Installer, tmp_path: Path
) -> None:
    install(installer, make_build(tmp_path / "v1"))

    assert installer.recover() == []
    assert listing(installer) == ["cpu-bar"]
