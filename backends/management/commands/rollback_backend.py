from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from backends.management.commands._jobcommand import JobCommand
from backends.models import Job
from backends.services import jobs, versions


class Command(JobCommand):
    help = (
        "Put a kept version of an installed backend back in place, in the foreground; "
        "without --to, list the kept versions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--to",
            dest="kept",
            default="",
            help="a kept version's id, or its version string",
        )

    def handle(self, *args: Any, **options: Any) -> str:
        if options["kept"]:
            return super().handle(*args, **options)
        return self.listing(options["name"])

    def listing(self, name: str) -> str:
        try:
            kept = versions.versions(name)
        except jobs.Refused as exc:
            raise CommandError(str(exc)) from None
        lines = [
            f"{k.id}  {k.metadata.version or '-'}  {k.metadata.digest or '-'}"
            for k in kept.kept
        ]
        return "\n".join(lines) or f"{kept.name} has no kept version"

    def start(self, name: str, options: dict[str, Any]) -> Job:
        return versions.rollback(name, options["kept"], requested_by="cli", queue=False)
