from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from backends.management.commands._jobcommand import JobCommand
from backends.models import Job
from backends.services import jobs


class Command(JobCommand):
    help = "Upgrade an installed backend in the foreground."
    action = "upgrade"

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--force", action="store_true", help="upgrade even if it is pinned"
        )

    def start(self, name: str, options: dict[str, Any]) -> Job:
        return jobs.upgrade(
            name, force=options["force"], requested_by="cli", queue=False
        )
