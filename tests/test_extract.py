from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from backends.core.extract import (
    ArchiveError,
    UnsafeArchiveError,
    bounded,
    extract_layer,
    extract_tarball,
)
from backends.core.limits import Budget, LimitExceeded, Limits
from tests.imagebuild import (
    Entries,
    Entry,
    MiB,
    bomb,
    compress,
    directory,
    file,
    hardlink,
    make_layer,
    make_tar,
    opaque,
    special,
    symlink,
    whiteout,
)


@pytest.fixture(autouse=True)
def isolated_host() -> None:
    """Extraction needs no Django: replaces conftest's settings-based fixture."""


@dataclass
class Sandbox:
    """``root/target`` is extracted into; ``root/outside`` must never change."""

    root: Path

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def snapshot(self) -> dict[str, tuple[int, bytes]]:
        """Everything under root except the target: path -> (mode, content)."""
        result = {}
        for path in sorted(self.root.rglob("*")):
            if path == self.target or self.target in path.parents:
                continue
            info = path.lstat()
            content = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
            result[str(path.relative_to(self.root))] = (info.st_mode, content)
        return result


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    box = Sandbox(tmp_path)
    box.target.mkdir()
    box.outside.mkdir()
    (box.outside / "victim.txt").write_text("keep me")
    (box.outside / "dir").mkdir()
    (box.outside / "dir" / "inner.txt").write_text("keep me too")
    return box


def apply(target: Path, entries: Entries, compression: str = "gzip") -> int:
    return extract_layer(io.BytesIO(make_layer(entries, compression).data), target)


# --- ordinary layers -------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_it_extracts_files_dirs_and_modes(tmp_path: Path, compression: str) -> None:
    entries = [
        directory("bin"),
        file("run.sh", "#!/bin/sh\nexec ./bin/server\n", 0o755),
        file("bin/server", b"\x7fELF", 0o750),
        file("lib/deep/libx.so", b"x" * 5000, 0o644),
        file("README", "hi", 0o400),
    ]
    count = apply(tmp_path, entries, compression)

    assert count == 5
    assert (tmp_path / "run.sh").read_text().startswith("#!/bin/sh")
    assert os.access(tmp_path / "run.sh", os.X_OK)
    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "bin/server").stat().st_mode) == 0o750
    assert (tmp_path / "lib/deep/libx.so").read_bytes() == b"x" * 5000
    # data_filter: the owner can always read and write
    assert stat.S_IMODE((tmp_path / "README").stat().st_mode) == 0o600
    assert (tmp_path / "README").stat().st_mtime == 1_700_000_000


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    # Files are created with their mode and fchmod'ed only when the umask takes bits.
    previous = os.umask(0o077)
    try:
        apply(tmp_path, [file("run.sh", "x", 0o755), file("lib/a.so", "x", 0o644)])
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "lib/a.so").stat().st_mode) == 0o644


def test_it_extracts_links_inside_the_target(tmp_path: Path) -> None:
    apply(
        tmp_path,
        [
            file("lib/libcublas.so.12.8", "real library"),
            symlink("lib/libcublas.so.12", "libcublas.so.12.8"),
            symlink("lib/libcublas.so", "libcublas.so.12"),
            symlink("current", "lib"),
            hardlink("lib/copy.so", "lib/libcublas.so.12.8"),
        ],
    )

    assert (tmp_path / "lib/libcublas.so").read_text() == "real library"
    assert os.readlink(tmp_path / "current") == "lib"
    assert (tmp_path / "lib/copy.so").stat().st_ino == (
        tmp_path / "lib/libcublas.so.12.8"
    ).stat().st_ino


