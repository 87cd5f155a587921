from __future__ import annotations

from typing import Any

from backends.management.commands._jobcommand import JobCommand
from backends.models import Job
from backends.services import jobs


class Command(JobCommand):
    help = "Delete an installed backend (a meta takes its build along unless shared)."

    def start(self, name: str, options: dict[str, Any]) -> Job:
        return jobs.delete(name, requested_by="cli", queue=False)
