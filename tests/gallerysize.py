"""What an operation costs the database, and galleries that grow around it: for the
tests that serving one backend costs the same whatever the galleries' size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connection

from backends.core import gallery as gallery_format
from backends.models import Gallery, GalleryBackend

SMALL = 50
LARGE = 2_000


@dataclass
class Cost:
    queries: int = 0
    rows: int = 0  # rows the SELECTs answered


@contextmanager
def database_cost() -> Iterator[Cost]:
    """Count the queries run, and the rows each SELECT answers (the database counts
    them, running the same SELECT under COUNT(*) as it goes)."""
    cost = Cost()
    counting = False

    def counted(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal counting
        result = execute(sql, params, many, context)
        if counting:
            return result
        cost.queries += 1
        text = sql.lstrip().upper()
        if not many and text.startswith("SELECT") and "FOR UPDATE" not in text:
            counting = True
            try:
                with connection.cursor() as cursor:
                    cursor.execute(f"SELECT COUNT(*) FROM ({sql}) counted", params)
                    cost.rows += cursor.fetchone()[0]
            finally:
                counting = False
        return result

    with connection.execute_wrapper(counted):
        yield cost


class GallerySizeMixin:
    """A second gallery of unrelated entries (metas and their builds) that grows."""

    padding: Gallery

    def pad_to(self, count: int) -> None:
        if not hasattr(self, "padding"):
            self.padding = Gallery.objects.create(
                name="padding", url="file:///nowhere.yaml", position=1
            )
        start = GalleryBackend.objects.filter(gallery=self.padding).count()
        entries = []
        for i in range(start // 2, count // 2):
            entries.append(
                gallery_format.GalleryEntry(
                    f"pad-{i}", capabilities={"default": f"cpu-pad-{i}"}
                )
            )
            entries.append(
                gallery_format.GalleryEntry(
                    f"cpu-pad-{i}", uri=f"quay.io/example/pad:{i}"
                )
            )
        GalleryBackend.objects.insert_entries(self.padding, entries)
        # A changed gallery, as after a sync: cached "runs here" sets are stale.
        self.padding.entry_count = count
        self.padding.save()

    def assert_cost_does_not_grow(
        self, operation: Callable[[], object], reset: Callable[[], object] = tuple
    ) -> None:
        """``operation`` runs the same queries, reading the same rows, beside SMALL and
        beside LARGE other entries; each measured after a first run (caches filled),
        with ``reset`` after every run."""
        costs = []
        for size in (SMALL, LARGE):
            self.pad_to(size)
            operation()
            reset()
            with database_cost() as cost:
                operation()
            reset()
            costs.append(cost)
        assert GalleryBackend.objects.filter(gallery=self.padding).count() == LARGE
        small, large = costs
        assert small == large, f"{small} beside {SMALL} entries, {large} beside {LARGE}"
