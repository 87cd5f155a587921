"""Background work, run by the Huey consumers of ``manage.py run_worker``. Thin wrappers.

Two queues (docs/workers.md): djhuey's ``HUEY`` for maintenance (gallery syncs, upgrade
checks and every periodic task) and ``INSTALLS`` for this host's jobs, each with workers of
its own, so that installs stalled on a slow source never hold up maintenance.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from huey import Huey, crontab
from huey.contrib.djhuey import db_periodic_task, db_task, lock_task
from huey.utils import load_class

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


def queue_from_settings(config: dict[str, Any]) -> Huey:
    """A Huey built from a settings dict shaped like djhuey's ``HUEY``."""
    options = {
        key: value
        for key, value in config.items()
        if key not in ("name", "huey_class", "consumer")
    }
    huey_class: type[Huey] = load_class(config["huey_class"])
    return huey_class(config["name"], **options)


INSTALLS = queue_from_settings(settings.HUEY_INSTALLS)


def closing_connections[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """Djhuey's ``db_task`` for the install queue: a worker thread never reuses a
    connection the database closed; immediate mode (tests) keeps the test's own."""

    @wraps(fn)
    def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        if not INSTALLS.immediate:
            close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            if not INSTALLS.immediate:
                close_old_connections()

    return inner


_recovery = threading.Lock()
_recovered = False


@INSTALLS.on_startup()
def recover_from_a_killed_worker() -> None:
    """Once per worker process, before its first install: fail what a killed worker left
    running and tidy the backends folder (every install thread calls this hook; only the
    install consumer runs jobs, so only it may decide that a running job was orphaned)."""
    global _recovered
    with _recovery:
        if _recovered:
            return
        _recovered = True
        failed = Job.objects.fail_interrupted(Node.objects.local(), PROCESS_STARTED)
        actions = Installer(Path(settings.LOCALAI_BACKENDS_PATH)).recover()
        if failed or actions:
            log.warning("recovered after a stop: %d job(s) failed; %s", failed, actions)


@INSTALLS.task()
@closing_connections
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
