from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.test import TransactionTestCase

from backends.models import Gallery, Job
from backends.services import jobs, pipeline
from tests.base import make_build
from tests.slowserver import slow_server, tarball


class CancelRunningTestCase(TransactionTestCase):
    def setUp(self) -> None:
        User.objects.create_user("alice", is_staff=True, is_superuser=True)
        self.backends = Path(settings.LOCALAI_BACKENDS_PATH)
        self.body = tarball(
            {"run.sh": b"#!/bin/sh\necho new\n", "big.bin": os.urandom(1 << 20)}
        )

    def start(self, url: str) -> Job:
        gallery = Gallery.objects.create(name="localai", url="file:///dev/null")
        gallery.entries.create(name="cpu-slow", uri=url)
        return Job.objects.open("install", "cpu-slow", force=True)[0]

    def run_in_thread(self, job: Job) -> threading.Thread:
        thread = threading.Thread(target=pipeline.run_job, args=(str(job.pk),))
        thread.start()
        return thread

    def wait_for(self, job: Job, condition, timeout: float = 20) -> Job:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if condition(job):
                return job
            time.sleep(0.05)
        self.fail(f"job never reached the condition: {job.state} {job.message}")

    # LocalAI ends a cancelled running op as failed in memory (ops-api 1.5).
    def test_a_cancelled_download_ends_cancelled_and_keeps_the_previous_install(
        self,
    ) -> None:
        make_build(self.backends / "cpu-slow", "old")
        with slow_server(self.body) as url:
            job = self.start(url)
            thread = self.run_in_thread(job)
            self.wait_for(job, lambda j: j.current_bytes > 0)
            self.assertTrue(jobs.cancel(job))
            thread.join(20)
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.CANCELLED)
        self.assertEqual(job.error, "")
        self.assertIn("old", (self.backends / "cpu-slow" / "run.sh").read_text())
        self.assertEqual(sorted(p.name for p in self.backends.iterdir()), ["cpu-slow"])

    def test_progress_is_written_while_downloading(self) -> None:
        with slow_server(self.body) as url:
            job = self.start(url)
            thread = self.run_in_thread(job)
            seen = self.wait_for(job, lambda j: 0 < j.progress < 100)
            self.assertEqual(seen.state, Job.State.RUNNING)
            self.assertEqual(seen.phase, "downloading")
            self.assertEqual(seen.total_bytes, len(self.body))
            thread.join(30)
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.COMPLETED, job.error)
        self.assertIn("new", (self.backends / "cpu-slow" / "run.sh").read_text())
