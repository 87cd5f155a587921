"""Issue 15's pages in a browser: the upgrade plan before upgrading, the delete refused
while a model uses the backend, versions and rollback, pin and unpin.

The builds are local folders (allowed sources in the suite), so each job runs the real
pipeline in a thread (``job_worker``) without a registry, and the tests stay quick.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect

from backends.core.versions import VersionStore
from backends.models import Gallery, InstalledBackend, Job
from backends.services import pipeline
from tests.base import make_build

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def live_folder() -> Path:
    return Path(settings.LOCALAI_BACKENDS_PATH) / "cpu-whisper"


def version_on_disk() -> str:
    return str(json.loads((live_folder() / "metadata.json").read_text())["version"])


@pytest.fixture
def installed_whisper(tmp_path: Path) -> Path:
    """cpu-whisper 1.0 installed; the gallery offers 2.0 from a local folder."""
    source = make_build(tmp_path / "sources" / "cpu-whisper", "2.0")
    gallery = Gallery.objects.create(name="localai", url="file:///dev/null")
    gallery.entries.create(name="cpu-whisper", uri=str(source), version="2.0")
    make_build(live_folder(), "1.0")
    (live_folder() / "metadata.json").write_text(
        json.dumps({"name": "cpu-whisper", "version": "1.0", "gallery_url": "localai"})
    )
    pipeline.reconcile(None)
    InstalledBackend.objects.filter(name="cpu-whisper").update(
        upgrade_available=True, available_version="2.0"
    )
    return source


def test_the_upgrade_confirmation_shows_the_plan_then_upgrades(
    new_page: Any, users: Any, installed_whisper: Path, job_worker: Any
) -> None:
    page = new_page(users["alice"])
    page.goto("/installed/")
    page.get_by_role("link", name="Upgrade cpu-whisper").click()

    expect(page.get_by_role("heading", name="Upgrade cpu-whisper?")).to_be_visible()
    expect(page.locator(".plan-why")).to_contain_text(
        "cpu-whisper is replaced: 1.0 -> 2.0"
    )
    expect(page.locator(".plan-folders")).to_contain_text(f"replace {live_folder()}")
    expect(page.locator(".plan-download")).to_contain_text(str(installed_whisper))
    assert version_on_disk() == "1.0"  # looking at the plan changed nothing

    page.get_by_role("button", name="Upgrade cpu-whisper").click()
    expect(page).to_have_url(re.compile(r"/installed/$"))
    expect(page.locator("#messages")).to_contain_text("Upgrade of cpu-whisper started.")
    # The row redraws when the job ends, with the new version and no Upgrade button.
    rows = page.locator("#installed-rows")
    expect(rows.get_by_role("link", name="Upgrade cpu-whisper")).to_have_count(0)
    expect(rows).to_contain_text("2.0")
    job = Job.objects.get()
    for _ in range(100):  # the row may show 2.0 as the version on offer before that
        if job.is_finished:
            break
        time.sleep(0.1)
        job.refresh_from_db()
    assert job.state == Job.State.COMPLETED, job.error
    assert version_on_disk() == "2.0"
    assert [
        k.metadata.version
        for k in VersionStore(live_folder().parent).kept("cpu-whisper")
    ] == ["1.0"]


def test_the_delete_confirmation_refuses_without_delete_anyway_when_a_model_uses_it(
    new_page: Any,
    users: Any,
    installed_whisper: Path,
    job_worker: Any,
    settings: Any,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "stt.yaml").write_text("name: stt\nbackend: cpu-whisper\n")
    settings.LOCALAI_MODELS_PATH = models
    page = new_page(users["alice"])
    page.goto("/installed/")
    expect(page.locator("#installed-rows")).to_contain_text("used by model stt")
    page.get_by_role("link", name="Delete cpu-whisper").click()

    expect(page.locator(".in-use")).to_contain_text("stt")
    delete = page.get_by_role("button", name="Delete cpu-whisper")
    delete.click()
    # The browser itself refuses: "Delete anyway" is required, nothing was posted.
    expect(page).to_have_url(re.compile(r"/installed/cpu-whisper/delete/$"))
    expect(page.get_by_role("heading", name="Delete cpu-whisper?")).to_be_visible()
    assert live_folder().exists()

    page.get_by_label(re.compile("Delete anyway")).check()
    delete.click()
    expect(page.locator(".job-progress")).to_contain_text("Delete: completed")
    assert not live_folder().exists()


def test_the_versions_page_rolls_back_after_showing_the_plan(
    new_page: Any, users: Any, installed_whisper: Path, job_worker: Any
) -> None:
    old = make_build(live_folder().parent / "old-whisper", "0.9")
    (old / "metadata.json").write_text(
        json.dumps({"name": "cpu-whisper", "version": "0.9"})
    )
    kept = VersionStore(live_folder().parent).keep(old, "cpu-whisper", 1)
    assert kept is not None
    page = new_page(users["alice"])
    page.goto("/installed/")
    page.locator("#installed-rows").get_by_role("link", name="Versions").click()

    expect(
        page.get_by_role("heading", name="Kept versions of cpu-whisper")
    ).to_be_visible()
    expect(page.locator(f"#version-{kept.id}")).to_contain_text("0.9")
    page.get_by_role("link", name=f"Roll cpu-whisper back to {kept.id}").click()

    expect(page.get_by_role("heading", name="Roll cpu-whisper back?")).to_be_visible()
    expect(page.locator(".plan-why")).to_contain_text("cpu-whisper goes back to 0.9")
    expect(page.locator(".plan-folders")).to_contain_text(
        "moves into the kept versions"
    )
    assert version_on_disk() == "1.0"

    page.get_by_role("button", name="Roll back cpu-whisper").click()
    expect(page.locator(".job-progress")).to_contain_text("Rollback: completed")
    assert version_on_disk() == "0.9"
    page.goto("/installed/cpu-whisper/versions/")
    expect(page.locator("table.versions tbody")).to_contain_text("1.0")


def test_pin_then_unpin_on_the_installed_page(
    new_page: Any, users: Any, installed_whisper: Path
) -> None:
    page = new_page(users["alice"])
    page.goto("/installed/")
    rows = page.locator("#installed-rows")
    expect(rows.get_by_role("link", name="Upgrade cpu-whisper")).to_be_visible()

    rows.get_by_role("button", name="Pin cpu-whisper").click()
    expect(page.locator("#messages")).to_contain_text("cpu-whisper is pinned")
    expect(rows.locator(".badge.pinned")).to_be_visible()
    expect(rows.get_by_role("link", name="Upgrade cpu-whisper")).to_have_count(0)

    rows.get_by_role("button", name="Unpin cpu-whisper").click()
    expect(rows.locator(".badge.pinned")).to_have_count(0)
    expect(rows.get_by_role("link", name="Upgrade cpu-whisper")).to_be_visible()
    assert not InstalledBackend.objects.get(name="cpu-whisper").pinned