def test_it_drops_setuid_setgid_sticky_and_group_write_bits(tmp_path: Path) -> None:
    apply(
        tmp_path,
        [
            file("suid", "x", 0o4755),
            file("sgid", "x", 0o2755),
            file("sticky", "x", 0o1777),
            file("shared", "x", 0o666),
        ],
    )

    modes = {
        name: stat.S_IMODE((tmp_path / name).stat().st_mode)
        for name in ("suid", "sgid", "sticky", "shared")
    }
    assert modes == {"suid": 0o755, "sgid": 0o755, "sticky": 0o755, "shared": 0o644}


def test_later_layers_overwrite_and_change_types(tmp_path: Path) -> None:
    apply(
        tmp_path,
        [
            file("config", "v1"),
            file("was-file", "file"),
            file("was-dir/child", "child"),
            file("real.txt", "real"),
            symlink("link", "real.txt"),
            file("shared", "old"),
            hardlink("shared-twin", "shared"),
        ],
    )
    apply(
        tmp_path,
        [
            file("config", "v2"),
            file("was-file/now-a-dir", "inside"),
            file("was-dir", "now a file"),
            file("link", "a regular file now"),
            file("shared", "new"),
        ],
    )

    assert (tmp_path / "config").read_text() == "v2"
    assert (tmp_path / "was-file/now-a-dir").read_text() == "inside"
    assert (tmp_path / "was-dir").read_text() == "now a file"
    assert not (tmp_path / "link").is_symlink()
    assert (
        tmp_path / "real.txt"
    ).read_text() == "real"  # not written through the old link
    assert (tmp_path / "shared").read_text() == "new"
    assert (tmp_path / "shared-twin").read_text() == "old"  # unlinked, not truncated


def test_it_writes_through_a_symlink_that_stays_inside(tmp_path: Path) -> None:
    apply(tmp_path, [directory("usr/lib"), symlink("lib", "usr/lib")])
    apply(tmp_path, [file("lib/libfoo.so", "foo")])

    assert (tmp_path / "usr/lib/libfoo.so").read_text() == "foo"
    assert (tmp_path / "lib").is_symlink()


# --- whiteouts -----------------------------------------------------------------------


def test_whiteouts_delete_lower_layer_files_and_opaque_dirs_empty_them(
    tmp_path: Path,
) -> None:
    apply(
        tmp_path,
        [
            file("run.sh", "v1", 0o755),
            file("lib/removed.so", "gone"),
            file("lib/libcublas.so.12", "old library"),
            file("lib/sub/deep.so", "gone too"),
            file("plugins/old-a", "a"),
            file("plugins/old-b/x", "b"),
        ],
    )
    apply(
        tmp_path,
        [
            whiteout("lib/removed.so"),
            whiteout("lib/sub"),
            file("lib/libcublas.so.12", "new library"),
            opaque("plugins"),
            file("plugins/new", "n"),
        ],
    )

    assert not (tmp_path / "lib/removed.so").exists()
    assert not (tmp_path / "lib/sub").exists()
    assert (tmp_path / "lib/libcublas.so.12").read_text() == "new library"
    assert sorted(p.name for p in (tmp_path / "plugins").iterdir()) == ["new"]
    assert (tmp_path / "run.sh").read_text() == "v1"
    assert not list(tmp_path.rglob(".wh.*"))


def test_whiteouts_spare_entries_of_their_own_layer_whatever_the_order(
    tmp_path: Path,
) -> None:
    apply(
        tmp_path,
        [file("d/f", "lower"), file("d/lower-only", "x"), file("e/sub/lower", "x")],
    )
    apply(
        tmp_path,
        [
            file("d/f", "upper"),
            whiteout(
                "d/f"
            ),  # after the file of the same layer: hides lower content only
            file("e/sub/upper", "u"),
            opaque("e"),
            opaque("d"),
        ],
    )

    assert (tmp_path / "d/f").read_text() == "upper"
    assert not (tmp_path / "d/lower-only").exists()
    assert (tmp_path / "e/sub/upper").read_text() == "u"
    assert not (tmp_path / "e/sub/lower").exists()


