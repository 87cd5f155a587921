"""docs/deployment.md describes what make serve runs: every knob it has is in there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "deployment.md").read_text()


def test_every_make_serve_variable_is_documented() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nserve:", 1)[1].split("\n\n", 1)[0]
    passed = set(re.findall(r'(\w+)="\$\(\w+\)"', recipe)) - {"BIN"}
    assert passed
    assert sorted(name for name in passed if f"`{name}`" not in DOC) == []


def test_every_https_and_proxy_setting_is_documented() -> None:
    settings = (ROOT / "localai_admin" / "settings.py").read_text()
    names = set(
        re.findall(
            r'env\w+\(\s*"((?:SECURE_|LOCALAI_ADMIN_(?:HTTPS|BEHIND))\w*)"', settings
        )
    )
    assert {"LOCALAI_ADMIN_BEHIND_PROXY", "SECURE_SSL_REDIRECT"} <= names
    assert sorted(name for name in names if f"`{name}`" not in DOC) == []
