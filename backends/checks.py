"""System checks (``manage.py check``, and every command that starts the product)."""

from __future__ import annotations

from typing import Any

from django.core import checks

from backends.services import pipeline


@checks.register(checks.Tags.security)
def source_policy_settings(
    app_configs: Any, **kwargs: Any
) -> list[checks.CheckMessage]:
    """A mistyped LOCALAI_ADMIN_PRIVATE_HOSTS entry stops the start, not the first job."""
    try:
        pipeline.source_policy()
    except ValueError as exc:
        return [checks.Error(str(exc), id="backends.E001")]
    return []
