from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from backends.models import Job
from backends.services import audit, jobs, kits, pipeline


class Command(BaseCommand):
    help = (
        "Import an offline kit made by export_backends (every blob checked against its "
        "digest) and install its backends, with no network."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kit", help="the kit file")
        parser.add_argument(
            "names", nargs="*", help="backends to install (default: the kit's own)"
        )
        parser.add_argument(
            "--force", action="store_true", help="reinstall if installed"
        )

    def handle(self, *args: Any, **options: Any) -> str:
        try:
            with audit.acting_as(audit.Actor.cli()):
                gallery, started = kits.import_kit(
                    Path(options["kit"]),
                    options["names"],
                    force=options["force"],
                    requested_by="cli",
                    queue=False,
                )
        except (kits.KitError, jobs.Refused, OSError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"kit imported as gallery {gallery.name}")
        failed = []
        for job in started:
            if job.state == Job.State.QUEUED:
                pipeline.run_job(str(job.pk))
            job.refresh_from_db()
            self.stdout.write(f"{job.target}: {job.state}: {job.error or job.message}")
            if job.state != Job.State.COMPLETED:
                failed.append(job.target)
        if failed:
            raise CommandError("not installed: " + ", ".join(failed))
        return f"installed {len(started)} backend(s) from the kit"
