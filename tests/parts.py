"""The real parts the tests drive (docker-registry, openssl, chromium, PostgreSQL,
Redis): a missing one skips its tests on a workstation and fails them in CI, where a
skip would pass a run that never tested what it claims to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

# The real data beside the checkout (../shared/fixtures): the LocalAI gallery and the
# known-backends registry.
FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"


def in_ci() -> bool:
    """True when ``CI`` is set to a true value (``.ci/run`` sets ``CI=1``)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def missing_part(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason}; CI must provide every real part", pytrace=False)
    pytest.skip(reason)
