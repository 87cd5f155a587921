from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backends import tasks
from backends.models import Job, Node
from tests import cluster
from tests.base import BaseTestCase

HTMX = {"HX-Request": "true"}


def make_job(target: str = "cpu-whisper", **fields: object) -> Job:
    fields.setdefault("kind", Job.Kind.INSTALL)
    fields.setdefault("dedup_key", target.rpartition("@")[2].lower())
    return Job.objects.create(target=target, node=Node.objects.local(), **fields)


class JobListTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)

    def test_it_requires_login(self) -> None:
        self.client.logout()
        self.assertRedirects(self.client.get("/jobs/"), "/accounts/login/?next=/jobs/")

    def test_it_shows_running_jobs_with_progress_speed_and_eta(self) -> None:
        job = make_job(
            state=Job.State.RUNNING,
            progress=25,
            phase="downloading",
            file_name="sha256:abc.tar.gz",
            current_bytes=25 * 1024 * 1024,
            total_bytes=100 * 1024 * 1024,
            bytes_per_second=5 * 1024 * 1024,
        )
        r = self.client.get("/jobs/")
        self.assertContains(r, '<progress max="100" value="25.0"', html=False)
        self.assertContains(r, "25.0\xa0MiB of 100.0\xa0MiB")
        self.assertContains(r, "5.0\xa0MiB/s")
        self.assertContains(r, "15s left")
        self.assertContains(r, "downloading")
        self.assertContains(r, "sha256:abc.tar.gz")
        self.assertContains(r, f'hx-get="/jobs/{job.pk}/" hx-trigger="every 1s"')
        self.assertContains(r, 'aria-live="polite"')

    def test_it_shows_a_queued_job_as_indeterminate(self) -> None:
        make_job(state=Job.State.QUEUED)
        r = self.client.get("/jobs/")
        self.assertContains(r, "Install: queued")
        self.assertContains(r, "<progress aria-label=", html=False)

    def test_it_keeps_finished_jobs_in_the_history_with_their_error(self) -> None:
        make_job(
            state=Job.State.FAILED, error="manifest unknown", finished_at=timezone.now()
        )
        make_job("cpu-llama-cpp", state=Job.State.COMPLETED, finished_at=timezone.now())
        r = self.client.get("/jobs/")
        self.assertContains(r, "Nothing is running.")
        self.assertContains(r, "2 finished jobs")
        self.assertContains(r, "manifest unknown")
        self.assertNotContains(r, 'hx-trigger="every 1s"')

    def test_it_filters_the_history_by_state_kind_and_backend(self) -> None:
        make_job(state=Job.State.FAILED)
        make_job("cpu-llama-cpp", state=Job.State.COMPLETED)
        make_job("cpu-llama-cpp", kind=Job.Kind.DELETE, state=Job.State.COMPLETED)
        self.assertContains(self.client.get("/jobs/?state=failed"), "1 finished job")
        self.assertContains(self.client.get("/jobs/?kind=delete"), "1 finished job")
        self.assertContains(self.client.get("/jobs/?backend=llama"), "2 finished jobs")
        self.assertContains(
            self.client.get("/jobs/?backend=llama&state=completed&kind=install"),
            "1 finished job",
        )

    def test_it_ignores_an_unknown_filter_value(self) -> None:
        make_job(state=Job.State.FAILED)
        r = self.client.get("/jobs/?state=exploded")
        self.assertContains(r, "1 finished job")

    def test_it_returns_the_history_for_htmx(self) -> None:
        make_job(state=Job.State.FAILED)
        r = self.client.get("/jobs/?state=failed", headers=HTMX)
        self.assertTemplateNotUsed(r, "base.html")
        body = r.content.decode()
        self.assertTrue(body.lstrip().startswith('<div id="job-history"'))
        self.assertIn("1 finished job", body)

    def test_it_offers_cancel_and_retry_to_staff_only(self) -> None:
        make_job(state=Job.State.RUNNING)
        make_job("cpu-llama-cpp", state=Job.State.FAILED)
        r = self.client.get("/jobs/")
        self.assertNotContains(r, ">Cancel</button>")
        self.assertNotContains(r, ">Retry</button>")
        self.client.force_login(self.alice)
        r = self.client.get("/jobs/")
        self.assertContains(r, ">Cancel</button>")
        self.assertContains(r, ">Retry</button>")


class JobDetailTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)

    def test_it_shows_the_full_page_without_htmx(self) -> None:
        job = make_job(state=Job.State.RUNNING, requested_by="alice")
        r = self.client.get(f"/jobs/{job.pk}/")
        self.assertContains(r, "Install of cpu-whisper")
        self.assertContains(r, "<dd>alice</dd>", html=True)
        self.assertEqual(r.status_code, 200)

    def test_it_returns_the_progress_fragment_while_the_job_runs(self) -> None:
        job = make_job(state=Job.State.RUNNING, progress=50)
        r = self.client.get(f"/jobs/{job.pk}/", headers=HTMX)
        self.assertEqual(r.status_code, 200)
        self.assertTemplateUsed(r, "backends/partials/_job_progress.html")
        self.assertTemplateNotUsed(r, "base.html")
        self.assertContains(r, 'hx-trigger="every 1s"')

    def test_it_stops_the_poller_with_286_once_the_job_is_over(self) -> None:
        job = make_job(state=Job.State.COMPLETED, progress=100)
        r = self.client.get(f"/jobs/{job.pk}/", headers=HTMX)
        self.assertEqual(r.status_code, 286)
        self.assertContains(r, "Install: completed", status_code=286)
        self.assertNotContains(r, "hx-trigger", status_code=286)
        self.assertIn("job-finished", r["HX-Trigger-After-Settle"])

    def test_it_answers_404_for_an_unknown_job(self) -> None:
        r = self.client.get("/jobs/00000000-0000-0000-0000-000000000000/")
        self.assertEqual(r.status_code, 404)


class JobCancelTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)

    def test_it_rejects_get(self) -> None:
        job = make_job(state=Job.State.QUEUED)
        self.assertEqual(self.client.get(f"/jobs/{job.pk}/cancel/").status_code, 405)

    def test_it_is_forbidden_to_non_staff(self) -> None:
        job = make_job(state=Job.State.QUEUED)
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(f"/jobs/{job.pk}/cancel/").status_code, 403)
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.QUEUED)

    def test_it_cancels_a_queued_job_and_redirects(self) -> None:
        job = make_job(state=Job.State.QUEUED)
        r = self.client.post(f"/jobs/{job.pk}/cancel/")
        self.assertRedirects(r, f"/jobs/{job.pk}/", fetch_redirect_response=False)
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.CANCELLED)

    def test_it_asks_a_running_job_to_stop_and_keeps_polling(self) -> None:
        job = make_job(state=Job.State.RUNNING)
        r = self.client.post(f"/jobs/{job.pk}/cancel/", headers=HTMX)
        self.assertEqual(r.status_code, 200)
        self.assertContains(r, "cancelling")
        self.assertContains(r, 'hx-trigger="every 1s"')
        self.assertContains(r, 'hx-swap-oob="true"')
        job.refresh_from_db()
        self.assertTrue(job.cancel_requested)

    def test_it_says_when_it_is_too_late(self) -> None:
        job = make_job(state=Job.State.COMPLETED)
        r = self.client.post(f"/jobs/{job.pk}/cancel/", headers=HTMX)
        self.assertEqual(r.status_code, 286)
        self.assertContains(r, "can no longer be cancelled", status_code=286)


class JobRetryTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)

    def test_it_starts_a_new_job_like_the_failed_one(self) -> None:
        job = make_job(state=Job.State.FAILED, force=True, error="boom")
        r = self.client.post(f"/jobs/{job.pk}/retry/")
        retry = Job.objects.exclude(pk=job.pk).get()
        self.assertEqual(
            (retry.kind, retry.target, retry.force), (job.kind, job.target, True)
        )
        self.assertRedirects(r, f"/jobs/{retry.pk}/", fetch_redirect_response=False)

    def test_it_swaps_in_the_new_job_for_htmx(self) -> None:
        job = make_job(state=Job.State.CANCELLED)
        r = self.client.post(f"/jobs/{job.pk}/retry/", headers=HTMX)
        retry = Job.objects.exclude(pk=job.pk).get()
        self.assertContains(r, f'id="job-{retry.pk}"')

    def test_it_refuses_a_job_that_did_not_fail(self) -> None:
        job = make_job(state=Job.State.COMPLETED)
        r = self.client.post(f"/jobs/{job.pk}/retry/", follow=True)
        self.assertContains(
            r, "Not retried: only failed or cancelled jobs can be retried"
        )
        self.assertEqual(Job.objects.count(), 1)

    def test_it_is_forbidden_to_non_staff(self) -> None:
        job = make_job(state=Job.State.FAILED)
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post(f"/jobs/{job.pk}/retry/").status_code, 403)


def make_fan_out(state: str = Job.State.RUNNING) -> tuple[Job, Job, Job]:
    """A parent job fanned out to two agents, as ``nodes.start_fan_out`` leaves it."""
    now = timezone.now()
    gpu, cpu = (
        Node.objects.create(name=name, capability=cap, last_heartbeat=now)
        for name, cap in (("gpu-node", "nvidia-cuda-12"), ("cpu-node", "default"))
    )
    parent = Job.objects.create(
        kind=Job.Kind.INSTALL,
        target="localai@foo",
        dedup_key="foo",
        state=state,
        phase="fan-out",
        message="install on 2 node(s)",
    )
    children = [
        Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="localai@foo",
            dedup_key="foo",
            node=node,
            parent=parent,
            **fields,
        )
        for node, fields in (
            (
                gpu,
                {
                    "state": Job.State.RUNNING,
                    "progress": 40,
                    "phase": "downloading",
                    "current_bytes": 40 * 1024 * 1024,
                    "total_bytes": 100 * 1024 * 1024,
                },
            ),
            (cpu, {"state": Job.State.QUEUED}),
        )
    ]
    return parent, children[0], children[1]


class FanOutJobTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)
        self.parent, self.gpu_job, self.cpu_job = make_fan_out()

    def parts(self, body: str) -> dict[str, str]:
        chunks = body.split('<li class="node-part" data-node="')[1:]
        return {chunk.split('"')[0]: chunk.split("</li>")[0] for chunk in chunks}

    def test_it_shows_one_bar_per_node_in_the_parents_card(self) -> None:
        r = self.client.get(f"/jobs/{self.parent.pk}/", headers=HTMX)
        self.assertEqual(r.status_code, 200)
        parts = self.parts(r.content.decode())
        self.assertEqual(list(parts), ["cpu-node", "gpu-node"])
        self.assertIn(
            '<span class="badge running">downloading</span>', parts["gpu-node"]
        )
        self.assertIn('<progress max="100" value="40.0"', parts["gpu-node"])
        self.assertIn("40.0 MiB of 100.0 MiB", parts["gpu-node"])
        self.assertIn('<span class="badge queued">queued</span>', parts["cpu-node"])
        self.assertIn("<progress aria-label", parts["cpu-node"])  # no value: waiting
        # The parent's own bar is the average of its parts.
        self.assertContains(
            r, 'value="20.0" aria-label="Install of localai@foo on every node"'
        )
        self.assertContains(r, 'hx-trigger="every 1s"')

    def test_the_parents_status_reads_its_parts_without_their_nodes_reports(
        self,
    ) -> None:
        # Polled every second by scripts: a node's hardware and models report (JSON,
        # large on a big host) is not part of the answer and is not read for it.
        with CaptureQueriesContext(connection) as queries:
            status = self.parent.to_opstatus()
        self.assertEqual(
            {n["node_name"] for n in status["nodes"]}, {"gpu-node", "cpu-node"}
        )
        read = " ".join(q["sql"] for q in queries.captured_queries)
        self.assertNotIn("localai_models", read)
        self.assertNotIn("hardware", read)

    def test_it_lists_the_parent_once_and_not_its_parts(self) -> None:
        r = self.client.get("/jobs/")
        body = r.content.decode()
        self.assertEqual(
            body.count(f'<a class="name" href="/jobs/{self.parent.pk}/"'), 1
        )
        self.assertNotIn(f'<a class="name" href="/jobs/{self.gpu_job.pk}/"', body)
        self.assertIn("Install on every online node", body)
        self.assertIn(f'<a class="node-name" href="/jobs/{self.gpu_job.pk}/">', body)

    def test_it_keeps_polling_until_every_node_is_done_then_stops_with_286(
        self,
    ) -> None:
        Job.objects.filter(pk=self.gpu_job.pk).update(
            state=Job.State.COMPLETED, progress=100, phase="done"
        )
        r = self.client.get(f"/jobs/{self.parent.pk}/", headers=HTMX)
        self.assertEqual(r.status_code, 200)
        Job.objects.filter(pk=self.cpu_job.pk).update(
            state=Job.State.FAILED, error="disk full", progress=30
        )
        Job.objects.settle_parent(self.parent.pk)
        r = self.client.get(f"/jobs/{self.parent.pk}/", headers=HTMX)
        self.assertEqual(r.status_code, 286)
        self.assertIn("job-finished", r["HX-Trigger-After-Settle"])
        parts = self.parts(r.content.decode())
        self.assertIn('<span class="badge completed">success</span>', parts["gpu-node"])
        self.assertIn('<progress max="100" value="100.0"', parts["gpu-node"])
        self.assertIn('<span class="badge failed">error</span>', parts["cpu-node"])
        self.assertIn('<p class="error">disk full</p>', parts["cpu-node"])
        self.assertContains(r, "failed on 1 of 2 node(s), 1 completed", status_code=286)

    @override_settings(DISTRIBUTED=True, NODE_OFFLINE_SECONDS=30)
    def test_a_poll_after_the_sweep_shows_the_silent_agents_part_failed(self) -> None:
        Node.objects.filter(name="cpu-node").update(
            last_heartbeat=timezone.now() - timedelta(minutes=5)
        )
        tasks.sweep_offline_nodes.call_local()
        r = self.client.get(f"/jobs/{self.parent.pk}/", headers=HTMX)
        parts = self.parts(r.content.decode())
        self.assertIn("cpu-node went offline", parts["cpu-node"])
        self.assertIn(
            '<span class="badge running">downloading</span>', parts["gpu-node"]
        )

    def test_a_part_links_back_to_its_parent(self) -> None:
        r = self.client.get(f"/jobs/{self.gpu_job.pk}/")
        self.assertContains(r, f'<a href="/jobs/{self.parent.pk}/">', html=False)
        self.assertContains(r, "on every node")

    def test_cancel_of_the_parent_cancels_every_part(self) -> None:
        self.client.force_login(self.alice)
        self.client.post(f"/jobs/{self.parent.pk}/cancel/")
        self.cpu_job.refresh_from_db()
        self.gpu_job.refresh_from_db()
        self.assertEqual(self.cpu_job.state, Job.State.CANCELLED)
        self.assertTrue(self.gpu_job.cancel_requested)

    # The parts' task ids are chosen on their queues (nothing is pushed: no commit).
    @override_settings(DISTRIBUTED=True, HUEY_REDIS_URL=cluster.REDIS_URL)
    def test_retry_of_a_failed_fan_out_goes_to_every_online_node_again(self) -> None:
        Job.objects.filter(parent=self.parent).update(
            state=Job.State.FAILED, error="boom"
        )
        Job.objects.settle_parent(self.parent.pk)
        self.client.force_login(self.alice)
        r = self.client.post(f"/jobs/{self.parent.pk}/retry/")
        retry = Job.objects.filter(parent=None).exclude(pk=self.parent.pk).get()
        self.assertRedirects(r, f"/jobs/{retry.pk}/", fetch_redirect_response=False)
        self.assertIsNone(retry.node)
        self.assertEqual(
            sorted(retry.children.values_list("node__name", flat=True)),
            ["cpu-node", "gpu-node"],
        )
