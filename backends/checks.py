"""System checks (``manage.py check``, and every command that starts the product)."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
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


@checks.register(checks.Tags.security)
def metrics_allowlist(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """A mistyped LOCALAI_ADMIN_METRICS_ALLOW entry stops the start: silently ignored,
    it would leave the scraper refused, or worse, read as a wider range than meant."""
    errors: list[checks.CheckMessage] = []
    for entry in settings.LOCALAI_ADMIN_METRICS_ALLOW:
        try:
            ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            errors.append(
                checks.Error(
                    f"LOCALAI_ADMIN_METRICS_ALLOW: {entry!r} is not a CIDR: {exc}",
                    id="backends.E002",
                )
            )
    return errors
