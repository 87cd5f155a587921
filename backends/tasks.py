"""Background work, run by the Huey consumer. Each task is a thin wrapper."""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from huey import crontab
from huey.contrib.djhuey import db_periodic_task, db_task, lock_task, on_startup

from backends.core.install import Installer
from backends.models import Gallery, Job, Node
from backends.services import nodes, pipeline, upgrades

log = logging.getLogger(__name__)

# Jobs this process marks running start after this instant; older running jobs were left
# behind by a worker that died.
PROCESS_STARTED = timezone.now()


def every_n_minutes(minutes: int) -> Callable[[datetime.datetime], bool]:
    """A Huey schedule that fires every ``minutes`` minutes, counted from midnight."""

    def is_due(when: datetime.datetime) -> bool:
        return (when.hour * 60 + when.minute) % max(minutes, 1) == 0

    return is_due


_recovery = threading.Lock()
_recovered = False


@on_startup()
def recover_from_a_killed_worker() -> None:
    """Once per consumer process, before its first job: fail what a killed worker left
    running and tidy the backends folder (every worker thread calls this hook)."""
    global _recovered
    with _recovery:
        if _recovered:
            return
        _recovered = True
        failed = Job.objects.fail_interrupted(Node.objects.local(), PROCESS_STARTED)
        actions = Installer(Path(settings.LOCALAI_BACKENDS_PATH)).recover()
        if failed or actions:
            log.warning("recovered after a stop: %d job(s) failed; %s", failed, actions)


@db_task()
def run_job(job_id: str) -> str:
    return pipeline.run_job(job_id)


@db_task()
def sync_gallery(gallery_pk: int, force: bool = False) -> str:
    return Gallery.objects.get(pk=gallery_pk).sync(force=force)


@db_task()
def sync_galleries(force: bool = False) -> list[str]:
    return sync_all(force=force)


@db_periodic_task(every_n_minutes(settings.GALLERY_SYNC_MINUTES))
@lock_task("sync-galleries-lock")
def sync_galleries_periodically() -> list[str]:
    return sync_all()


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


def sync_all(force: bool = False) -> list[str]:
    Gallery.objects.seed(settings.LOCALAI_BACKEND_GALLERIES)
    return [g.sync(force=force) for g in Gallery.objects.filter(enabled=True)]
