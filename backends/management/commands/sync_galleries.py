from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from backends import tasks
from backends.services import audit


class Command(BaseCommand):
    help = "Sync the backend galleries (seeding them from LOCALAI_BACKEND_GALLERIES first)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="reparse even if unchanged"
        )
        parser.add_argument(
            "--background",
            action="store_true",
            help="queue the sync for the worker and return",
        )

    def handle(
        self, *args: Any, force: bool = False, background: bool = False, **options: Any
    ) -> str:
        actor = audit.Actor.cli()
        if background:
            tasks.sync_galleries(force=force)
            audit.record(actor, "gallery_sync", "all galleries", "started")
            return "Gallery sync queued."
        summaries = tasks.sync_all(force=force)
        audit.record(actor, "gallery_sync", "all galleries", "done")
        return "\n".join(summaries)
