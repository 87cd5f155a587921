"""Safe extraction of OCI image layers and plain tarballs.

Public API:

* ``extract_layer(source, target, *, whiteouts=True, budget=None) -> int`` applies one
  layer on top of
  what ``target`` already holds and returns the number of tar entries processed.
  ``source`` is the *compressed* layer, either a readable binary file or an iterable of
  byte chunks (the registry download). Compression (gzip, zstd, none) is detected from
  the first bytes, as containerd does, so a mislabelled layer still extracts; the
  caller only checks that the media type is a layer type at all.
* ``extract_tarball(path, target, *, budget=None, on_piece=None) -> int`` extracts a ``.tar``,
  ``.tar.gz`` or ``.tar.zst`` file (no whiteout handling: ``.wh.*`` names are ordinary
  files there).
* ``bounded(budget)``: the budget every extraction in the block charges when it is
  given none (how the installer bounds ``oci.pull_image``, which calls
  ``extract_layer`` itself).
* ``ArchiveError`` for unreadable archives, and its subclass ``UnsafeArchiveError`` for
  entries that are refused; both name the offending entry. Going over the budget
  (``limits.Budget``: bytes written, free space) raises ``limits.LimitExceeded``.

Everything is streamed: one tar entry at a time, file data copied in chunks of at most
1 MiB straight from the decompressor to the output file, so memory stays flat whatever
the layer size. When ``source`` is an iterable it is always read to its end (even after
the tar end marker) so that a digest-checking download gets to verify the whole blob.

Safety rules, on top of the standard library's ``tarfile.data_filter`` (PEP 706), which
supplies the policy for modes and file types: setuid/setgid/sticky and group/other
write bits dropped, device files and FIFOs refused, links must stay inside. (For
regular files and directories its mode rule is applied inline, see ``_filtered_mode``.)

* absolute names and names with a ``..`` component are refused outright;
* every path is resolved one component at a time from the target without trusting
  the kernel to follow symlinks: an in-target symlink is followed by hand, one leading
  outside (absolute, or ``..`` past the root) is refused, so nothing is ever created,
  written or deleted outside the target, whatever earlier entries or layers left there;
* the last component is never followed: an existing file, symlink or directory at that
  place is replaced (unlinked first, so hard-linked copies elsewhere are untouched);
* bounds (``limits.Limits``): every decompressed byte is charged to the budget (headers
  and skipped data too, so a bomb or an endless stream stops at the cap, and free
  space is watched while writing); an entry whose path below the target, as it is
  physically created, is deeper or longer than the limits is refused by name;
* OCI whiteouts: ``.wh.<name>`` deletes ``<name>`` and ``.wh..wh..opq`` empties its
  directory, for content of lower layers only (entries of the same layer survive,
  whatever their order in the tar), resolved by the same confined resolver.
"""

from __future__ import annotations

import os
import queue
import stat
import struct
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO

import zstandard

from backends.core.limits import MAX_NAME_BYTES, Budget, Limits, shown
from backends.core.trees import remove_tree

CHUNK_SIZE = 1 << 20
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_READ = 16 << 20
# The producer queues at most _QUEUE_PIECES pieces; decompressed ones are at most
# _PIECE_SIZE bytes, so the queue adds about 2 MiB to the memory of a layer.
_QUEUE_PIECES = 8
_PIECE_SIZE = 256 << 10
# While the producer has nothing (a stalled download), the consumer still calls
# ``on_piece`` this often: the cancel check must not wait for the network.
_WAIT_SECONDS = 0.25
# Files are always created anew, never through a symlink.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Linux gives up after 40 symlink hops (ELOOP); a chain longer than that is hostile.
_MAX_SYMLINK_HOPS = 40


class ArchiveError(Exception):
    """The archive cannot be read (corrupt, truncated, not a tar)."""


class UnsafeArchiveError(ArchiveError):
    """An entry would escape the target or is of a forbidden kind."""


# The budget of the install under way in this thread (see ``bounded``).
_current_budget: ContextVar[Budget | None] = ContextVar("budget", default=None)


