from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SECRET_KEY", "ALLOWED_HOSTS", "DEBUG")
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args],
        cwd=ROOT,
        env=clean | {"LOCALAI_ADMIN_DATA_DIR": str(tmp_path)} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_pass_the_deploy_check(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="False",
        SECRET_KEY="x" * 64 + "-Production-Key-0123456789",
        ALLOWED_HOSTS="admin.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_without_a_secret_key_refuses_to_start(tmp_path: Path) -> None:
    result = check(tmp_path, DEBUG="False", ALLOWED_HOSTS="admin.example.com")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_without_allowed_hosts_refuses_to_start(tmp_path: Path) -> None:
    result = check(tmp_path, DEBUG="False", SECRET_KEY="x" * 80)
    assert result.returncode != 0
    assert "ALLOWED_HOSTS" in result.stderr


def test_a_malformed_boolean_is_a_clear_error(tmp_path: Path) -> None:
    result = check(tmp_path, DEBUG="yes")
    assert result.returncode != 0
    assert "DEBUG must be True or False" in result.stderr


def test_a_malformed_private_hosts_entry_is_a_clear_error(tmp_path: Path) -> None:
    result = check(tmp_path, LOCALAI_ADMIN_PRIVATE_HOSTS="10.0.0.0/8,registry:http")
    assert result.returncode != 0
    assert "LOCALAI_ADMIN_PRIVATE_HOSTS: 'registry:http'" in result.stderr


def test_registry_credentials_with_malformed_realms_are_a_clear_error(
    tmp_path: Path,
) -> None:
    credentials = '{"reg.example": {"username": "a", "password": "b", "realms": "x"}}'
    result = check(tmp_path, LOCALAI_ADMIN_REGISTRY_CREDENTIALS=credentials)
    assert result.returncode != 0
    assert "LOCALAI_ADMIN_REGISTRY_CREDENTIALS must map" in result.stderr
