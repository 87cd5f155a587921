from __future__ import annotations

from django.apps import AppConfig


class BackendsConfig(AppConfig):
    name = "backends"
    verbose_name = "LocalAI backends"

    def ready(self) -> None:
        from backends import checks  # noqa: F401  (registers the system checks)
