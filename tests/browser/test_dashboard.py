"""The dashboard in a real browser: htmx swaps, pushed URLs, live progress, the CSP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import Request, expect

from backends.models import Gallery, Job, KnownBackend, Node

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]


def install_on_disk(name: str, *, alias: str = "") -> None:
    folder = Path(settings.LOCALAI_BACKENDS_PATH) / name
    folder.mkdir(parents=True)
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    alias_json = f', "alias": "{alias}"' if alias else ""
    (folder / "metadata.json").write_text(f'{{"name": "{name}"{alias_json}}}')


def test_anonymous_visitors_are_sent_to_log_in(new_page: Any) -> None:
    page = new_page()
    page.goto("/jobs/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/jobs/$"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()


def test_logging_in_leads_to_the_page_asked_for(new_page: Any, users: Any) -> None:
    page = new_page()
    page.goto("/known/")
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/known/$"))
    expect(page.get_by_role("heading", name="Known backends")).to_be_visible()
    expect(page.locator(".who")).to_contain_text("bob")


def test_searching_and_filtering_the_real_catalogue(
    new_page: Any, users: Any, real_gallery: Gallery
) -> None:
    page = new_page(users["bob"])
    page.goto("/")
    count = page.locator("#catalogue-rows .count")
    # The default view: what runs here, development builds and other hardware hidden.
    expect(count).to_have_text(re.compile(r"^\d+ of 1028 backends"))
    expect(count).not_to_have_text(re.compile(r"^1028 of"))

    # Typing searches server-side and pushes the query into the address bar.
    page.get_by_label("Search").fill("whisper")
    expect(page).to_have_url(re.compile(r"\?q=whisper"))
    expect(page.locator("tr#entry-localai-faster-whisper")).to_be_visible()
    expect(page.locator("#catalogue-rows")).not_to_contain_text("Not for this node")
    searched = count.inner_text()

    # Filters combine; each change is a new URL.
    page.get_by_label("Other hardware").check()
    expect(page).to_have_url(re.compile(r"other_hardware=on"))
    expect(page.locator("#catalogue-rows")).to_contain_text("Not for this node")

    # The back button restores the previous result.
    page.go_back()
    expect(page).not_to_have_url(re.compile(r"other_hardware"))
    expect(count).to_have_text(searched)

    # Tag filter and pagination from a fresh, shareable URL.
    page.goto("/?tag=llm&sort=name")
    expect(page.get_by_label("Modality / tag")).to_have_value("llm")
    expect(page.locator("#catalogue-rows")).to_contain_text("llama-cpp")
    page.goto("/")
    page.get_by_role("link", name="Next").click()
    expect(page).to_have_url(re.compile(r"page=2"))
    expect(count).to_contain_text("page 2 of")


def test_a_meta_row_shows_the_build_it_resolves_to(
    new_page: Any, users: Any, real_gallery: Gallery
) -> None:
    page = new_page(users["bob"])
    page.goto("/?q=llama-cpp&sort=name")
    row = page.locator("tr#entry-localai-llama-cpp")
    expect(row).to_contain_text("uses cpu-llama-cpp")
    expect(row.locator(".why")).to_contain_text("chosen for")


def test_a_running_job_updates_live_and_stops_polling_when_done(
    new_page: Any, users: Any
) -> None:
    job = Job.objects.create(
        kind=Job.Kind.INSTALL,
        target="cpu-whisper",
        dedup_key="cpu-whisper",
        node=Node.objects.local(),
        state=Job.State.RUNNING,
        progress=10,
        total_bytes=100 * 1024 * 1024,
        current_bytes=10 * 1024 * 1024,
        bytes_per_second=10 * 1024 * 1024,
        phase="downloading",
    )
    page = new_page(users["bob"])
    polls: list[str] = []

    def record_poll(request: Request) -> None:
        if f"/jobs/{job.pk}/" in request.url:
            polls.append(request.url)

    page.on("request", record_poll)
    page.goto("/jobs/")
    card = page.locator(f"#job-{job.pk}")
    expect(card.locator("progress")).to_have_attribute("value", "10.0")
    expect(card).to_contain_text("9s left")

    Job.objects.filter(pk=job.pk).update(progress=60, current_bytes=60 * 1024 * 1024)
    expect(card.locator("progress")).to_have_attribute("value", "60.0")
    expect(card).to_contain_text("60.0 MiB of 100.0 MiB")

    Job.objects.filter(pk=job.pk).update(
        state=Job.State.COMPLETED, progress=100, finished_at=timezone.now()
    )
    expect(card).to_contain_text("Install: completed")
    expect(card.locator("progress")).to_have_count(0)
    # 286 ended the poller: no request for the job goes out any more.
    seen = len(polls)
    page.wait_for_timeout(2500)
    assert len(polls) == seen


def test_the_known_backends_table_filters_and_refreshes_itself(
    new_page: Any, users: Any, known_backends: None
) -> None:
    page = new_page(users["bob"])
    page.goto("/known/")
    table = page.locator("#known-table")
    expect(table.locator("tbody tr")).to_have_count(KnownBackend.objects.count())

    page.get_by_label("Modality").select_option("asr")
    expect(page).to_have_url(re.compile(r"\?modality=asr$"))
    for modality in table.locator("tbody td:nth-child(2)").all_inner_texts():
        assert modality == "asr"
    whisper = table.locator(
        "tr", has=page.locator("td.name", has_text=re.compile("^whisper$"))
    )
    expect(whisper).to_contain_text("no")

    # An install finishing elsewhere: the table picks it up without a reload.
    install_on_disk("whisper")
    page.evaluate("htmx.trigger(document.body, 'job-finished')")
    expect(whisper).to_contain_text("installed")


def test_the_galleries_page_lists_sources_and_syncs_on_demand(
    new_page: Any, users: Any, real_gallery: Gallery
) -> None:
    page = new_page(users["alice"])
    page.goto("/galleries/")
    row = page.locator("#gallery-localai")
    expect(row).to_contain_text("1028")
    expect(row).to_contain_text("5 problems")
    row.get_by_role("button", name="Sync localai now").click()
    expect(page.locator("#messages")).to_contain_text("Sync of localai queued")
    expect(row.get_by_role("link", name="Edit")).to_have_attribute(
        "href", f"/admin/backends/gallery/{real_gallery.pk}/change/"
    )


def test_the_hardware_page_explains_the_capability_and_re_probes(
    new_page: Any, users: Any
) -> None:
    page = new_page(users["alice"])
    page.goto("/hardware/")
    node = Node.objects.local()
    expect(page.locator(".capability code.big")).to_have_text(node.capability)
    expect(page.locator(".capability")).to_contain_text(node.capability_explanation)
    page.get_by_role("button", name="Re-probe").click()
    expect(page.locator("#messages")).to_contain_text("Hardware probed again")


def test_non_staff_users_see_no_buttons_that_change_anything(
    new_page: Any, users: Any, real_gallery: Gallery
) -> None:
    install_on_disk("cpu-whisper")
    page = new_page(users["bob"])
    for url in ("/", "/installed/", "/galleries/", "/hardware/", "/jobs/"):
        page.goto(url)
        expect(page.locator("main form[method=post]")).to_have_count(0)
