"""Figure: gallery sync of the real index, against a bare libyaml parse of the same file.

Baseline: ``yaml.load(<file bytes>, Loader=yaml.CSafeLoader)`` (read + parse).
Ours: ``Gallery.sync(force=True)`` of a gallery whose URL is the ``file://`` URI of a copy
of the fixture: read, parse, validate, delete the old entries, bulk insert, in one
transaction. Both run alternately in the same child process (one per database), after
one warm-up each, nine timed runs each by default (the warm-up sync is the first one, into an empty table; the timed ones
replace 1,000+ rows, which is what the hourly sync does). Target: <= 3x the baseline.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    GALLERY_FIXTURE,
    Figure,
    Unavailable,
    django_env,
    median,
    postgres_database,
    run_worker,
    setup_django,
    sqlite_url,
    unavailable,
    worker_main,
)

TARGET = 3.0


def run(runs: int, **_: Any) -> list[Figure]:
    figures = []
    for database in ("sqlite", "postgresql"):
        figure = Figure(f"sync_{database}", "ms", f"ratio <= {TARGET:g}", TARGET)
        try:
            # A sync takes a fraction of a second: take more runs than the minimum.
            figures.append(measure(figure, database, max(runs, 9)))
        except Unavailable as exc:
            figures.append(unavailable(figure, str(exc)))
    return figures


def measure(figure: Figure, database: str, runs: int) -> Figure:
    if not GALLERY_FIXTURE.is_file():
        raise Unavailable(f"fixture missing: {GALLERY_FIXTURE.resolve()}")
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp_name:
        tmp = Path(tmp_name)
        if database == "sqlite":
            result = _child(tmp, sqlite_url(tmp), runs)
        else:
            with postgres_database("sync") as url:
                result = _child(tmp, url, runs)
    figure.value = median(result["ours"]) * 1000
    figure.baseline = median(result["baseline"]) * 1000
    figure.samples = {k: [x * 1000 for x in result[k]] for k in ("ours", "baseline")}
    figure.detail = f"{result['entries']} entries, {result['bytes'] // 1024} KiB"
    return figure


def _child(tmp: Path, database_url: str, runs: int) -> dict[str, Any]:
    env = django_env(tmp, database_url)
    return run_worker(
        "bench.sync", {"task": "measure", "runs": runs, "tmp": str(tmp)}, env
    )


# --- worker ------------------------------------------------------------------------------


def _measure(args: dict[str, Any]) -> dict[str, Any]:
    setup_django()
    import yaml

    from backends.models import Gallery

    copy = Path(args["tmp"]) / "localai-index.yaml"
    shutil.copyfile(GALLERY_FIXTURE, copy)
    gallery = Gallery.objects.create(name="bench", url=copy.as_uri())

    def baseline() -> float:
        start = time.perf_counter()
        data = yaml.load(copy.read_bytes(), Loader=yaml.CSafeLoader)
        elapsed = time.perf_counter() - start
        assert isinstance(data, list) and data
        return elapsed

    def ours() -> float:
        start = time.perf_counter()
        summary = gallery.sync(force=True)
        elapsed = time.perf_counter() - start
        if gallery.last_error or not gallery.entry_count:
            raise RuntimeError(f"sync failed: {summary}")
        return elapsed

    baseline()
    ours()
    samples: dict[str, list[float]] = {"baseline": [], "ours": []}
    for _ in range(args["runs"]):
        samples["baseline"].append(baseline())
        samples["ours"].append(ours())
    return samples | {"entries": gallery.entry_count, "bytes": copy.stat().st_size}


if __name__ == "__main__":
    worker_main({"measure": _measure})
