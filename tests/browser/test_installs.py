"""Installs, cancels and deletes from the dashboard, run by the real pipeline.

The images come from the session's local registry (Debian's docker-registry), the slow
download from tests/slowserver.py; jobs run in a thread each (the ``job_worker``
fixture), so the page sees them queued, running and finished without a reload.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from playwright.sync_api import expect

from backends.models import Job
from tests.slowserver import slow_server, tarball

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def backends_folder() -> Path:
    return Path(settings.LOCALAI_BACKENDS_PATH)


@pytest.mark.registry
def test_installing_from_the_registry_shows_the_job_live_until_it_is_done(
    new_page: Any,
    users: Any,
    whisper_image: str,
    whisper_gallery: Any,
    job_worker: Any,
    watch_states: Any,
) -> None:
    whisper_gallery(whisper_image)
    page = new_page(users["alice"])
    page.goto("/?q=whisper")
    page.evaluate("window.notReloaded = true")
    seen = watch_states(page, "entry-localai-cpu-whisper")
    row = page.locator("tr#entry-localai-cpu-whisper")

    row.get_by_role("button", name="Install cpu-whisper").click()
    expect(page.locator("#messages")).to_contain_text("Install of cpu-whisper started.")
    # The finished poller (286) tells the table, which shows the entry installed.
    expect(row.locator(".state")).to_have_text("Installed")
    expect(row.get_by_role("button", name="Reinstall cpu-whisper")).to_be_visible()

    assert page.evaluate("window.notReloaded") is True
    states = seen()
    assert states[0] == "Install: queued", states
    # The row's own poll may show "completed", or the job tray's job-finished may redraw
    # the row as installed first: either way the job was followed without a reload.
    assert all(state.startswith("Install: ") for state in states), states
    assert not any("failed" in state for state in states), states
    job = Job.objects.get()
    assert (job.state, job.progress, job.target) == (
        "completed",
        100,
        "localai@cpu-whisper",
    )
    assert "whisper" in (backends_folder() / "cpu-whisper" / "run.sh").read_text()
    metadata = json.loads(
        (backends_folder() / "cpu-whisper" / "metadata.json").read_text()
    )
    assert metadata["uri"] == whisper_image


@pytest.mark.registry
def test_the_known_backends_table_shows_a_backend_installed_from_the_catalogue(
    new_page: Any,
    users: Any,
    whisper_image: str,
    whisper_gallery: Any,
    known_backends: None,
    job_worker: Any,
) -> None:
    whisper_gallery(whisper_image)
    page = new_page(users["alice"])
    page.goto("/known/?modality=asr")
    known = page.locator(
        "#known-table tr", has=page.locator("td.name", has_text=re.compile("^whisper$"))
    )
    expect(known).to_contain_text("no")

    # The meta from its own page: no htmx there, the job's page follows it instead.
    page.goto("/catalogue/localai/whisper/")
    expect(page.locator(".card").first).to_contain_text("Resolves to cpu-whisper")
    page.get_by_role("button", name="Install").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    expect(page.locator(".job-progress")).to_contain_text("Install: completed")
    expect(page.locator(".job-progress")).to_contain_text(
        "installed whisper as cpu-whisper"
    )

    page.get_by_role("link", name="Known").click()
    page.get_by_label("Modality").select_option("asr")
    expect(known).to_contain_text("installed")
    expect(known.locator(".badge")).to_have_text("installed")


def test_cancelling_a_running_install_stops_it_and_leaves_nothing_behind(
    new_page: Any, users: Any, whisper_gallery: Any, job_worker: Any, watch_states: Any
) -> None:
    body = tarball({"run.sh": b"#!/bin/sh\n", "big.bin": os.urandom(4 << 20)})
    with slow_server(body) as url:
        whisper_gallery(url)
        page = new_page(users["alice"])
        page.goto("/?q=cpu-whisper")
        seen = watch_states(page, "entry-localai-cpu-whisper")
        row = page.locator("tr#entry-localai-cpu-whisper")
        row.get_by_role("button", name="Install cpu-whisper").click()

        # Downloading: a bar with a value, bytes done of the total, then a cancel.
        expect(row.locator(".job-progress progress[value]")).to_be_visible()
        expect(row.locator(".job-facts")).to_contain_text("downloading")
        expect(row.locator(".job-facts")).to_contain_text("of 4.0")
        row.get_by_role("button", name="Cancel install of localai@cpu-whisper").click()
        expect(page.locator("#messages")).to_contain_text(
            "Cancelling install of localai@cpu-whisper"
        )
        expect(row.locator(".state")).to_have_text("Not installed")
        expect(
            row.get_by_role("button", name="Install cpu-whisper", exact=True)
        ).to_be_visible()

    assert "Install: running" in seen()
    # The row never shows the install failed; whether it draws "cancelled" before it is
    # redrawn as not installed depends on which of the two answers arrives first.
    assert "Install: failed" not in seen(), seen()
    job = Job.objects.get()
    assert job.state == Job.State.CANCELLED
    assert 0 < job.current_bytes < len(body)
    assert list(backends_folder().iterdir()) == []  # no staging folder left


def install_on_disk(name: str, *, alias: str = "", meta_for: str = "") -> Path:
    folder = backends_folder() / name
    folder.mkdir(parents=True)
    metadata = {"name": name, "alias": alias, "meta_backend_for": meta_for}
    if not meta_for:
        (folder / "run.sh").write_text("#!/bin/sh\n")
        (folder / "run.sh").chmod(0o755)
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_deleting_names_what_goes_and_asks_first(
    new_page: Any, users: Any, job_worker: Any
) -> None:
    build = install_on_disk("cpu-whisper", alias="whisper")
    meta = install_on_disk("whisper", meta_for="cpu-whisper")
    page = new_page(users["alice"])
    page.goto("/installed/")
    page.get_by_role("link", name="Delete whisper", exact=True).click()

    expect(page).to_have_url(re.compile(r"/installed/whisper/delete/$"))
    expect(page.get_by_role("heading", name="Delete whisper?")).to_be_visible()
    removals = page.locator(".removals li")
    expect(removals).to_have_count(2)
    expect(removals.nth(0)).to_contain_text(f"meta backend whisper: {meta}")
    expect(removals.nth(1)).to_contain_text(f"build cpu-whisper: {build}")

    # Keeping it changes nothing.
    page.get_by_role("link", name="Keep it").click()
    expect(page).to_have_url(re.compile(r"/installed/$"))
    assert meta.exists() and build.exists()

    page.get_by_role("link", name="Delete whisper", exact=True).click()
    page.get_by_role("button", name="Delete whisper").click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    expect(page.locator(".job-progress")).to_contain_text("Delete: completed")
    expect(page.locator(".job-progress")).to_contain_text(
        "deleted whisper, cpu-whisper"
    )
    assert not meta.exists() and not build.exists()
    page.get_by_role("link", name="Installed").click()
    expect(page.locator("#installed-rows")).to_contain_text("Nothing is installed yet")