@contextmanager
def bounded(budget: Budget) -> Iterator[None]:
    """Charge every extraction in the block that is given no budget to ``budget``.

    For callers that reach ``extract_layer`` through code that does not pass a budget
    on (``oci.pull_image``); extraction runs in the calling thread, so a context
    variable reaches it.
    """
    token = _current_budget.set(budget)
    try:
        yield
    finally:
        _current_budget.reset(token)


def extract_layer(
    source: BinaryIO | Iterable[bytes],
    target: Path,
    *,
    whiteouts: bool = True,
    on_piece: Callable[[], None] | None = None,
    budget: Budget | None = None,
) -> int:
    """Apply one (compressed) layer on top of ``target``; return the number of entries.

    Reading ``source`` and decompressing happen in a producer thread (see
    ``_Producer``), so ``source`` must not need the calling thread. ``on_piece`` is
    called in the calling thread before each decompressed piece is written, every
    quarter second while it waits for the producer, and once at the end: the place
    for progress reports and cancel checks (an exception it raises ends the
    extraction; a producer blocked in a read must be woken by the caller, as
    ``transfer.Watch.cancel`` does).

    Every decompressed byte is charged to ``budget``, else to the one of an enclosing
    ``bounded`` block, else to a budget of the default limits for this layer alone.
    """
    target = Path(target)
    budget = budget or _current_budget.get() or Budget(Limits(), target)
    writer = _LayerWriter(target, whiteouts=whiteouts, budget=budget)
    with _Producer(_raw_chunks(source)) as producer:
        count = writer.apply(_TarStream(producer.pieces(on_piece), budget.charge))
        # The producer reads the blob to its end (the tar end marker comes before the
        # compression trailer and possible padding) so a verifying download sees every
        # byte; wait for that, and for its error if any.
        producer.finish(on_piece)
    return count


def extract_tarball(
    path: Path,
    target: Path,
    *,
    budget: Budget | None = None,
    on_piece: Callable[[], None] | None = None,
) -> int:
    """Extract a plain, gzip or zstd tarball into ``target``."""
    with open(path, "rb") as file:
        return extract_layer(
            file, target, whiteouts=False, budget=budget, on_piece=on_piece
        )


def _raw_chunks(source: BinaryIO | Iterable[bytes]) -> Iterator[bytes]:
    if hasattr(source, "read"):
        return iter(lambda: source.read(CHUNK_SIZE), b"")
    return iter(source)


