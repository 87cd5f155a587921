from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from backends.management.commands._jobcommand import JobCommand
from backends.models import Job
from backends.services import jobs


class Command(JobCommand):
    help = "Delete an installed backend (a meta takes its build along unless shared)."
    action = "delete"

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--force",
            action="store_true",
            help="delete even though models of LocalAI (LOCALAI_MODELS_PATH) use it",
        )

    def start(self, name: str, options: dict[str, Any]) -> Job:
        return jobs.delete(
            name, requested_by="cli", queue=False, force=options["force"]
        )