def test_whiteout_of_a_missing_path_is_harmless(tmp_path: Path) -> None:
    apply(
        tmp_path, [whiteout("nothing/here"), whiteout("absent"), opaque("missing-dir")]
    )

    assert list(tmp_path.iterdir()) == []


def test_an_opaque_marker_at_the_root_only_empties_the_target(sandbox: Sandbox) -> None:
    # Valid OCI (the layer replaces everything below it); it must stay confined.
    apply(sandbox.target, [file("old", "x"), file("dir/old", "y")])
    before = sandbox.snapshot()

    apply(sandbox.target, [opaque(""), file("new", "z")])

    assert sorted(p.name for p in sandbox.target.iterdir()) == ["new"]
    assert sandbox.snapshot() == before


def test_plain_tarballs_keep_wh_names_as_files(tmp_path: Path) -> None:
    archive = tmp_path / "backend.tar.gz"
    archive.write_bytes(
        gzip.compress(make_tar([file("run.sh", "x", 0o755), file(".wh.notes", "n")]))
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes").write_text("stays")

    assert extract_tarball(archive, tmp_path / "out") == 2

    assert (tmp_path / "out/.wh.notes").read_text() == "n"
    assert (tmp_path / "out/notes").read_text() == "stays"


@pytest.mark.parametrize(
    "compression, suffix", [("none", ".tar"), ("gzip", ".tar.gz"), ("zstd", ".tar.zst")]
)
def test_extract_tarball_reads_each_compression(
    tmp_path: Path, compression: str, suffix: str
) -> None:
    archive = tmp_path / f"backend{suffix}"
    archive.write_bytes(
        compress(make_tar([file("run.sh", "#!/bin/sh\n", 0o755)]), compression)
    )

    extract_tarball(archive, tmp_path / "out")

    assert os.access(tmp_path / "out/run.sh", os.X_OK)


# --- hostile archives: refused, and nothing outside the target changes ----------------


def _refused(sandbox: Sandbox, entries: Entries, fragment: str) -> None:
    before = sandbox.snapshot()
    with pytest.raises(UnsafeArchiveError) as caught:
        apply(sandbox.target, entries)
    assert fragment in str(caught.value)
    assert sandbox.snapshot() == before


def test_it_refuses_parent_traversal(sandbox: Sandbox) -> None:
    _refused(sandbox, [file("../escaped.txt", "x")], "'../escaped.txt'")
    _refused(
        sandbox, [file("a/../../outside/victim.txt", "x")], "a/../../outside/victim.txt"
    )


def test_it_refuses_absolute_paths(sandbox: Sandbox) -> None:
    absolute = str(sandbox.outside / "absolute.txt")
    _refused(sandbox, [file(absolute, "x")], absolute)
    assert not (sandbox.outside / "absolute.txt").exists()


def test_it_refuses_a_symlink_out_then_a_write_through_it(sandbox: Sandbox) -> None:
    _refused(
        sandbox,
        [symlink("lib", "../outside"), file("lib/victim.txt", "pwned")],
        "'lib'",
    )
    _refused(
        sandbox,
        [symlink("etc", str(sandbox.outside)), file("etc/passwd", "pwned")],
        "'etc'",
    )
    # a chain whose every hop looks local: a -> ".", b -> "a/.." (the target's parent)
    _refused(
        sandbox,
        [symlink("a", "."), symlink("b", "a/.."), file("b/outside/new", "x")],
        "'b'",
    )


def test_it_never_writes_through_a_symlink_already_in_the_target(
    sandbox: Sandbox,
) -> None:
    # As if a lower layer had been extracted by something less careful.
    (sandbox.target / "lib").symlink_to(sandbox.outside)
    (sandbox.target / "rel").symlink_to("../outside")

    _refused(sandbox, [file("lib/victim.txt", "pwned")], "lib/victim.txt")
    _refused(sandbox, [file("rel/new.txt", "pwned")], "rel/new.txt")
    _refused(sandbox, [directory("rel/dir/sub")], "rel/dir/sub")
    _refused(sandbox, [hardlink("stolen", "lib/victim.txt")], "stolen")


def test_it_refuses_hardlinks_out_of_the_target(sandbox: Sandbox) -> None:
    _refused(sandbox, [hardlink("h", "../outside/victim.txt")], "'h'")
    _refused(sandbox, [hardlink("h", str(sandbox.outside / "victim.txt"))], "'h'")


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_it_refuses_devices_and_fifos(sandbox: Sandbox, kind: bytes) -> None:
    _refused(sandbox, [special("dev/node", kind)], "'dev/node'")
    assert not (sandbox.target / "dev/node").exists()


def test_whiteouts_cannot_delete_outside(sandbox: Sandbox) -> None:
    (sandbox.target / "lnk").symlink_to("../outside")
    (sandbox.target / "abs").symlink_to(sandbox.outside)

    _refused(sandbox, [file("../.wh.victim.txt")], "../.wh.victim.txt")
    _refused(sandbox, [whiteout("lnk/victim.txt")], "lnk/.wh.victim.txt")
    _refused(sandbox, [whiteout("abs/victim.txt")], "abs/.wh.victim.txt")
    _refused(sandbox, [opaque("lnk/dir")], "lnk/dir/.wh..wh..opq")
    _refused(sandbox, [opaque("abs")], "abs/.wh..wh..opq")
    _refused(sandbox, [file(".wh..")], "'.wh..'")
    _refused(sandbox, [file("missing/.wh..")], "missing/.wh..")


def test_a_whiteout_removes_a_symlink_not_what_it_points_to(sandbox: Sandbox) -> None:
    (sandbox.target / "lnk").symlink_to(sandbox.outside / "dir")
    before = sandbox.snapshot()

    apply(sandbox.target, [whiteout("lnk")])

    assert not (sandbox.target / "lnk").exists()
    assert sandbox.snapshot() == before


def test_a_file_entry_replaces_a_symlink_instead_of_following_it(
    sandbox: Sandbox,
) -> None:
    (sandbox.target / "victim.txt").symlink_to(sandbox.outside / "victim.txt")
    before = sandbox.snapshot()

    apply(sandbox.target, [file("victim.txt", "replaced")])

    assert not (sandbox.target / "victim.txt").is_symlink()
    assert (sandbox.target / "victim.txt").read_text() == "replaced"
    assert sandbox.snapshot() == before


# --- malformed input and streaming -----------------------------------------------------


def test_corrupt_or_non_tar_data_is_an_archive_error(tmp_path: Path) -> None:
    good = make_layer([file("a", "x" * 10000)]).data
    with pytest.raises(ArchiveError):
        extract_layer(io.BytesIO(good[: len(good) // 2]), tmp_path)
    with pytest.raises(ArchiveError):
        extract_layer(io.BytesIO(b"this is not a tar archive at all" * 100), tmp_path)


def test_a_giant_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 1 << 30
    data = header.tobuf(format=tarfile.USTAR_FORMAT) + b"x" * 4096

    with pytest.raises(ArchiveError, match="too large"):
        extract_layer(io.BytesIO(data), tmp_path)


def test_an_empty_layer_is_fine(tmp_path: Path) -> None:
    assert extract_layer(io.BytesIO(b""), tmp_path) == 0
    assert extract_layer(io.BytesIO(gzip.compress(b"\0" * 1024)), tmp_path) == 0


def test_multi_member_gzip_and_trailing_padding(tmp_path: Path) -> None:
    tar = make_tar([file("a", "1" * 3000), file("b", "2" * 3000)])
    data = gzip.compress(tar[:2048]) + gzip.compress(tar[2048:]) + b"\0" * 512

    assert extract_layer(io.BytesIO(data), tmp_path) == 2
    assert (tmp_path / "b").read_text() == "2" * 3000


def test_an_iterable_source_is_read_to_its_end(tmp_path: Path) -> None:
    data = (
        make_layer([file("a", "x")]).data + b"\0" * 4096
    )  # padding after the gzip member
    consumed: list[int | str] = []

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 100):
            consumed.append(start)
            yield data[start : start + 100]
        consumed.append("end")

    extract_layer(chunks(), tmp_path)

    assert consumed[-1] == "end"


def test_memory_stays_flat_for_a_huge_highly_compressible_file(tmp_path: Path) -> None:
    size = 64 << 20
    layer = make_layer([file("zeros.bin", bytes(size))]).data  # about 64 KiB compressed
    tracemalloc.start()
    try:
        extract_layer(io.BytesIO(layer), tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert (tmp_path / "zeros.bin").stat().st_size == size
    assert peak < 8 << 20


# tarfile's USTAR_FORMAT, GNU_FORMAT and PAX_FORMAT.
TarFormat = Literal[0, 1, 2]


def _header(info: tarfile.TarInfo, fmt: TarFormat, **fields: bytes) -> bytes:
    """One 512-byte header, with raw ``fields`` (name -> bytes) patched in and the
    checksum recomputed as tar writers do."""
    offsets = {"mode": (100, 8), "uid": (108, 8), "size": (124, 12), "mtime": (136, 12)}
    buf = bytearray(info.tobuf(fmt, "utf-8", "surrogateescape")[: tarfile.BLOCKSIZE])
    for name, raw in fields.items():
        start, length = offsets[name]
        buf[start : start + length] = raw.ljust(length, b"\0")
    buf[148:156] = b" " * 8
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf)


def _plain(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, 4096, 0o644, 1_700_000_000
    info.uname, info.gname = "root", "root"
    if kind == tarfile.DIRTYPE:
        info.size = 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.size, info.linkname = 0, "target/file"
    return info


# What extraction reads of a header (ownership is never applied).
EXTRACTION_FIELDS = ("name", "mode", "size", "mtime", "type", "linkname")


@pytest.mark.parametrize(
    ("buf", "plain"),
    [
        (_header(_plain("lib/libx.so"), tarfile.USTAR_FORMAT), True),
        (_header(_plain("lib/libx.so"), tarfile.GNU_FORMAT), True),
        (_header(_plain("share/", tarfile.DIRTYPE), tarfile.USTAR_FORMAT), True),
        (_header(_plain("lib/link", tarfile.SYMTYPE), tarfile.GNU_FORMAT), True),
        (_header(_plain("lib/hard", tarfile.LNKTYPE), tarfile.USTAR_FORMAT), True),
        (_header(_plain("ünïcode/fïle"), tarfile.USTAR_FORMAT), True),
        # old writers: digits padded with spaces, a space before the NUL
        (_header(_plain("a"), tarfile.USTAR_FORMAT, mode=b"   644 \0"), True),
        (_header(_plain("a"), tarfile.USTAR_FORMAT, size=b"       10000"), True),
        # a blank number field, and base-256 numbers (GNU, for huge values)
        (_header(_plain("a"), tarfile.GNU_FORMAT, uid=b"       \0"), True),
        (
            _header(_plain("a"), tarfile.GNU_FORMAT, uid=b"\x80" + b"\0" * 5 + b"\1\0"),
            True,
        ),
        (
            _header(_plain("a"), tarfile.GNU_FORMAT, size=b"\x80" + b"\0" * 10 + b"\1"),
            False,
        ),
        # the ustar prefix field, used for long names
        (_header(_plain("p" * 120 + "/file"), tarfile.USTAR_FORMAT), False),
        (_header(_plain("fifo", tarfile.FIFOTYPE), tarfile.USTAR_FORMAT), False),
    ],
)
def test_the_fast_header_parser_agrees_with_tarfile(buf: bytes, plain: bool) -> None:
    from backends.core.extract import _plain_header

    fast = _plain_header(memoryview(buf))
    slow = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")

    if not plain:
        assert fast is None  # left to tarfile
        return
    assert fast is not None
    assert {f: getattr(fast, f) for f in EXTRACTION_FIELDS} == {
        f: getattr(slow, f) for f in EXTRACTION_FIELDS
    }


def test_a_header_with_a_bad_checksum_is_left_to_tarfile_which_refuses_it(
    tmp_path: Path,
) -> None:
    from backends.core.extract import _plain_header

    buf = bytearray(_header(_plain("a"), tarfile.USTAR_FORMAT))
    buf[0:1] = b"b"
    assert _plain_header(memoryview(bytes(buf))) is None
    layer = bytes(buf) + b"x" * 4096 + b"\0" * 1024
    with pytest.raises(ArchiveError):
        extract_layer(io.BytesIO(layer), tmp_path / "out")


# --- header kinds: plain headers parsed here, the rest by tarfile ---------------------

LONG = "site-packages/" + "very-long-package-name/" * 6 + "module.py"


def _mixed_tar(
    global_headers: dict[str, str] | None = None,
) -> tuple[bytes, dict[str, bytes]]:
    """Entries in every header kind, interleaved: plain ustar, ustar with a prefix
    field, pax (a long name, a non-ASCII name), GNU long names and long link names."""
    plan: list[tuple[TarFormat, str, bytes]] = [
        (tarfile.USTAR_FORMAT, "run.sh", b"#!/bin/sh\n"),
        (tarfile.PAX_FORMAT, LONG, b"pax long name"),
        (tarfile.USTAR_FORMAT, "lib/plain-after-pax.so", b"x" * 700),
        (tarfile.GNU_FORMAT, "gnu/" + "g" * 150, b"gnu long name"),
        (tarfile.USTAR_FORMAT, "p" * 90 + "/" + "q" * 60, b"ustar prefix"),
        (tarfile.PAX_FORMAT, "données/é.txt", b"non-ascii"),
        (tarfile.GNU_FORMAT, "gnu/short", b"gnu short"),
        (tarfile.USTAR_FORMAT, "lib/last.so", b"y" * 1025),
    ]
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer,
        mode="w",
        format=tarfile.PAX_FORMAT,
        pax_headers=global_headers,
    ) as tar:
        for fmt, name, data in plan:
            tar.format = fmt
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        tar.format = tarfile.GNU_FORMAT
        link = tarfile.TarInfo("gnu/link-with-a-long-target")
        link.type, link.linkname = tarfile.SYMTYPE, "../" + LONG
        tar.addfile(link)
    return buffer.getvalue(), {name: data for _, name, data in plan}


@pytest.mark.parametrize("global_headers", [None, {"comment": "commit 0123abc"}])
def test_it_extracts_every_header_kind_interleaved(
    tmp_path: Path, global_headers: dict[str, str] | None
) -> None:
    data, files = _mixed_tar(global_headers)

    count = extract_layer(io.BytesIO(gzip.compress(data)), tmp_path)

    assert count == len(files) + 1
    for name, content in files.items():
        assert (tmp_path / name).read_bytes() == content, name
        assert (tmp_path / name).stat().st_mtime == 1_700_000_000
    assert os.readlink(tmp_path / "gnu/link-with-a-long-target") == "../" + LONG


def test_a_global_pax_header_applies_to_the_entries_after_it(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer,
        mode="w",
        format=tarfile.PAX_FORMAT,
        pax_headers={"mtime": "1600000000"},
    ) as tar:
        info = tarfile.TarInfo("a.txt")
        info.size, info.mtime = 1, 1_700_000_000
        tar.addfile(info, io.BytesIO(b"a"))

    extract_layer(io.BytesIO(buffer.getvalue()), tmp_path)

    # tarfile's reading: the global header's mtime wins over the entry's own field
    with tarfile.open(fileobj=io.BytesIO(buffer.getvalue())) as tar:
        expected = tar.getmembers()[0].mtime
    assert (tmp_path / "a.txt").stat().st_mtime == expected == 1_600_000_000


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_it_extracts_sparse_files_made_by_gnu_tar(tmp_path: Path, fmt: str) -> None:
    source = tmp_path / "source"
    source.mkdir()
    with open(source / "sparse.bin", "wb") as out:
        out.truncate(1 << 20)
        out.seek(300_000)
        out.write(b"data in the middle")
    (source / "after.txt").write_text("after the sparse file")
    archive = tmp_path / "layer.tar"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-cf", archive, "-C", source, "."],
        check=True,
    )

    count = extract_layer(archive.open("rb"), tmp_path / "out")

    assert count == 3
    assert (tmp_path / "out/sparse.bin").read_bytes() == (
        source / "sparse.bin"
    ).read_bytes()
    assert (tmp_path / "out/after.txt").read_text() == "after the sparse file"


# --- bounds: bytes, free space, path depth and length --------------------------------


def _budget(target: Path, **limits: int) -> Budget:
    return Budget(Limits(**limits), target)


class _Counted:
    """Chunks of a stream, counting what the extractor took of them."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.taken += 1
            yield chunk


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_bomb_of_1_mb_stops_at_the_byte_limit(
    tmp_path: Path, compression: str
) -> None:
    source = _Counted(bomb(compression, 1024))  # 1 GiB of zeros in ~1 MB (gzip)

    with pytest.raises(LimitExceeded) as raised:
        extract_layer(source, tmp_path, budget=_budget(tmp_path, max_backend_bytes=MiB))

    assert "more than 1.0 MiB" in str(raised.value)
    assert "LOCALAI_ADMIN_MAX_BACKEND_BYTES" in str(raised.value)
    # Stopped at the cap, not at the end of the gigabyte: a few MiB were decompressed
    # (the producer queue holds 2 MiB ahead of the writer).
    assert source.taken < 16
    assert (tmp_path / "zeros.bin").stat().st_size <= MiB


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_an_endless_stream_stops_at_the_byte_limit(
    tmp_path: Path, compression: str
) -> None:
    source = _Counted(bomb(compression))

    with pytest.raises(LimitExceeded, match="LOCALAI_ADMIN_MAX_BACKEND_BYTES"):
        extract_layer(
            source, tmp_path, budget=_budget(tmp_path, max_backend_bytes=4 * MiB)
        )

    assert source.taken < 16


def test_the_byte_limit_counts_every_layer_of_one_install(tmp_path: Path) -> None:
    budget = _budget(tmp_path, max_backend_bytes=3 * MiB)
    layer = make_layer([file("a.bin", bytes(2 * MiB))]).data

    extract_layer(io.BytesIO(layer), tmp_path, budget=budget)
    with pytest.raises(LimitExceeded):
        extract_layer(io.BytesIO(layer), tmp_path, budget=budget)


def test_a_bounded_block_gives_its_budget_to_extractions_given_none(
    tmp_path: Path,
) -> None:
    # How the installer bounds oci.pull_image, which calls extract_layer itself.
    with (
        bounded(_budget(tmp_path, max_backend_bytes=MiB)),
        pytest.raises(LimitExceeded),
    ):
        extract_layer(bomb("gzip", 64), tmp_path)


def test_the_holes_of_a_sparse_entry_count_against_the_byte_limit(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    with open(source / "sparse.bin", "wb") as out:
        out.truncate(1 << 30)  # a gigabyte of holes, a few bytes in the archive
        out.write(b"data")
    archive = tmp_path / "layer.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-cf", archive, "-C", source, "."],
        check=True,
    )
    assert archive.stat().st_size < MiB
    target = tmp_path / "out"

    with pytest.raises(LimitExceeded, match="LOCALAI_ADMIN_MAX_BACKEND_BYTES"):
        extract_layer(
            archive.open("rb"), target, budget=_budget(target, max_backend_bytes=MiB)
        )


def test_extraction_stops_before_free_space_falls_under_the_reserve(
    tmp_path: Path,
) -> None:
    info = os.statvfs(tmp_path)
    free = info.f_bavail * info.f_frsize
    layer = make_layer([file("a.bin", bytes(MiB))]).data

    with pytest.raises(LimitExceeded) as raised:
        extract_layer(
            io.BytesIO(layer),
            tmp_path,
            budget=_budget(tmp_path, disk_reserve_bytes=free + (1 << 30)),
        )

    assert "must stay free" in str(raised.value)
    assert "LOCALAI_ADMIN_DISK_RESERVE_BYTES" in str(raised.value)
    assert not (tmp_path / "a.bin").exists()


def _deep(depth: int, leaf: str = "leaf.txt") -> str:
    return "/".join(["d"] * depth + [leaf])


def test_a_member_at_the_depth_limit_extracts(tmp_path: Path) -> None:
    apply(tmp_path, [file(_deep(63), "bottom")])  # 64 components

    assert (tmp_path / _deep(63)).read_text() == "bottom"


def test_a_member_deeper_than_the_limit_is_refused_by_name(sandbox: Sandbox) -> None:
    name = _deep(64, "too-deep.txt")

    with pytest.raises(UnsafeArchiveError) as raised:
        apply(sandbox.target, [file(name, "x")])

    assert "too-deep.txt" in str(raised.value)
    assert "deeper than 64 folders" in str(raised.value)


def test_a_1900_deep_tree_is_refused_by_name(sandbox: Sandbox) -> None:
    with pytest.raises(UnsafeArchiveError, match="deeper than 64 folders"):
        apply(sandbox.target, [file("run.sh", "#!/bin/sh\n"), file(_deep(1900), "x")])

    assert not (sandbox.target / "d").exists()  # refused before any folder was made


def test_a_member_path_longer_than_the_limit_is_refused_by_name(
    sandbox: Sandbox,
) -> None:
    name = "/".join(["p" * 200] * 16) + "/long.txt"  # 3,225 bytes

    with pytest.raises(UnsafeArchiveError) as raised:
        apply(sandbox.target, [file(name, "x")])

    assert "long.txt" in str(raised.value)
    assert "longer than 3072 bytes" in str(raised.value)


def test_a_name_longer_than_255_bytes_is_refused_by_name(sandbox: Sandbox) -> None:
    with pytest.raises(UnsafeArchiveError, match="a name longer than 255 bytes"):
        apply(sandbox.target, [file("dir/" + "n" * 256, "x")])


def test_a_symlink_cannot_carry_a_member_past_the_depth_limit(
    sandbox: Sandbox,
) -> None:
    # Each entry reads shallow; through the link the files would land 66 deep.
    entries = [
        directory(_deep(59, "")),
        symlink("s", _deep(59, "").rstrip("/")),
        file("s/a/b/c/d/e/f.txt", "x"),
    ]

    with pytest.raises(
        UnsafeArchiveError, match=r"'s/a/b/c/d/e/f.txt'.*deeper than 64"
    ):
        apply(sandbox.target, entries)


def _deep_lower_tree(target: Path, depth: int) -> None:
    budget = _budget(target, max_path_depth=depth + 10, max_path_bytes=4 * depth)
    layer = make_layer([file("keep.txt", "k"), file(_deep(depth), "x")]).data
    extract_layer(io.BytesIO(layer), target, budget=budget)


@pytest.mark.parametrize("marker", ["d/.wh..wh..opq", ".wh.d"])
def test_whiteouts_remove_a_lower_tree_1900_deep(tmp_path: Path, marker: str) -> None:
    # Trees that deep get in only when the limits are raised; they must still go.
    _deep_lower_tree(tmp_path, 1900)

    apply(tmp_path, [Entry(marker)])

    assert not (tmp_path / "d" / "d").exists()
    assert (tmp_path / "keep.txt").exists()
