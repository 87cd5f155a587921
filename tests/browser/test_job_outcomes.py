"""A job's outcome reaches the page that started it, without a reload: a failure stays
on its row and in the notification area until retried, a retry takes the row over, and
a job page fills in its finish time. Jobs run in threads (the ``job_worker`` fixture)."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from playwright.sync_api import expect

from backends.models import GalleryBackend, Job
from backends.services import jobs, pipeline
from tests.slowserver import slow_server, tarball

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Nothing listens on the discard port of the loopback: the download fails at once.
UNREACHABLE = "http://127.0.0.1:9/backend.tar.gz"


def test_a_failed_install_stays_on_its_row_and_in_the_tray_until_retried(
    new_page: Any, users: Any, whisper_gallery: Any, job_worker: Any
) -> None:
    whisper_gallery(UNREACHABLE)
    page = new_page(users["alice"])
    page.goto("/?q=cpu-whisper")
    page.evaluate("window.notReloaded = true")
    row = page.locator("tr#entry-localai-cpu-whisper")

    row.get_by_role("button", name="Install cpu-whisper").click()

    # The row keeps the failure: badge, error, Retry, and Install still offered.
    expect(row.locator(".job-progress .badge")).to_have_text("Install: failed")
    expect(row.locator(".job-progress .error")).to_be_visible()
    expect(
        row.get_by_role("button", name="Install cpu-whisper", exact=True)
    ).to_be_visible()
    tray = page.locator("#job-tray")
    expect(tray.locator(".tray-job.failed")).to_contain_text(
        "Install of localai@cpu-whisper"
    )
    assert page.evaluate("window.notReloaded") is True

    # Every page shows it.
    page.get_by_role("link", name="Known").click()
    expect(page.locator("#job-tray .tray-job.failed")).to_contain_text(
        "Install of localai@cpu-whisper"
    )

    # Retry from the row once the source answers: the new job takes the row over.
    with slow_server(tarball({"run.sh": b"#!/bin/sh\necho ok\n"})) as url:
        GalleryBackend.objects.filter(name="cpu-whisper").update(uri=url)
        page.goto("/?q=cpu-whisper")
        page.evaluate("window.notReloaded = true")
        row.get_by_role("button", name="Retry install of localai@cpu-whisper").click()
        expect(row.locator(".state")).to_have_text("Installed")
    expect(row.get_by_role("button", name="Reinstall cpu-whisper")).to_be_visible()
    expect(row.locator(".job-progress")).to_have_count(0)
    expect(page.locator("#job-tray .tray-job")).to_have_count(0)
    assert page.evaluate("window.notReloaded") is True
    assert [job.state for job in Job.objects.order_by("created_at")] == [
        "failed",
        "completed",
    ]


def test_a_dismissed_failure_leaves_the_tray(
    new_page: Any, users: Any, whisper_gallery: Any, job_worker: Any
) -> None:
    whisper_gallery(UNREACHABLE)
    page = new_page(users["alice"])
    page.goto("/?q=cpu-whisper")
    page.locator("tr#entry-localai-cpu-whisper").get_by_role(
        "button", name="Install cpu-whisper"
    ).click()
    tray = page.locator("#job-tray")
    expect(tray.locator(".tray-job.failed")).to_have_count(1)

    tray.get_by_role("button", name=re.compile("^Dismiss the failed install")).click()

    expect(tray.locator(".tray-job")).to_have_count(0)
    expect(page.locator("tr#entry-localai-cpu-whisper .job-progress")).to_have_count(0)


def test_a_job_page_fills_in_its_finish_time_when_the_job_ends(
    new_page: Any, users: Any, whisper_gallery: Any, job_worker: Any
) -> None:
    body = tarball({"run.sh": b"#!/bin/sh\necho ok\n", "m.bin": os.urandom(2 << 20)})
    with slow_server(body) as url:
        whisper_gallery(url)
        page = new_page(users["alice"])
        page.goto("/catalogue/localai/cpu-whisper/")
        page.get_by_role("button", name="Install").click()
        expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
        page.evaluate("window.notReloaded = true")
        facts = page.locator("#job-facts")
        finished = facts.locator("dt:text-is('Finished') + dd")
        expect(finished).to_have_text("—")  # still downloading
        expect(page.locator(".job-progress")).to_contain_text("Install: completed")
    expect(finished).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))
    expect(facts.locator("dt:text-is('Started') + dd")).not_to_have_text("—")
    assert page.evaluate("window.notReloaded") is True


def test_reinstalling_a_backend_from_a_uri_redraws_its_row_when_done(
    new_page: Any, users: Any, job_worker: Any
) -> None:
    body = tarball({"run.sh": b"#!/bin/sh\necho ok\n", "m.bin": os.urandom(2 << 20)})
    with slow_server(body) as url:
        first = jobs.install_external(f"{url}?token=s3cr3t", name="custom", queue=False)
        pipeline.run_job(str(first.pk))
        page = new_page(users["alice"])
        page.goto("/installed/")
        row = page.locator("tr#installed-custom")

        row.get_by_role("button", name="Reinstall custom").click()
        page.evaluate("window.notReloaded = true")
        expect(row.locator(".job-progress .badge")).to_have_text(
            re.compile("Install: (queued|running)")
        )
        expect(row.get_by_role("button", name="Reinstall custom")).to_be_visible()
    expect(row.locator(".job-progress")).to_have_count(0)
    assert page.evaluate("window.notReloaded") is True
    assert Job.objects.latest("created_at").state == "completed"
