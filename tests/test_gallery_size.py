"""Serving one backend costs the same whatever the size of the galleries (issue 16).

An install, its plan, a kit export, the meta offered instead of a build and the Nodes
page's install suggestions each run as many queries, reading as many rows, beside 50
other entries as beside 2,000: none of them loads every entry of a gallery that may
hold 200,000.
"""

from __future__ import annotations

import math
from unittest import mock

from django.db import connection
from django.test.utils import CaptureQueriesContext

from backends.models import GalleryBackend, InstalledBackend, Job, Node
from backends.services import catalogue, jobs, pipeline, plans
from tests.base import BaseTestCase, PipelineTestCase
from tests.gallerysize import LARGE, GallerySizeMixin


def forget_jobs() -> None:
    Job.objects.all().delete()


class InstallTestCase(GallerySizeMixin, PipelineTestCase):
    def test_starting_a_meta_install_reads_the_same_rows_in_a_larger_gallery(
        self,
    ) -> None:
        self.assert_cost_does_not_grow(
            lambda: jobs.install("foo", queue=False), forget_jobs
        )

    def test_running_a_meta_install_reads_the_same_rows_in_a_larger_gallery(
        self,
    ) -> None:
        def install() -> None:
            job = jobs.install("foo", force=True, queue=False)
            pipeline.run_job(str(job.pk))
            self.assertEqual(Job.objects.get().state, Job.State.COMPLETED)

        def forget_jobs_and_rows() -> None:
            # Each run's reconcile then inserts the rows afresh: whether a reinstall
            # updates them depends on the clock (installed in the same second or not).
            forget_jobs()
            InstalledBackend.objects.all().delete()

        # Progress is written every FLUSH_SECONDS, so a slower run writes more often:
        # only the writes that do not depend on the clock are counted.
        with mock.patch.object(pipeline, "FLUSH_SECONDS", math.inf):
            self.assert_cost_does_not_grow(install, forget_jobs_and_rows)

    def test_planning_a_meta_install_reads_the_same_rows_in_a_larger_gallery(
        self,
    ) -> None:
        def plan() -> None:
            self.assertEqual(plans.make_plan("install", "foo").build, "cpu-foo")

        self.assert_cost_does_not_grow(plan)


class OneBackendTestCase(GallerySizeMixin, BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()

    def test_the_meta_offering_a_build_is_found_reading_the_same_rows(self) -> None:
        def offering() -> None:
            self.assertEqual(catalogue.meta_offering("cuda12-llama-cpp"), "llama-cpp")

        self.assert_cost_does_not_grow(offering)

    def test_the_nodes_page_reads_the_same_rows_in_a_larger_gallery(self) -> None:
        self.client.force_login(self.alice)
        Node.objects.local().current_capability()
        self.assert_cost_does_not_grow(lambda: self.client.get("/nodes/"))

    def test_a_backend_is_looked_up_by_name_through_an_index(self) -> None:
        self.pad_to(LARGE)
        with CaptureQueriesContext(connection) as queries:
            found = GalleryBackend.objects.find("Cpu-Whisper")
        self.assertEqual(found.name if found else "", "cpu-whisper")
        [lookup] = queries.captured_queries
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # Whatever the table's size, the planner must be able to use the index.
                cursor.execute("SET LOCAL enable_seqscan = off")
                cursor.execute(f"EXPLAIN {lookup['sql']}")
            else:
                cursor.execute(f"EXPLAIN QUERY PLAN {lookup['sql']}")
            plan = " ".join(str(row) for row in cursor.fetchall())
        self.assertIn("gallerybackend_name_key", plan)
