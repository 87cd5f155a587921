from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from backends.management.commands._jobcommand import JobCommand
from backends.models import GalleryBackend, Job


class Command(JobCommand):
    help = "Install a backend from the galleries (or --uri) in the foreground."
    kind = Job.Kind.INSTALL

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

    def job_fields(self, options: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {"force": options["force"]}
        if options["uri"]:
            fields |= {
                "external_uri": options["uri"],
                "external_name": options["name"],
                "external_alias": options["alias"],
            }
        else:
            entry = GalleryBackend.objects.find(options["name"])
            fields["dedup_key"] = entry.name if entry else options["name"]
        return fields
