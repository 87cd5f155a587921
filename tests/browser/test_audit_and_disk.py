"""The Audit page and the disk charts in a real browser, under the CSP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect

from backends.models import AuditEvent

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


def test_the_audit_page_filters_in_place_and_pushes_the_url(
    new_page: Any, users: Any
) -> None:
    AuditEvent.objects.create(
        username="carol",
        channel="dashboard",
        action="delete",
        target="cpu-old",
        outcome="done",
    )
    AuditEvent.objects.create(
        username="alice",
        token_name="ci",
        channel="api",
        ip="10.0.0.9",
        action="install",
        target="cpu-whisper",
        outcome="refused",
        reason="no such backend",
    )
    page = new_page(users["alice"])
    page.goto("/")
    page.get_by_role("link", name="Audit").click()
    rows = page.locator("#audit-events tbody tr")
    expect(rows).to_have_count(2)
    page.get_by_label("Outcome").select_option("refused")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("alice (token ci)")
    expect(rows.first).to_contain_text("no such backend")
    expect(page).to_have_url(re.compile(r"outcome=refused"))


def test_the_installed_page_charts_backend_sizes_and_the_free_space(
    new_page: Any, users: Any
) -> None:
    for name, size in (("cpu-big", 40_000), ("cpu-small", 10_000)):
        folder = Path(settings.LOCALAI_BACKENDS_PATH) / name
        folder.mkdir(parents=True)
        (folder / "run.sh").write_text("#!/bin/sh\n")
        (folder / "run.sh").chmod(0o755)
        (folder / "lib.so").write_bytes(b"x" * size)
        (folder / "metadata.json").write_text(f'{{"name": "{name}"}}')
    page = new_page(users["bob"])
    page.goto("/installed/")
    bars = page.locator(".disk-chart td.bar svg")
    expect(bars).to_have_count(2)
    rects = page.locator(".disk-chart td.bar rect")
    boxes = [rects.nth(i).bounding_box() for i in range(2)]
    assert boxes[0] and boxes[1]
    # 40 kB against 10 kB: the larger bar is about four times as wide.
    assert 3 < boxes[0]["width"] / boxes[1]["width"] < 5
    expect(page.locator(".disk .disk-bar")).to_be_visible()
    expect(page.locator(".disk")).to_contain_text("free of")
