"""Disk use for the pages: each installed backend's size and the backends disk's space.

The numbers become widths (percent) that templates give to SVG ``<rect width=...>`` and
``<meter>`` elements: the CSP forbids style attributes and inline scripts.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db.models import Sum

from backends.core import installed
from backends.models import InstalledBackend, Node
from backends.services import catalogue


@dataclass(frozen=True)
class Space:
    """A disk's size and free bytes, and how much of it the backends take."""

    total: int
    free: int
    backends: int

    @property
    def used(self) -> int:
        return self.total - self.free

    @property
    def other(self) -> int:
        """Used by anything but the backends (models, the OS...)."""
        return max(self.used - self.backends, 0)

    def percent(self, size: int) -> float:
        return round(100 * size / self.total, 2) if self.total else 0.0

    @property
    def backends_percent(self) -> float:
        return self.percent(min(self.backends, self.used))

    @property
    def other_percent(self) -> float:
        return self.percent(self.other)

    @property
    def used_percent(self) -> float:
        return self.percent(self.used)

    @property
    def is_low(self) -> bool:
        """Less free space than an install must leave (LOCALAI_ADMIN_DISK_RESERVE_BYTES)
        plus a tenth of the disk: installs will soon be refused."""
        return self.free < settings.LOCALAI_ADMIN_DISK_RESERVE_BYTES + self.total // 10


@dataclass(frozen=True)
class Bar:
    name: str
    size: int
    percent: float


def local_space(backends: int) -> Space | None:
    """This host's backends disk; None if the folder cannot be read."""
    path = Path(settings.LOCALAI_BACKENDS_PATH)
    try:
        usage = shutil.disk_usage(path if path.exists() else path.parent)
    except OSError:
        return None
    return Space(usage.total, usage.free, backends)


def node_space(
    node: Node, folders: Mapping[str, installed.DiskBackend] | None = None
) -> Space | None:
    """A node's backends disk: read here for this host (from ``folders`` when the
    caller has read them already); for an agent, what its last heartbeat reported."""
    if node.is_local:
        # The disk is the truth here, as on the Installed page: the table is
        # reconciled only after each job.
        if folders is None:
            folders = catalogue.installed_folders()
        return local_space(
            sum(installed.folder_size(f.folder) for f in folders.values() if f.folder)
        )
    backends = (
        InstalledBackend.objects.filter(node=node).aggregate(b=Sum("size_bytes"))["b"]
        or 0
    )
    total, free = node.disk_total_bytes, node.disk_free_bytes
    if total <= 0 or not 0 <= free <= total:
        return None
    return Space(total, free, backends)


def bars(sizes: Iterable[tuple[str, int]]) -> list[Bar]:
    """One bar per backend, largest first, scaled to the largest (a full-width bar)."""
    ordered = sorted(sizes, key=lambda item: (-item[1], item[0]))
    largest = max((size for _, size in ordered), default=0)
    return [
        Bar(name, size, round(100 * size / largest, 2) if largest else 0.0)
        for name, size in ordered
    ]
