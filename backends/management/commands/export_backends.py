from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from backends.core import oci
from backends.core.redact import redact_message
from backends.services import kits


class Command(BaseCommand):
    help = (
        "Write an offline kit (an OCI image layout in a tar, with a gallery pointing "
        "into it) of gallery backends, for import_backends on a host with no network."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="+", help="backend names or gallery@name")
        parser.add_argument("--output", required=True, help="the kit file to write")
        parser.add_argument(
            "--capability",
            default="",
            help="for meta backends, only the build this capability resolves to "
            "(default: every build the meta names)",
        )

    def handle(self, *args: Any, **options: Any) -> str:
        try:
            digests = kits.export_backends(
                options["names"],
                Path(options["output"]),
                capability=options["capability"],
            )
        except (kits.KitError, oci.OCIError, OSError) as exc:
            raise CommandError(redact_message(str(exc))) from None
        for name, digest in digests.items():
            self.stdout.write(f"{name}: {digest}")
        return f"wrote {len(digests)} image(s) to {options['output']}"
