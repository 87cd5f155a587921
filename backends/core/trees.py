"""Removing folder trees of any depth.

``shutil.rmtree`` recurses once per folder level on Python 3.12 (``_rmtree_safe_fd``),
so a tree about 1,000 folders deep raises RecursionError, which ``ignore_errors`` does
not catch: a backend that deep could never be deleted and its staging folder stayed
forever. ``remove_tree`` walks with an explicit stack instead and works through
directory descriptors, so neither Python's recursion limit nor the kernel's PATH_MAX
bounds the depth it can remove, and it holds two descriptors at most (not one per
level, which the open-file limit would stop).

No Django imports.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path | str) -> None:
    """Remove ``path`` and everything below it; a symlink is removed, never followed.

    A missing ``path`` is fine. The walk goes down by name from an open folder and
    back up through ``..``; the folder reached that way is checked to be the one it
    came from (same device and inode), so a tree changed under it fails rather than
    removing anything outside.
    """
    top = os.fspath(path)
    try:
        mode = os.lstat(top).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        os.unlink(top)
        return
    fd = os.open(top, _DIR_FLAGS)
    try:
        # One entry per level above the open folder: its name in its parent, the
        # parent's subfolders still to remove, and the parent's identity.
        stack: list[tuple[str, list[str], tuple[int, int]]] = []
        pending = _unlink_files(fd)
        while True:
            if pending:
                name = pending.pop()
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except NotADirectoryError:  # replaced by a file or a symlink meanwhile
                    os.unlink(name, dir_fd=fd)
                    continue
                stack.append((name, pending, _identity(fd)))
                os.close(fd)
                fd = child
                pending = _unlink_files(fd)
            elif stack:
                name, pending, expected = stack.pop()
                parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = parent
                if _identity(fd) != expected:
                    raise OSError(f"{top} changed while it was being removed")
                os.rmdir(name, dir_fd=fd)
            else:
                break
    finally:
        os.close(fd)
    os.rmdir(top)


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _unlink_files(fd: int) -> list[str]:
    """Unlink everything in the open folder but its subfolders; return their names."""
    # Listed before unlinking: readdir may skip or repeat entries removed meanwhile.
    # (scandir on a descriptor rewinds it when done, so it can be listed again.)
    with os.scandir(fd) as entries:
        listing = [
            (entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries
        ]
    folders = []
    for name, is_dir in listing:
        if is_dir:
            folders.append(name)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
    return folders
