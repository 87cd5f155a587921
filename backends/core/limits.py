"""How much one install may write, and the budget that holds it to that.

Every source is hostile (a gzip bomb, an endless stream, a tree thousands of folders
deep), so an install is bounded three ways, each with a setting the service layer passes
in through ``Limits``:

* bytes: at most ``max_backend_bytes`` (``LOCALAI_ADMIN_MAX_BACKEND_BYTES``, default
  200 GiB) per install and per attempt: the decompressed tar stream of every layer
  (headers and data, so a bomb stops at the cap however little it sends), the
  tarball download, the files of a folder copy;
* free space: writing stops while at least ``disk_reserve_bytes``
  (``LOCALAI_ADMIN_DISK_RESERVE_BYTES``, default 1 GiB) is still free on the backends
  disk, which also holds the database and the models. One rule (``has_room``) says
  whether bytes fit above the reserve: a fetch whose size is known is refused before
  it starts (``Budget.check_disk(size)``), and while writing ``statvfs`` is asked once
  at the start and then every ``DISK_CHECK_BYTES`` written, for that much room, so the
  reserve holds between two checks;
* paths: at most ``max_path_depth`` components (64) and ``max_path_bytes`` bytes (3072)
  below the backend folder, each component at most ``MAX_NAME_BYTES`` (255, the
  kernel's own NAME_MAX). Real images stay far under these (the deepest paths of the
  CUDA and ROCm backends have about 15 components and 200 bytes); 3072 keeps every
  accepted path, with the backends folder and the staging name in front of it, under
  the kernel's PATH_MAX of 4096, so an accepted tree can always be opened, listed and
  deleted by path.

No Django imports: the settings reach the core as a ``Limits`` value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from backends.core.installed import human_size

GiB = 1 << 30
DEFAULT_MAX_BACKEND_BYTES = 200 * GiB
DEFAULT_DISK_RESERVE_BYTES = 1 * GiB
DEFAULT_MAX_PATH_DEPTH = 64
DEFAULT_MAX_PATH_BYTES = 3072
MAX_NAME_BYTES = 255
# Free space is read again after this many bytes: one statvfs per 64 MiB costs nothing,
# and the reserve check keeps this much room so the disk cannot fill between two reads.
DISK_CHECK_BYTES = 64 << 20


def free_bytes(disk: Path) -> int:
    """The bytes an unprivileged writer may still write on ``disk``'s file system."""
    info = os.statvfs(disk)
    return info.f_bavail * info.f_frsize


def has_room(free: int, needed: int, reserve: int) -> bool:
    """The free-space rule: ``needed`` more bytes may be written when ``reserve`` still
    stays free after them. The installer refuses by it, the plans warn by it."""
    return free >= needed + reserve


class LimitExceeded(Exception):
    """An install would write more than its limits allow; the message names the
    limit and the setting that raises it."""


@dataclass(frozen=True)
class Limits:
    max_backend_bytes: int = DEFAULT_MAX_BACKEND_BYTES
    disk_reserve_bytes: int = DEFAULT_DISK_RESERVE_BYTES
    max_path_depth: int = DEFAULT_MAX_PATH_DEPTH
    max_path_bytes: int = DEFAULT_MAX_PATH_BYTES

    def path_problem(self, path: str) -> str:
        """Why the relative ``path`` ("a/b/c") is refused, or "" when it is fine.

        Called for every tar entry: the common case (a short ASCII path) costs a
        count and two length checks.
        """
        if path.count("/") >= self.max_path_depth:
            return f"deeper than {self.max_path_depth} folders"
        size = len(path) if path.isascii() else len(os.fsencode(path))
        if size > self.max_path_bytes:
            return f"path longer than {self.max_path_bytes} bytes"
        if size > MAX_NAME_BYTES:
            for part in path.split("/"):
                if len(os.fsencode(part)) > MAX_NAME_BYTES:
                    return f"a name longer than {MAX_NAME_BYTES} bytes"
        return ""


def shown(name: str, limit: int = 160) -> str:
    """``name`` for an error message: a 3,000-folder path would drown the message, so
    long ones keep their start and their end."""
    if len(name) <= limit:
        return repr(name)
    half = limit // 2
    return repr(f"{name[:half]}...{name[-half:]}") + f" ({len(name)} characters)"


class Budget:
    """The bytes one install attempt has written so far, against ``limits``.

    ``charge`` is called for every piece written (or decompressed); it raises
    LimitExceeded at the cap and when free space on ``disk`` gets near the reserve.
    """

    def __init__(self, limits: Limits, disk: Path, what: str = "the install") -> None:
        self.limits = limits
        self.disk = disk
        self.what = what
        self.written = 0
        # The first charge reads the free space: a full disk fails before any write.
        self._unchecked = DISK_CHECK_BYTES

    def charge(self, size: int) -> None:
        self.written += size
        if self.written > self.limits.max_backend_bytes:
            raise LimitExceeded(
                f"{self.what} writes more than {human_size(self.limits.max_backend_bytes)},"
                " the limit set by LOCALAI_ADMIN_MAX_BACKEND_BYTES"
            )
        self._unchecked += size
        if self._unchecked >= DISK_CHECK_BYTES:
            self._unchecked = 0
            self.check_disk()

    def check_disk(self, needed: int = DISK_CHECK_BYTES) -> None:
        """Raise LimitExceeded unless ``needed`` more bytes fit above the reserve: a
        fetch of known size before it starts, the next DISK_CHECK_BYTES while writing."""
        free = free_bytes(self.disk)
        reserve = self.limits.disk_reserve_bytes
        if not has_room(free, needed, reserve):
            raise LimitExceeded(
                f"not enough disk space in {self.disk}: {self.what} needs "
                f"{human_size(needed)} more, {human_size(free)} is free and "
                f"{human_size(reserve)} must stay free (the reserve set by "
                "LOCALAI_ADMIN_DISK_RESERVE_BYTES)"
            )
