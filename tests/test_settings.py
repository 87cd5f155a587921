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


def test_the_make_serve_settings_pass_the_deploy_check(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="False",
        SECRET_KEY="x" * 64 + "-Production-Key-0123456789",
        ALLOWED_HOSTS="admin.example.com",
        LOCALAI_ADMIN_BEHIND_PROXY="True",
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def production(tmp_path: Path, code: str, **env: str) -> str:
    """What CODE prints in a fresh process with production settings and ENV."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SECURE_", "LOCALAI_ADMIN_"))
        and k not in ("SECRET_KEY", "SECRET_KEY_FILE", "ALLOWED_HOSTS", "DEBUG")
    }
    setup = "import django; django.setup(); from django.conf import settings; "
    result = subprocess.run(
        [sys.executable, "-c", setup + code],
        cwd=ROOT,
        env=clean
        | {
            "LOCALAI_ADMIN_DATA_DIR": str(tmp_path),
            "DJANGO_SETTINGS_MODULE": "localai_admin.settings",
            "DEBUG": "False",
            "SECRET_KEY": "x" * 80,
            "ALLOWED_HOSTS": "admin.example.com",
        }
        | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


SCHEME_SEEN = (
    "from django.test import RequestFactory; "
    "print(RequestFactory().get('/', HTTP_X_FORWARDED_PROTO='https').is_secure())"
)


def test_a_client_forwarded_proto_is_ignored_without_a_proxy(tmp_path: Path) -> None:
    assert production(tmp_path, SCHEME_SEEN) == "False"


def test_the_forwarded_proto_is_trusted_when_behind_the_proxy(tmp_path: Path) -> None:
    assert (
        production(tmp_path, SCHEME_SEEN, LOCALAI_ADMIN_BEHIND_PROXY="True") == "True"
    )


def test_only_the_proxy_makes_production_redirect_to_https(tmp_path: Path) -> None:
    code = "print(settings.SECURE_SSL_REDIRECT)"
    assert production(tmp_path, code) == "False"
    assert production(tmp_path, code, LOCALAI_ADMIN_BEHIND_PROXY="True") == "True"


def test_plain_http_production_drops_secure_cookies_and_hsts(tmp_path: Path) -> None:
    code = (
        "print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, "
        "settings.SECURE_HSTS_SECONDS, settings.SECURE_SSL_REDIRECT)"
    )
    assert production(tmp_path, code) == "True True 31536000 False"
    assert (
        production(
            tmp_path,
            code,
            LOCALAI_ADMIN_HTTPS="False",
            LOCALAI_ADMIN_BEHIND_PROXY="True",
        )
        == "False False 0 False"
    )


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
