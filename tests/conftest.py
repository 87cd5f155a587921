from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huey.contrib.djhuey import HUEY

from backends import tasks
from backends.core.trees import remove_tree

pytest_plugins = ["tests.registry_fixtures", "tests.cluster"]


@pytest.fixture(autouse=True)
def isolated_host(settings, tmp_path: Path) -> Iterator[None]:
    """Every test gets its own backends folder and an empty probe root (a CPU-only host)."""
    settings.LOCALAI_BACKENDS_PATH = tmp_path / "backends"
    settings.LOCALAI_BACKENDS_PATH.mkdir()
    settings.LOCALAI_BACKENDS_SYSTEM_PATH = None
    settings.LOCALAI_ADMIN_PROBE_ROOT = tmp_path / "probe-root"
    settings.LOCALAI_ADMIN_PROBE_ROOT.mkdir()
    settings.LOCALAI_FORCE_META_BACKEND_CAPABILITY = ""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    HUEY.immediate = True
    tasks.INSTALLS.immediate = True
    yield
    # Some tests leave trees thousands of folders deep, which pytest's own clean-up of
    # old runs (shutil.rmtree, recursive on Python 3.12) could never remove.
    remove_tree(tmp_path)
