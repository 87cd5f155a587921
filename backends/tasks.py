"""Background work, run by the Huey consumer. Each task is a thin wrapper."""

from __future__ import annotations

import datetime

from django.conf import settings
from huey.contrib.djhuey import db_periodic_task, db_task, lock_task

from backends.models import Gallery


def every_n_minutes(minutes: int):  # type: ignore[no-untyped-def]
    """A Huey schedule that fires every ``minutes`` minutes, counted from midnight."""

    def is_due(when: datetime.datetime) -> bool:
        return (when.hour * 60 + when.minute) % max(minutes, 1) == 0

    return is_due


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


def sync_all(force: bool = False) -> list[str]:
    Gallery.objects.seed(settings.LOCALAI_BACKEND_GALLERIES)
    return [g.sync(force=force) for g in Gallery.objects.filter(enabled=True)]
