from __future__ import annotations

from typing import Any

from backends.management.commands._jobcommand import JobCommand
from backends.models import Job
from backends.services import jobs


class Command(JobCommand):
    help = "Upgrade an installed backend in the foreground."
    action = "upgrade"

    def start(self, name: str, options: dict[str, Any]) -> Job:
        return jobs.upgrade(name, requested_by="cli", queue=False)
