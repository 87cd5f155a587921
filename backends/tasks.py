"""Maintenance work, run by the Huey consumers of ``manage.py run_worker``. Thin wrappers.

Two queues (docs/workers.md): djhuey's ``HUEY``, here, for maintenance (gallery syncs,
upgrade checks and every periodic task), and ``services.dispatch.INSTALLS`` for this
host's jobs, each with workers of its own, so that installs stalled on a slow source never
hold up maintenance.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable

from django.conf import settings
from huey import crontab
from huey.contrib.djhuey import db_periodic_task, db_task, lock_task

from backends.models import Gallery
from backends.services import audit, catalogue, icons, kits, nodes, upgrades

log = logging.getLogger(__name__)


def every_n_minutes(minutes: int) -> Callable[[datetime.datetime], bool]:
    """A Huey schedule that fires every ``minutes`` minutes, counted from midnight."""

    def is_due(when: datetime.datetime) -> bool:
        return (when.hour * 60 + when.minute) % max(minutes, 1) == 0

    return is_due


@db_task()
def sync_gallery(gallery_pk: int, force: bool = False) -> str:
    gallery = Gallery.objects.get(pk=gallery_pk)
    result = gallery.sync(force=force)
    after_syncs([gallery])
    return result


@db_task()
def sync_galleries(force: bool = False) -> list[str]:
    return sync_all(force=force)


@db_periodic_task(every_n_minutes(settings.GALLERY_SYNC_MINUTES))
@lock_task("sync-galleries-lock")
def sync_galleries_periodically() -> list[str]:
    return sync_all()


@db_task()
@lock_task("cache-icons-lock")
def cache_icons() -> str:
    outcome = icons.cache_icons()
    return f"{outcome.fetched} fetched, {outcome.kept} kept, {outcome.refused} refused"


def queue_icon_caching() -> None:
    """Icons come after a sync, as a task of their own: a slow icon host must not hold
    the sync (or the page that asked for it)."""
    if settings.LOCALAI_ADMIN_GALLERY_ICONS:
        cache_icons()


@db_task()
def check_upgrades() -> int:
    return upgrades.check_all()


@db_periodic_task(every_n_minutes(settings.UPGRADE_CHECK_HOURS * 60))
@lock_task("check-upgrades-lock")
def check_upgrades_periodically() -> int:
    return upgrades.check_all()


@db_periodic_task(crontab(minute="*"))
@lock_task("sweep-offline-nodes-lock")
def sweep_offline_nodes() -> list[str]:
    """Every minute: agents silent past the offline window go offline, their jobs fail."""
    return nodes.sweep_offline()


@db_periodic_task(crontab(minute="17", hour="3"))
@lock_task("prune-audit-lock")
def prune_audit_log() -> int:
    """Daily: audit events past LOCALAI_ADMIN_AUDIT_RETENTION_DAYS are deleted."""
    pruned = audit.prune()
    if pruned:
        log.info("audit log: %d events past the retention deleted", pruned)
    return pruned


@db_periodic_task(crontab(minute="37", hour="3"))
@lock_task("prune-kit-leftovers-lock")
def prune_kit_leftovers() -> int:
    """Daily: files an interrupted kit upload or import left behind are removed."""
    return kits.remove_leftovers()


def sync_all(force: bool = False) -> list[str]:
    """Seed the configured galleries, sync every enabled one, then what follows a sync
    (``after_syncs``)."""
    Gallery.objects.seed(settings.LOCALAI_BACKEND_GALLERIES)
    galleries = list(Gallery.objects.filter(enabled=True))
    summaries = [g.sync(force=force) for g in galleries]
    after_syncs(galleries)
    return summaries


def after_syncs(galleries: list[Gallery]) -> None:
    """Once any sync succeeded, this host's runs-here set is made current here rather
    than by the next catalogue page (seconds at 100,000 entries, nothing when no
    gallery's entries were replaced); then icons are queued."""
    if any(not gallery.last_error for gallery in galleries):
        catalogue.warm_runs_here()
    queue_icon_caching()
