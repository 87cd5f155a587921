"""A job's outcome reaches the page that started it: a failure stays on its row (badge,
error, Retry) and in the notification area of every page; rows and job pages redraw
when a job starts or ends, and a retried job takes its old row's place."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from django.utils import timezone

from backends.models import Job, Node
from tests.base import BaseTestCase, queued_tasks

HTMX = {"HX-Request": "true"}


def make_job(target: str = "cpu-whisper", **fields: object) -> Job:
    fields.setdefault("kind", Job.Kind.INSTALL)
    fields.setdefault("dedup_key", target.rpartition("@")[2].lower())
    if fields.get("state") in (Job.State.FAILED, Job.State.COMPLETED):
        fields.setdefault("finished_at", timezone.now())
    return Job.objects.create(target=target, node=Node.objects.local(), **fields)


def failed(target: str = "cpu-whisper", **fields: object) -> Job:
    return make_job(
        target,
        state=Job.State.FAILED,
        error="registry answered 503",
        message="error: registry answered 503",
        **fields,
    )


def triggers(response: object) -> dict[str, object]:
    header = response.headers.get("HX-Trigger", "{}")  # type: ignore[attr-defined]
    decoded: dict[str, object] = json.loads(header)
    return decoded


class FailureOnRowTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.client.force_login(self.carol)

    def test_a_failed_install_stays_on_its_catalogue_row_with_retry_and_install(
        self,
    ) -> None:
        job = failed("localai@cpu-whisper")

        r = self.client.get("/?q=cpu-whisper", headers=HTMX)

        self.assertContains(r, "registry answered 503")
        self.assertContains(r, f'hx-post="/jobs/{job.pk}/retry/"')
        self.assertContains(r, 'aria-label="Install cpu-whisper"')

    def test_a_failed_reinstall_stays_on_its_installed_row_with_its_buttons(
        self,
    ) -> None:
        self.install_on_disk("cpu-whisper", alias="whisper")
        job = failed(force=True)

        r = self.client.get("/installed/", headers=HTMX)

        self.assertContains(r, '<span class="badge failed">Install: failed</span>')
        self.assertContains(r, f'hx-post="/jobs/{job.pk}/retry/"')
        self.assertContains(r, 'aria-label="Reinstall cpu-whisper"')

    def test_a_failure_followed_by_a_success_is_no_longer_shown(self) -> None:
        self.install_on_disk("cpu-whisper")
        failed(created_at=timezone.now() - timedelta(minutes=5))
        make_job(state=Job.State.COMPLETED)

        r = self.client.get("/installed/", headers=HTMX)

        self.assertNotContains(r, "registry answered 503")

    def test_a_failure_older_than_an_hour_is_not_shown(self) -> None:
        self.install_on_disk("cpu-whisper")
        failed(finished_at=timezone.now() - timedelta(hours=2))

        self.assertNotContains(self.client.get("/installed/"), "registry answered 503")

    def test_a_dismissed_failure_leaves_the_rows_and_the_tray(self) -> None:
        self.install_on_disk("cpu-whisper")
        job = failed()

        r = self.client.post(f"/jobs/{job.pk}/dismiss/", headers=HTMX)

        self.assertEqual(r.status_code, 204)
        self.assertIn("jobs-changed", triggers(r))
        self.assertNotContains(self.client.get("/installed/"), "registry answered 503")
        self.assertTrue(Job.objects.filter(pk=job.pk).exists())  # history keeps it


class TrayTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)

    def test_every_page_shows_active_jobs_and_recent_failures(self) -> None:
        make_job("cpu-llama-cpp", state=Job.State.RUNNING, progress=40)
        failed()

        r = self.client.get("/known/")

        self.assertContains(r, 'id="job-tray"')
        self.assertContains(r, "Install of cpu-llama-cpp")
        self.assertContains(r, "40%")
        self.assertContains(r, "registry answered 503")
        self.assertContains(r, ">Dismiss</button>")

    def test_it_polls_while_a_job_is_active(self) -> None:
        job = make_job(state=Job.State.QUEUED)

        r = self.client.get("/jobs/tray/", headers=HTMX)

        self.assertEqual(r.status_code, 200)
        self.assertContains(r, 'hx-trigger="every 2s, jobs-changed from:body"')
        self.assertContains(r, f'"watching": "{job.pk}"')

    def test_it_stops_polling_when_nothing_is_active(self) -> None:
        failed()

        r = self.client.get("/jobs/tray/", headers=HTMX)

        self.assertEqual(r.status_code, 286)
        self.assertContains(r, 'hx-trigger="jobs-changed from:body"', status_code=286)

    def test_it_tells_the_page_when_a_job_it_watched_ended(self) -> None:
        job = make_job(state=Job.State.COMPLETED)

        r = self.client.get(f"/jobs/tray/?watching={job.pk}", headers=HTMX)

        self.assertEqual(triggers(r)["job-finished"], {"ids": [str(job.pk)]})

    def test_a_page_with_nothing_to_report_shows_an_empty_quiet_tray(self) -> None:
        r = self.client.get("/known/")

        self.assertContains(r, 'hx-trigger="jobs-changed from:body"')
        self.assertNotContains(r, "every 2s")


class RedrawTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.carol)

    def test_the_job_page_redraws_its_started_and_finished_times(self) -> None:
        job = make_job(state=Job.State.COMPLETED, started_at=timezone.now())
        page = self.client.get(f"/jobs/{job.pk}/")
        self.assertContains(page, 'hx-trigger="job-finished from:body"')

        r = self.client.get(
            f"/jobs/{job.pk}/", headers={**HTMX, "HX-Target": "job-facts"}
        )

        self.assertEqual(r.status_code, 200)
        self.assertTrue(r.content.decode().lstrip().startswith('<section class="card"'))
        assert job.finished_at is not None
        self.assertContains(r, job.finished_at.strftime("%Y-%m-%d"))
        self.assertNotIn("HX-Trigger", r.headers)  # no loop: the facts end nothing

    def test_a_retry_takes_the_old_rows_place_and_polls_the_new_job(self) -> None:
        old = failed()

        with queued_tasks():
            r = self.client.post(f"/jobs/{old.pk}/retry/", headers=HTMX)

        new = Job.objects.exclude(pk=old.pk).get()
        self.assertContains(r, f'id="job-{new.pk}"')
        self.assertContains(r, f'hx-get="/jobs/{new.pk}/"')
        self.assertNotContains(r, f'id="job-{old.pk}"')
        self.assertEqual(triggers(r)["jobs-changed"], {"id": str(new.pk)})

    def test_the_jobs_page_redraws_its_active_list_when_jobs_change(self) -> None:
        job = make_job(state=Job.State.RUNNING)

        r = self.client.get("/jobs/", headers={**HTMX, "HX-Target": "job-active"})

        body = r.content.decode()
        self.assertIn('id="job-active"', body)
        self.assertIn(f'id="job-{job.pk}"', body)
        self.assertNotIn('id="job-history"', body)

    def test_rows_redraw_when_a_job_starts_or_ends(self) -> None:
        for url in ("/", "/installed/"):
            with self.subTest(url=url):
                triggers = re.findall(
                    r'hx-trigger="([^"]*)"', self.client.get(url).text
                )
                self.assertTrue(
                    any(
                        "job-finished from:body" in t and "jobs-changed from:body" in t
                        for t in triggers
                    ),
                    triggers,
                )

    def test_an_install_from_the_catalogue_wakes_the_notification_area(self) -> None:
        self.gallery.sync()
        with queued_tasks():
            r = self.client.post(
                "/catalogue/localai/cpu-whisper/install/", headers=HTMX
            )
        job = Job.objects.get()
        self.assertEqual(triggers(r)["jobs-changed"], {"id": str(job.pk)})
