from __future__ import annotations

from backends.management.commands._jobcommand import JobCommand
from backends.models import Job


class Command(JobCommand):
    help = "Delete an installed backend (a meta takes its build along unless shared)."
    kind = Job.Kind.DELETE
