"""How a running job's progress reaches its row (services/pipeline.ProgressWriter)."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from backends.core.oci import Progress
from backends.models import Job
from backends.services.pipeline import ProgressWriter
from tests.base import BaseTestCase


class ProgressWriterTestCase(BaseTestCase):
    def test_a_finished_phase_reported_again_is_written_once(self) -> None:
        job = Job.objects.create(kind=Job.Kind.INSTALL, target="foo")
        write = ProgressWriter(job)
        done = Progress("extracting", "layer 1/1 sha256:0123", 100, 100)
        with CaptureQueriesContext(connection) as queries:
            for _ in range(5):  # one report per file extracted after the last byte
                write(done)
        updates = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
        self.assertEqual(len(updates), 1)
        job.refresh_from_db()
        self.assertEqual((job.phase, job.current_bytes), ("extracting", 100))
