"""Every page fits a 390 px phone: nothing (actions, progress) is off-screen sideways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backends.models import Gallery
from tests.browser.test_screenshots import PHONE, make_cluster, make_data

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


def test_every_page_fits_a_390_px_wide_screen(
    new_page: Any,
    users: Any,
    real_gallery: Gallery,
    known_backends: None,
    settings: Any,
    tmp_path: Path,
) -> None:
    # Distributed mode with agents and jobs: the widest form of every page.
    settings.DISTRIBUTED = True
    running = make_data(real_gallery)
    gpu, fan_out = make_cluster(tmp_path)
    pages = [
        "/",
        "/?q=whisper&other_hardware=on&development=on",
        "/catalogue/localai/llama-cpp/",
        "/catalogue/localai/cuda12-llama-cpp/",
        "/installed/",
        "/installed/llama-cpp/delete/",
        "/installed/from-uri/",
        "/known/",
        "/jobs/",
        f"/jobs/{running.pk}/",
        f"/jobs/{fan_out.pk}/",
        "/galleries/",
        "/hardware/",
        "/nodes/",
        f"/nodes/{gpu.pk}/",
    ]
    page = new_page(users["alice"], viewport=PHONE)
    too_wide = {}
    for url in pages:
        page.goto(url)
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            too_wide[url] = width
    assert too_wide == {}
