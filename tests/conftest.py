from __future__ import annotations

from pathlib import Path

import pytest
from huey.contrib.djhuey import HUEY

pytest_plugins = ["tests.registry_fixtures", "tests.cluster"]


@pytest.fixture(autouse=True)
def isolated_host(settings, tmp_path: Path) -> None:
    """Every test gets its own backends folder and an empty probe root (a CPU-only host)."""
    settings.LOCALAI_BACKENDS_PATH = tmp_path / "backends"
    settings.LOCALAI_BACKENDS_PATH.mkdir()
    settings.LOCALAI_BACKENDS_SYSTEM_PATH = None
    settings.LOCALAI_ADMIN_PROBE_ROOT = tmp_path / "probe-root"
    settings.LOCALAI_ADMIN_PROBE_ROOT.mkdir()
    settings.LOCALAI_FORCE_META_BACKEND_CAPABILITY = ""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    HUEY.immediate = True
