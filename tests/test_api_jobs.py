from __future__ import annotations

import uuid

from backends.models import Job
from tests.base import PipelineTestCase, queued_tasks


class JobStatusTestCase(PipelineTestCase):
    def test_it_answers_in_the_opstatus_shape(self) -> None:
        status = self.status(self.apply("cpu-bar"))
        for key in (
            "deletion",
            "file_name",
            "processed",
            "message",
            "progress",
            "phase",
            "current_bytes",
            "total_bytes",
            "file_size",
            "downloaded_size",
            "gallery_element_name",
            "cancelled",
            "cancellable",
            "nodes",
        ):
            self.assertIn(key, status)
        self.assertEqual(status["gallery_element_name"], "cpu-bar")
        self.assertFalse(status["cancellable"])

    # LocalAI answers an unknown job id with a 500 (ops-api 2.1).
    def test_an_unknown_job_is_404_json(self) -> None:
        for job_id in (str(uuid.uuid4()), "not-a-uuid"):
            r = self.api_get(f"/backends/jobs/{job_id}")
            self.assertEqual(r.status_code, 404)
            self.assertEqual(r.json()["error"]["type"], "not_found")
            self.assertIn("could not find", r.json()["error"]["message"])

    # LocalAI documents GET /backends/jobs but never routes it (ops-api 2.1).
    def test_the_list_is_newest_first_and_filterable(self) -> None:
        first = self.apply("cpu-bar").json()["id"]
        second = self.apply("cpu-foo").json()["id"]
        self.assertEqual(list(self.api_get("/backends/jobs").json()), [second, first])
        failed = self.api_get("/backends/jobs?state=failed").json()
        self.assertEqual(failed, {})
        self.assertEqual(self.api_get("/backends/jobs?state=bogus").status_code, 400)


class CancelTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(queued_tasks())

    # LocalAI's queued /backends/apply ops cannot be cancelled (ops-api 2.1, 1.6).
    def test_a_queued_job_is_cancelled_and_never_runs(self) -> None:
        job_id = self.apply("cpu-bar").json()["id"]
        self.assertTrue(self.api_get(f"/backends/jobs/{job_id}").json()["cancellable"])
        r = self.api_post(f"/backends/jobs/{job_id}/cancel")
        self.assertEqual(r.status_code, 200)
        status = self.api_get(f"/backends/jobs/{job_id}").json()
        self.assertTrue(status["cancelled"])
        self.assertTrue(status["processed"])
        from backends.services.pipeline import run_job

        self.assertEqual(run_job(job_id), "cancelled")
        self.assertFalse((self.backends / "cpu-bar").exists())

    def test_a_finished_job_cannot_be_cancelled(self) -> None:
        job_id = self.apply("cpu-bar").json()["id"]
        Job.objects.filter(pk=job_id).update(state=Job.State.COMPLETED)
        r = self.api_post(f"/backends/jobs/{job_id}/cancel")
        self.assertEqual(r.status_code, 409)

    def test_a_running_job_sees_the_cancel_request(self) -> None:
        job_id = self.apply("cpu-bar").json()["id"]
        Job.objects.filter(pk=job_id).update(state=Job.State.RUNNING)
        self.assertEqual(
            self.api_post(f"/backends/jobs/{job_id}/cancel").status_code, 200
        )
        self.assertTrue(Job.objects.get(pk=job_id).cancel_requested)

    def test_a_job_left_running_by_a_dead_worker_is_failed_on_start(self) -> None:
        from django.utils import timezone

        job_id = self.apply("cpu-bar").json()["id"]
        Job.objects.filter(pk=job_id).update(
            state=Job.State.RUNNING, started_at=timezone.now()
        )
        job = Job.objects.get(pk=job_id)
        assert job.node is not None
        self.assertEqual(Job.objects.fail_interrupted(job.node, timezone.now()), 1)
        job.refresh_from_db()
        self.assertEqual(job.state, "failed")
        self.assertIn("worker stopped", job.error)
