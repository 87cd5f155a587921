"""Prometheus metrics, computed from the database when scraped.

Every web worker answers the same numbers because none is kept in a process: the
collector reads the jobs, nodes, installed backends and galleries at scrape time (a few
aggregate queries), so no multiprocess mode or shared directory is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from backends.models import Gallery, InstalledBackend, Job, Node

PREFIX = "localai_admin"
# Seconds: from a cached small backend to a multi-gigabyte CUDA image on a slow link.
DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
FINISHED = (Job.State.COMPLETED, Job.State.FAILED, Job.State.CANCELLED)


class DatabaseCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._durations()
        yield from self._nodes()
        yield from self._installed()
        yield from self._galleries()

    def _jobs(self) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            f"{PREFIX}_jobs_finished",
            "Jobs that ended, by kind and outcome (completed, failed, cancelled).",
            labels=["kind", "outcome"],
        )
        active = GaugeMetricFamily(
            f"{PREFIX}_jobs_active",
            "Jobs queued or running now, by kind and state.",
            labels=["kind", "state"],
        )
        # A fanned-out parent only sums its parts: counting both would count twice.
        jobs = Job.objects.filter(children__isnull=True)
        rows = jobs.values("kind", "state").annotate(n=Count("pk")).order_by()
        for row in rows:
            family = finished if row["state"] in FINISHED else active
            family.add_metric([row["kind"], row["state"]], row["n"])
        downloaded = CounterMetricFamily(
            f"{PREFIX}_downloaded_bytes",
            "Bytes downloaded by jobs, by kind.",
            labels=["kind"],
        )
        sums = jobs.values("kind").annotate(b=Sum("current_bytes")).order_by()
        for total in sums:
            downloaded.add_metric([total["kind"]], total["b"] or 0)
        yield from (finished, active, downloaded)

    def _durations(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            f"{PREFIX}_job_duration_seconds",
            "How long finished jobs ran, from start to end, by kind.",
            labels=["kind"],
        )
        took = ExpressionWrapper(
            F("finished_at") - F("started_at"), output_field=DurationField()
        )
        buckets = {
            f"le{b}": Count("pk", filter=Q(took__lte=timedelta(seconds=b)))
            for b in DURATION_BUCKETS
        }
        rows = (
            Job.objects.filter(
                children__isnull=True,
                state__in=FINISHED,
                started_at__isnull=False,
                finished_at__isnull=False,
            )
            .annotate(took=took)
            .values("kind")
            .annotate(total=Count("pk"), seconds=Sum("took"), **buckets)
            .order_by()
        )
        for row in rows:
            found: dict[str, Any] = dict(row)
            counts = [(str(float(b)), found[f"le{b}"]) for b in DURATION_BUCKETS]
            counts.append(("+Inf", row["total"]))
            seconds = row["seconds"]
            total = seconds.total_seconds() if seconds is not None else 0.0
            family.add_metric([row["kind"]], counts, total)
        yield family

    def _nodes(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_nodes",
            "Nodes by status (online, draining, offline), as the dashboard shows them.",
            labels=["status"],
        )
        counts = dict.fromkeys(Node.Status.values, 0)
        for node in Node.objects.all():
            counts[node.current_status] = counts.get(node.current_status, 0) + 1
        for status, n in counts.items():
            family.add_metric([status], n)
        yield family

    def _installed(self) -> Iterator[Metric]:
        installed = GaugeMetricFamily(
            f"{PREFIX}_installed_backends",
            "Backends installed, by node.",
            labels=["node"],
        )
        size = GaugeMetricFamily(
            f"{PREFIX}_installed_bytes",
            "Disk used by installed backends, by node.",
            labels=["node"],
        )
        upgrades = GaugeMetricFamily(
            f"{PREFIX}_upgrades_available",
            "Installed backends with a newer build in a gallery, by node.",
            labels=["node"],
        )
        rows = (
            InstalledBackend.objects.values("node__name")
            .annotate(
                n=Count("pk"),
                size=Sum("size_bytes"),
                upgradable=Count("pk", filter=Q(upgrade_available=True)),
            )
            .order_by()
        )
        for row in rows:
            node = row["node__name"]
            installed.add_metric([node], row["n"])
            size.add_metric([node], row["size"] or 0)
            upgrades.add_metric([node], row["upgradable"])
        yield from (installed, size, upgrades)

    def _galleries(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            f"{PREFIX}_gallery_last_sync_age_seconds",
            "Seconds since each enabled gallery's last good sync (+Inf: never synced).",
            labels=["gallery"],
        )
        failing = GaugeMetricFamily(
            f"{PREFIX}_gallery_sync_failing",
            "1 when a gallery's last sync attempt failed.",
            labels=["gallery"],
        )
        now = timezone.now()
        for gallery in Gallery.objects.filter(enabled=True):
            synced = gallery.last_synced_at
            seconds = (now - synced).total_seconds() if synced else math.inf
            age.add_metric([gallery.name], seconds)
            failing.add_metric([gallery.name], 1 if gallery.last_error else 0)
        yield from (age, failing)


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(DatabaseCollector())


def exposition() -> bytes:
    """The metrics in Prometheus' text format."""
    return generate_latest(REGISTRY)