# --- producer thread -----------------------------------------------------------------

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Producer:
    """Reads, decompresses and queues the tar bytes in a thread of its own.

    Socket reads, hashing and inflating release the GIL, so they overlap with header
    parsing and file writes in the consumer. The queue is bounded (at most
    ``_QUEUE_PIECES`` pieces of <= _PIECE_SIZE bytes). The producer's exception is
    forwarded to the consumer; when the consumer fails first it sets ``_stop``, which
    the producer checks between pieces, and drains the queue until the thread ends,
    so the raw iterator is never used by two threads at once.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_PIECES)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._run, name="layer-producer", daemon=True
        )

    def __enter__(self) -> _Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        while self._thread.is_alive():
            self._drain()
            self._thread.join(0.05)
        self._drain()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def _run(self) -> None:
        stop = self._stop
        put = self._queue.put
        try:
            try:
                for piece in _decompressed(self._chunks):
                    if stop.is_set():
                        return
                    put(piece)
            except ArchiveError as exc:
                # A corrupt download often breaks the decompressor before the digest
                # can be checked: read the rest, so a mismatch is reported as what it is.
                for _ in self._chunks:
                    if stop.is_set():
                        break
                raise exc
            for _ in self._chunks:
                if stop.is_set():
                    return
            put(_END)
        except BaseException as exc:
            put(_Failure(exc))

    def _get(self, on_piece: Callable[[], None] | None) -> object:
        while True:
            try:
                item = self._queue.get(timeout=_WAIT_SECONDS)
                break
            except queue.Empty:
                if on_piece is not None:
                    on_piece()
        if on_piece is not None:
            on_piece()
        if item is _END:
            self._done = True
        elif isinstance(item, _Failure):
            self._done = True
            raise item.exc
        return item

    def pieces(self, on_piece: Callable[[], None] | None) -> Iterator[bytes]:
        while not self._done:
            item = self._get(on_piece)
            if item is not _END:
                yield item  # type: ignore[misc]

    def finish(self, on_piece: Callable[[], None] | None) -> None:
        while not self._done:
            self._get(on_piece)


# --- decompression -------------------------------------------------------------------


def _decompressed(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Yield the uncompressed tar bytes, in pieces of at most _PIECE_SIZE (or the size
    of the source's chunks for an uncompressed tar)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= len(_ZSTD_MAGIC):
            break
    if not head:
        return
    if head.startswith(_GZIP_MAGIC):
        yield from _gunzip(head, chunks)
    elif head.startswith(_ZSTD_MAGIC):
        yield from _unzstd(head, chunks)
    else:
        yield head
        yield from chunks


def _gunzip(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    # max_length bounds every output piece: a highly compressible layer (zeros compress
    # about 1000:1) must not inflate one network chunk into a gigabyte of memory.
    decompressor: zlib._Decompress | None = None
    data = head
    try:
        while True:
            while data:
                if decompressor is None:
                    if len(data) < len(_GZIP_MAGIC):
                        break  # a split header: wait for the next chunk
                    if not data.startswith(_GZIP_MAGIC):
                        return  # padding after the last member, as gzip -d tolerates
                    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
                output = decompressor.decompress(data, _PIECE_SIZE)
                if output:
                    yield output
                if decompressor.eof:
                    data, decompressor = decompressor.unused_data, None
                else:
                    data = decompressor.unconsumed_tail
            more = next(chunks, None)
            if more is None:
                break
            data += more
    except zlib.error as exc:
        raise ArchiveError(f"corrupt gzip data: {exc}") from exc
    if decompressor is not None:
        raise ArchiveError("gzip data ends before its end marker")


class _ChunkReader:
    """The minimal ``read(n)`` file interface the zstandard reader wants."""

    def __init__(self, head: bytes, chunks: Iterator[bytes]) -> None:
        self._pending = head
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data


def _unzstd(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(
        # zstandard's stub asks for IO[bytes]; the reader only ever calls read(n).
        _ChunkReader(head, chunks),  # type: ignore[arg-type]
        read_size=CHUNK_SIZE,
        read_across_frames=True,
    )
    try:
        while output := reader.read(_PIECE_SIZE):
            yield output
    except zstandard.ZstdError as exc:
        raise ArchiveError(f"corrupt zstd data: {exc}") from exc


# --- tar stream ----------------------------------------------------------------------


class _TarStream:
    """A forward-only file over the decompressed chunks.

    tarfile reads headers through ``read``/``seek``/``tell``; member data is copied with
    ``copy_to`` straight from the chunk buffers to the output file. tarfile's own stream
    mode (``r|``) would re-copy its whole read buffer on every small read.
    """

    def __init__(self, chunks: Iterator[bytes], charge: Callable[[int], None]) -> None:
        self._chunks = chunks
        self._charge = charge
        self._buffer = memoryview(b"")
        self._position = 0

    def _fill(self) -> bool:
        if self._buffer:
            return True
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        # Charged as it is taken, written or skipped: what a bomb costs is the bytes
        # it decompresses to, whatever the entries do with them.
        self._charge(len(chunk))
        self._buffer = memoryview(chunk)
        return True

    def at_eof(self) -> bool:
        return not self._fill()

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            raise ValueError("the tar stream is only read in bounded pieces")
        if size > _MAX_READ:
            # Only headers (pax, GNU long names) are read this way; file data goes
            # through copy_to. A gigabyte "header" is an attack on memory.
            raise ArchiveError(f"tar header of {size} bytes is too large")
        parts = []
        while size > 0 and self._fill():
            piece = self._buffer[:size]
            self._buffer = self._buffer[len(piece) :]
            self._position += len(piece)
            size -= len(piece)
            parts.append(piece)
        return b"".join(parts)

    def peek(self, size: int) -> memoryview:
        """The next ``size`` bytes (fewer at the end) without consuming them."""
        if len(self._buffer) < size:
            data = self.read(size)
            self._buffer = memoryview(data + bytes(self._buffer))
            self._position -= len(data)
        return self._buffer[:size]

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence != os.SEEK_SET:
            raise OSError("the tar stream cannot seek from its end")
        if offset < self._position:
            raise OSError("the tar stream cannot seek backwards")
        skip = offset - self._position
        while skip > 0:
            if not self._fill():
                raise ArchiveError("unexpected end of archive data")
            step = min(skip, len(self._buffer))
            self._buffer = self._buffer[step:]
            self._position += step
            skip -= step
        return self._position

    # tarfile's file protocol also names these; reading is all a layer ever needs.
    def write(self, data: bytes) -> int:
        raise OSError("the tar stream is read-only")

    def close(self) -> None:
        pass

    def copy_to(self, fd: int, size: int) -> None:
        while size > 0:
            if not self._fill():
                raise ArchiveError("unexpected end of archive data")
            piece = self._buffer[:size]
            self._buffer = self._buffer[len(piece) :]
            self._position += len(piece)
            size -= len(piece)
            while piece:
                piece = piece[os.write(fd, piece) :]


# --- tar headers ---------------------------------------------------------------------

# The fields of a ustar/GNU header that extraction uses: name, mode, size, mtime,
# checksum, type, link name, and the first byte of the ustar prefix (uid, gid, user
# and group names and device numbers are skipped: ownership is never applied).
_HEADER = struct.Struct("100s8s16x12s12s8sc100s88xc166x")
# What tarfile.open(mode="r:") decodes names with.
_ENCODING, _ERRORS = tarfile.ENCODING, "surrogateescape"
_FAST_TYPES = frozenset(
    (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
)


def _octal(field: bytes) -> int:
    # tarfile's nti() for the octal case (int() takes bytes and ignores the spaces
    # around the digits); base-256 and blank fields raise ValueError here and so go to
    # tarfile's own parser.
    return int(field.partition(b"\0")[0] or b"0", 8)


def _header_checksum(block: memoryview) -> int:
    """tar's unsigned header checksum: the sum of the header's bytes with the checksum
    field (148-156) counted as eight spaces.

    Summed in C: the low half of an Adler-32 is one plus the byte sum modulo 65521,
    exact for pieces of up to 256 bytes, so the header is summed in three such pieces.
    """
    return (
        (zlib.adler32(block[:148]) & 0xFFFF)
        + (zlib.adler32(block[156:356]) & 0xFFFF)
        + (zlib.adler32(block[356:]) & 0xFFFF)
        + 8 * 32
        - 3
    )


def _plain_header(block: memoryview) -> tarfile.TarInfo | None:
    """The entry of a plain header, or None when tarfile has to parse it.

    Only a plain ustar/GNU header of a regular file, directory or link, with no prefix
    field, octal numbers and an unsigned checksum is parsed here, into the TarInfo
    tarfile would give for it (ownership fields left at their defaults); anything
    else (pax, GNU long names, sparse, base-256, signed checksums, every error) is
    left to tarfile.
    """
    if len(block) != tarfile.BLOCKSIZE:
        return None
    name, mode, size, mtime, chksum, kind, linkname, prefix = _HEADER.unpack(block)
    if kind not in _FAST_TYPES or prefix != b"\0":
        return None
    try:
        if _octal(chksum) != _header_checksum(block):
            return None
        member = tarfile.TarInfo(name.partition(b"\0")[0].decode(_ENCODING, _ERRORS))
        member.mode = _octal(mode)
        member.size = _octal(size)
        member.mtime = _octal(mtime)
        member.type = kind
        if linkname[0]:
            member.linkname = linkname.partition(b"\0")[0].decode(_ENCODING, _ERRORS)
    except (ValueError, UnicodeDecodeError):
        return None
    if kind == tarfile.DIRTYPE:
        member.name = member.name.rstrip("/")
    return member


def _padded(size: int) -> int:
    """``size`` rounded up to whole tar blocks: where the next header starts."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


