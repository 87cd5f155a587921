from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from backends.management.commands._jobcommand import JobCommand
from backends.models import Job
from backends.services import jobs


class Command(JobCommand):
    help = "Install a backend from the galleries (or --uri) in the foreground."
    action = "install"

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--force", action="store_true", help="reinstall if installed"
        )
        parser.add_argument(
            "--uri", default="", help="install from this OCI image, URL or folder"
        )
        parser.add_argument(
            "--alias", default="", help="alias for an install from --uri"
        )

    def dry_run(self, name: str, options: dict[str, Any]) -> str:
        if options["uri"]:
            raise CommandError("--dry-run plans installs from the galleries only")
        return super().dry_run(name, options)

    def start(self, name: str, options: dict[str, Any]) -> Job:
        if options["uri"]:
            return jobs.install_external(
                options["uri"],
                name=name,
                alias=options["alias"],
                force=options["force"],
                requested_by="cli",
                queue=False,
            )
        return jobs.install(
            name, force=options["force"], requested_by="cli", queue=False
        )
