"""Figure: peak memory of a worker syncing the largest gallery allowed (20,000 entries).

The gallery is the real index repeated with renamed entries up to the entry limit, each
entry written out in full (no YAML anchors: the most a hand-written gallery costs). A
child process sets Django up, syncs it once into SQLite and reports its peak RSS
(``resource.getrusage``), which includes Django and the interpreter. Target: < 300 MB.
"""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    GALLERY_FIXTURE,
    Figure,
    Unavailable,
    django_env,
    run_worker,
    setup_django,
    sqlite_url,
    unavailable,
    worker_main,
)

TARGET_MB = 300.0


def run(**_: Any) -> list[Figure]:
    figure = Figure("sync_memory_20k", "MB", f"< {TARGET_MB:g} MB", 1.0, goal="below")
    try:
        return [measure(figure)]
    except Unavailable as exc:
        return [unavailable(figure, str(exc))]


def measure(figure: Figure) -> Figure:
    if not GALLERY_FIXTURE.is_file():
        raise Unavailable(f"fixture missing: {GALLERY_FIXTURE.resolve()}")
    with tempfile.TemporaryDirectory(prefix="bench-sync-memory-") as tmp_name:
        tmp = Path(tmp_name)
        gallery = tmp / "gallery.yaml"
        # In a child of its own: a process starts with its parent's peak RSS (Linux
        # carries ru_maxrss over fork and exec), so this one must stay small.
        run_worker("bench.sync_memory", {"task": "write", "gallery": str(gallery)})
        env = django_env(tmp, sqlite_url(tmp))
        result = run_worker(
            "bench.sync_memory", {"task": "measure", "gallery": str(gallery)}, env
        )
    figure.value = result["peak_mb"]
    figure.baseline = TARGET_MB
    figure.detail = (
        f"{result['entries']} entries, {result['bytes'] // 1024} KiB; "
        f"{result['before_mb']:.0f} MB before the sync; {result['seconds']:.1f} s"
    )
    return figure


# --- workers -----------------------------------------------------------------------------


def _write(args: dict[str, Any]) -> None:
    """The real index repeated, each copy's names suffixed, up to the entry limit."""
    import yaml

    from backends.core.gallery import DEFAULT_LIMITS, GalleryLoader

    path, count = Path(args["gallery"]), DEFAULT_LIMITS.entries

    index = yaml.load(GALLERY_FIXTURE.read_bytes(), Loader=GalleryLoader)

    class InFull(yaml.CSafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    entries: list[dict[str, Any]] = []
    copy = 0
    while len(entries) < count:
        for entry in index[: count - len(entries)]:
            entries.append(entry | {"name": f"{entry['name']}-{copy}"})
        copy += 1
    path.write_text(yaml.dump(entries, Dumper=InFull, sort_keys=False))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    import time

    setup_django()
    from backends.models import Gallery

    path = Path(args["gallery"])
    gallery = Gallery.objects.create(name="bench", url=path.as_uri())
    before = _peak_mb()
    start = time.perf_counter()
    summary = gallery.sync(force=True)
    seconds = time.perf_counter() - start
    if gallery.last_error or not gallery.entry_count:
        raise RuntimeError(f"sync failed: {summary}")
    return {
        "peak_mb": _peak_mb(),
        "before_mb": before,
        "seconds": seconds,
        "entries": gallery.entry_count,
        "bytes": path.stat().st_size,
    }


if __name__ == "__main__":
    worker_main({"write": _write, "measure": _measure})
