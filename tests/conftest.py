from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huey.contrib.djhuey import HUEY

from backends.core import policy
from backends.core.trees import remove_tree
from backends.services import dispatch
from tests.parts import FIXTURES

pytest_plugins = ["tests.registry_fixtures", "tests.cluster"]


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1"]


@pytest.fixture(autouse=True)
def loopback_sources(tmp_path: Path) -> Iterator[None]:
    """The core's default source policy, for the tests that build clients and
    installers themselves (no Django needed): loopback servers and tmp_path allowed."""
    previous = policy.set_default_policy(
        policy.SourcePolicy.parse(LOOPBACK_HOSTS, [tmp_path, FIXTURES])
    )
    yield
    policy.set_default_policy(previous)


@pytest.fixture(autouse=True)
def isolated_host(settings, tmp_path: Path) -> Iterator[None]:
    """Every test gets its own backends folder and an empty probe root (a CPU-only host).

    The suite's registries and servers listen on loopback and its local sources live
    under tmp_path: the source policy's settings allow both here (the policy tests
    narrow them)."""
    settings.LOCALAI_BACKENDS_PATH = tmp_path / "backends"
    settings.LOCALAI_BACKENDS_PATH.mkdir()
    settings.LOCALAI_BACKENDS_SYSTEM_PATH = None
    settings.LOCALAI_ADMIN_PROBE_ROOT = tmp_path / "probe-root"
    settings.LOCALAI_ADMIN_PROBE_ROOT.mkdir()
    settings.LOCALAI_FORCE_META_BACKEND_CAPABILITY = ""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LOCALAI_ADMIN_PRIVATE_HOSTS = list(LOOPBACK_HOSTS)
    settings.LOCALAI_ADMIN_LOCAL_ROOTS = [tmp_path, FIXTURES]
    # The suite's builds have a plain shell run.sh that speaks no gRPC: the health check
    # is off here and on in tests/test_health_check.py.
    settings.LOCALAI_ADMIN_HEALTH_CHECK = False
    # The real gallery's icons are on the internet: only the icon tests fetch any.
    settings.LOCALAI_ADMIN_GALLERY_ICONS = False
    settings.LOCALAI_ADMIN_CACHE_DIR = tmp_path / "cache"
    HUEY.immediate = True
    dispatch.INSTALLS.immediate = True
    yield
    # Some tests leave trees thousands of folders deep, which pytest's own clean-up of
    # old runs (shutil.rmtree, recursive on Python 3.12) could never remove.
    remove_tree(tmp_path)
