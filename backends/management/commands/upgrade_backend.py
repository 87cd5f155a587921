from __future__ import annotations

from backends.management.commands._jobcommand import JobCommand
from backends.models import Job


class Command(JobCommand):
    help = "Upgrade an installed backend in the foreground."
    kind = Job.Kind.UPGRADE