# --- writing entries -----------------------------------------------------------------


def _split_name(name: str) -> list[str]:
    if name.startswith("/"):
        raise UnsafeArchiveError(f"refusing {name!r}: absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"refusing {name!r}: path contains '..'")
    return parts


def _filtered_mode(member: tarfile.TarInfo, root: str) -> int:
    """The mode ``tarfile.data_filter`` gives the entry, or its refusal.

    Regular files and directories (nearly every entry) take data_filter's mode rule
    inlined: its two realpath() calls cost more than everything else done for a small
    file, and _resolve_dir confines their paths more strictly anyway. Links and every
    other type go through data_filter itself (link targets, special files).
    """
    if member.isreg():
        mode = member.mode & 0o755  # no setuid/setgid/sticky, no group/other write
        if not mode & 0o100:
            mode &= ~0o111
        return mode | 0o600
    if member.isdir():
        return 0o755  # data_filter ignores directory modes; a 0o555 one would block us
    try:
        filtered = tarfile.data_filter(member, root)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"refusing {member.name!r}: {exc}") from exc
    return filtered.mode if filtered.mode is not None else 0o644


def _process_umask() -> int | None:
    """The umask, read without setting it (os.umask would race with other threads);
    None where /proc does not say."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class _LayerWriter:
    """Writes the entries of one tar stream under ``target``.

    Paths are handled as strings relative to the target ("physical": every component
    a real directory, no symlink), which is also the key of the two bookkeeping sets.
    """

    def __init__(self, target: Path, *, whiteouts: bool, budget: Budget) -> None:
        target.mkdir(parents=True, exist_ok=True)
        self._root = os.path.realpath(target)
        self._whiteouts = whiteouts
        self._budget = budget
        self._limits = budget.limits
        # Directories known to be real (not symlinks) during this layer: saves an
        # lstat per path component on every entry.
        self._dirs: set[str] = {""}
        # What this layer wrote, so its own whiteouts only hit lower layers.
        self._written: set[str] = {""}
        # Files are created with their final mode; fchmod only when the umask interferes.
        self._umask = _process_umask()

    def _abs(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def apply(self, stream: _TarStream) -> int:
        """Apply every entry of the stream; return how many there were.

        Plain headers (nearly every entry of a real layer) are parsed here, one
        ``struct`` call each; an entry tarfile must handle (pax, GNU long names,
        sparse files, anything unusual, the end marker) is parsed by a TarFile opened
        at that header, after which plain parsing resumes. Global pax headers apply to
        every later entry, so from one on the TarFile parses the rest of the layer.
        """
        if stream.at_eof():
            return 0
        count = 0
        tar: tarfile.TarFile | None = None  # parses everything, once it must
        try:
            while True:
                if tar is not None:
                    member, parser = tar.next(), tar
                    # TarFile keeps every member it has seen; we stream, so forget them.
                    # (typeshed leaves out TarFile's ``members`` and ``firstmember``.)
                    tar.members.clear()  # type: ignore[attr-defined]
                else:
                    member, parser = self._plain_member(stream), None
                    if member is None:
                        # Opening parses the entry at the stream's position.
                        parser = tarfile.open(  # noqa: SIM115 (nothing to close)
                            fileobj=stream, mode="r:"
                        )
                        first = parser.firstmember  # type: ignore[attr-defined]
                        member, parser.firstmember = first, None  # type: ignore[attr-defined]
                        if parser.pax_headers:
                            tar = parser
                        next_header = parser.offset
                    else:
                        next_header = member.offset_data + _padded(member.size)
                if member is None:
                    break
                self._apply_member(parser, stream, member)
                count += 1
                if tar is None:
                    stream.seek(next_header)
        except tarfile.TarError as exc:
            raise ArchiveError(f"unreadable tar data: {exc}") from exc
        return count

    def _plain_member(self, stream: _TarStream) -> tarfile.TarInfo | None:
        """The entry at the stream's position if its header is plain, else None (and
        nothing consumed)."""
        offset = stream.tell()
        member = _plain_header(stream.peek(tarfile.BLOCKSIZE))
        if member is not None:
            stream.seek(offset + tarfile.BLOCKSIZE)
            member.offset, member.offset_data = offset, offset + tarfile.BLOCKSIZE
        return member

    def _apply_member(
        self,
        tar: tarfile.TarFile | None,
        stream: _TarStream,
        member: tarfile.TarInfo,
    ) -> None:
        name = member.name
        parts = _split_name(name)
        if not parts:
            if member.isdir():
                return  # "./": the target itself
            raise UnsafeArchiveError(
                f"refusing {name!r}: not a directory but names the target"
            )
        if len(parts) > self._limits.max_path_depth or len(name) > MAX_NAME_BYTES:
            # Refused before any folder on its way is made. Shorter, shallower names
            # (nearly all) skip the join; the physical path is checked again anyway.
            self._check_path("/".join(parts), name)
        leaf = parts[-1]
        if self._whiteouts and leaf.startswith(WHITEOUT_PREFIX):
            self._apply_whiteout(parts, name)
            return
        mode = _filtered_mode(member, self._root)
        parent = self._resolve_dir(parts[:-1], name, create=True)
        assert parent is not None  # create=True always yields a directory
        rel = _join(parent, leaf)
        self._check_path(rel, name)
        path = self._abs(rel)
        if member.isreg():  # first: nearly every entry is a regular file
            self._write_file(tar, stream, member, mode, rel, path)
        elif member.isdir():
            self._make_dir(rel, path)
        elif member.issym():
            self._check_link_target(parent, member.linkname, name)
            self._create(rel, path, lambda: os.symlink(member.linkname, path))
        elif member.islnk():
            source = self._hardlink_source(member.linkname, name)
            if source != path:
                self._create(
                    rel, path, lambda: os.link(source, path, follow_symlinks=False)
                )
        else:  # data_filter refuses these already; keep the guarantee local too
            raise UnsafeArchiveError(f"refusing {name!r}: unsupported entry type")
        self._mark_written(rel)

    # -- path resolution --

    def _check_path(self, rel: str, entry: str) -> None:
        # The physical path is what the limits are about: through in-target symlinks a
        # short name can land deeper than it reads.
        if problem := self._limits.path_problem(rel):
            raise UnsafeArchiveError(f"refusing {shown(entry)}: {problem}")

    def _resolve_dir(self, parts: list[str], entry: str, *, create: bool) -> str | None:
        """Physical relative path of the directory ``parts``, following in-target
        symlinks by hand. Missing directories are created, or None is returned."""
        joined = "/".join(parts)
        if joined in self._dirs:
            return joined
        resolved: list[str] = []
        pending = parts[::-1]
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    raise UnsafeArchiveError(
                        f"refusing {entry!r}: a symlink on its path leads outside the target"
                    )
                resolved.pop()
                continue
            rel = "/".join([*resolved, part])
            if rel not in self._dirs:
                path = self._abs(rel)
                try:
                    mode = os.lstat(path).st_mode
                except FileNotFoundError:
                    if not create:
                        return None
                    self._check_path(rel, entry)
                    os.mkdir(path, 0o755)
                    mode = stat.S_IFDIR
                if stat.S_ISLNK(mode):
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        raise UnsafeArchiveError(
                            f"refusing {entry!r}: too many levels of symlinks"
                        )
                    link = os.readlink(path)
                    if link.startswith("/"):
                        raise UnsafeArchiveError(
                            f"refusing {entry!r}: goes through symlink {rel!r} -> {link!r}, outside the target"
                        )
                    pending.extend(link.split("/")[::-1])
                    continue
                if not stat.S_ISDIR(mode):
                    if not create:
                        return None
                    # A later layer may turn a file into a directory.
                    self._check_path(rel, entry)
                    os.unlink(path)
                    os.mkdir(path, 0o755)
                self._dirs.add(rel)
            resolved.append(part)
        return "/".join(resolved)

    def _check_link_target(self, parent: str, linkname: str, entry: str) -> None:
        # Lexical check from the physical parent, independent of what data_filter's
        # realpath saw; writes through the link are confined by _resolve_dir anyway.
        if linkname.startswith("/"):
            raise UnsafeArchiveError(
                f"refusing {entry!r}: absolute symlink target {linkname!r}"
            )
        depth = len(parent.split("/")) if parent else 0
        for part in linkname.split("/"):
            if part == "..":
                depth -= 1
                if depth < 0:
                    raise UnsafeArchiveError(
                        f"refusing {entry!r}: symlink target {linkname!r} is outside the target"
                    )
            elif part not in ("", "."):
                depth += 1

    def _hardlink_source(self, linkname: str, entry: str) -> str:
        parts = _split_name(linkname)
        if not parts:
            raise UnsafeArchiveError(
                f"refusing {entry!r}: hard link to the target itself"
            )
        parent = self._resolve_dir(parts[:-1], entry, create=False)
        source = None if parent is None else self._abs(_join(parent, parts[-1]))
        try:
            is_file = source is not None and not stat.S_ISDIR(os.lstat(source).st_mode)
        except FileNotFoundError:
            is_file = False
        if source is None or not is_file:
            raise ArchiveError(
                f"{entry!r}: hard link target {linkname!r} is not a file extracted before it"
            )
        return source

    # -- creating entries --

    def _remove(self, rel: str, path: str) -> None:
        """Remove whatever is at ``path`` without following a symlink there."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            remove_tree(path)  # follows no symlink, any depth
            prefix = rel + "/"
            self._dirs = {
                d for d in self._dirs if d != rel and not d.startswith(prefix)
            }
        else:
            os.unlink(path)

    def _create(self, rel: str, path: str, make: Callable[[], None]) -> None:
        try:
            make()
        except FileExistsError:
            self._remove(rel, path)
            make()

    def _make_dir(self, rel: str, path: str) -> None:
        if rel in self._dirs:
            return
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)
                os.mkdir(path, 0o755)
        self._dirs.add(rel)

    def _write_file(
        self,
        tar: tarfile.TarFile | None,
        stream: _TarStream,
        member: tarfile.TarInfo,
        mode: int,
        rel: str,
        path: str,
    ) -> None:
        try:
            fd = os.open(path, _NEW_FILE, mode)
        except FileExistsError:
            # Unlink rather than truncate: the old file may be hard-linked elsewhere.
            self._remove(rel, path)
            fd = os.open(path, _NEW_FILE, mode)
        try:
            if member.sparse is not None:
                assert tar is not None  # only tarfile's parser yields sparse files
                source = tar.extractfile(member)
                assert source is not None
                # The holes come out of tarfile as zeros and are written: charge them
                # too, or a small sparse entry could declare a terabyte.
                while data := source.read(CHUNK_SIZE):
                    self._budget.charge(len(data))
                    while data:
                        data = data[os.write(fd, data) :]
            else:
                if tar is not None:  # parsed by tarfile: be sure of where the data is
                    stream.seek(member.offset_data)
                stream.copy_to(fd, member.size)
            if self._umask is None or mode & self._umask:
                os.fchmod(fd, mode)  # the umask took bits that open() was given
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def _mark_written(self, rel: str) -> None:
        while rel not in self._written:
            self._written.add(rel)
            rel = rel.rpartition("/")[0]

    # -- whiteouts --

    def _apply_whiteout(self, parts: list[str], entry: str) -> None:
        leaf = parts[-1]
        if leaf != OPAQUE_WHITEOUT and leaf.startswith(WHITEOUT_PREFIX * 2):
            return  # other AUFS bookkeeping files (.wh..wh.plnk and the like)
        victim = None if leaf == OPAQUE_WHITEOUT else leaf[len(WHITEOUT_PREFIX) :]
        if victim in ("", ".", ".."):
            raise UnsafeArchiveError(f"refusing {entry!r}: whiteout of {victim!r}")
        parent = self._resolve_dir(parts[:-1], entry, create=False)
        if parent is None:
            return  # nothing below to hide
        if victim is None:
            self._clear_lower(parent)
        else:
            self._remove_lower(_join(parent, victim))

    def _remove_lower(self, rel: str) -> None:
        path = self._abs(rel)
        if rel not in self._written:
            self._remove(rel, path)
            return
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            return
        if is_dir:
            self._clear_lower(rel)

    def _clear_lower(self, rel: str) -> None:
        # A stack, not recursion: the tree below may be as deep as the limits allow,
        # or deeper when they were raised.
        folders = [rel]
        while folders:
            folder = folders.pop()
            with os.scandir(self._abs(folder)) as entries:
                listing = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
            for name, is_dir in listing:
                child = _join(folder, name)
                if child not in self._written:
                    self._remove(child, self._abs(child))
                elif is_dir:
                    folders.append(child)
