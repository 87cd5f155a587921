"""Shared by install_backend, upgrade_backend and delete_backend: run one job in the
foreground through the same pipeline as the worker, with a progress bar."""

from __future__ import annotations

import shutil
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from backends.core.installed import human_size
from backends.core.redact import redact_uri
from backends.models import Job
from backends.services import audit, jobs, pipeline, plans


class JobCommand(BaseCommand):
    # The plan action of --dry-run: install, upgrade or delete.
    action = ""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="backend name, alias or gallery@name")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what the job would do (build, folders, download, disk, "
            "models, warnings) and change nothing",
        )

    def dry_run(self, name: str, options: dict[str, Any]) -> str:
        """The plan, printed; nothing is started."""
        plan = plans.make_plan(self.action, name, force=options.get("force", False))
        for line in plan.lines():
            self.stdout.write(line)
        return ""

    def start(self, name: str, options: dict[str, Any]) -> Job:
        """Open the job through the service every entry point uses, unqueued."""
        raise NotImplementedError

    def handle(self, *args: Any, **options: Any) -> str:
        try:
            if options["dry_run"]:
                return self.dry_run(options["name"], options)
            # The audit log records the command and the account that ran it.
            with audit.acting_as(audit.Actor.cli()):
                job = self.start(options["name"], options)
        except jobs.Refused as exc:
            raise CommandError(str(exc)) from None
        if job.state != Job.State.QUEUED:
            raise CommandError(
                f"job {job.pk} for {redact_uri(job.target)} is already {job.state}"
            )
        job = self.run_with_progress(job)
        if job.state != Job.State.COMPLETED:
            raise CommandError(f"{job.state}: {job.error or job.message}")
        return job.message

    def run_with_progress(self, job: Job) -> Job:
        stop = threading.Event()
        if self.stdout.isatty():
            # The bar is drawn from the Job row, which the pipeline updates as it goes.
            threading.Thread(
                target=self.draw_until, args=(job, stop), daemon=True
            ).start()
        try:
            pipeline.run_job(str(job.pk))
        except KeyboardInterrupt:
            pipeline.finish(job, Job.State.CANCELLED, "cancelled from the terminal")
            self.stderr.write("\ncancelled")
        finally:
            stop.set()
        job.refresh_from_db()
        return job

    def draw_until(self, job: Job, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            job.refresh_from_db()
            self.draw(job)
        self.stdout.write("")

    def draw(self, job: Job) -> None:
        if job.state != Job.State.RUNNING:
            return
        width = max(shutil.get_terminal_size().columns - 50, 10)
        filled = int(width * job.progress / 100)
        bar = "#" * filled + "-" * (width - filled)
        done = human_size(job.current_bytes)
        total = human_size(job.total_bytes) if job.total_bytes else "?"
        speed = human_size(job.bytes_per_second) + "/s" if job.bytes_per_second else ""
        line = f"\r[{bar}] {job.progress:5.1f}% {done}/{total} {speed} {job.phase}"
        self.stdout.write(line, ending="")
        self.stdout.flush()
