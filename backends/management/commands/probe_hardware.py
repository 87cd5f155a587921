from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from backends.models import Node


class Command(BaseCommand):
    help = (
        "Probe this host's hardware, store it on the local node and print the report."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json", action="store_true", help="print the full report as JSON"
        )

    def handle(self, *args: Any, **options: Any) -> str:
        node = Node.objects.local()
        node.probe_local_hardware()
        if options.get("json"):
            return json.dumps(node.hardware, indent=2)
        vram = node.vram_bytes / 1024**3
        lines = [
            f"node:        {node.name}",
            f"platform:    {node.os}/{node.arch}",
            f"gpu vendor:  {node.vendor or 'none'} ({vram:.1f} GiB VRAM)",
            f"driver:      {node.driver_version or '-'} (CUDA {node.cuda_version or '-'})",
            f"capability:  {node.capability}",
            f"why:         {node.capability_explanation}",
        ]
        return "\n".join(lines)
