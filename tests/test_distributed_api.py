from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backends.models import InstalledBackend, Job, Node
from backends.services import nodes
from tests.base import PipelineTestCase
from tests.cluster import REDIS_URL

DISTRIBUTED = {
    "DISTRIBUTED": True,
    "HUEY_REDIS_URL": REDIS_URL,
    "LOCALAI_ADMIN_REGISTRATION_TOKEN": "s3cret",
}


@override_settings(**DISTRIBUTED)
class FanOutTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        now = timezone.now()
        self.gpu = Node.objects.create(
            name="gpu-node", capability="nvidia-cuda-12", last_heartbeat=now
        )
        self.cpu = Node.objects.create(
            name="cpu-node", capability="default", last_heartbeat=now
        )

    def test_a_concrete_build_is_refused_with_the_meta_alternative(self) -> None:
        r = self.api_post("/backends/apply", {"id": "cuda12-foo"})
        self.assertEqual(r.status_code, 409)
        body = r.json()
        self.assertEqual(body["code"], "concrete_backend_requires_target")
        self.assertEqual(body["meta_alternative"], "foo")
        self.assertIn("/api/nodes/{node_id}/backends/install", body["error"])
        self.assertFalse(Job.objects.exists())

    # LocalAI's concrete-build guard is bypassed with "gallery@name" (ops-api 4.6).
    def test_gallery_at_name_meets_the_same_concrete_build_guard(self) -> None:
        r = self.api_post("/backends/apply", {"id": "localai@cuda12-foo"})
        self.assertEqual(r.status_code, 409)

    def test_a_meta_fans_out_to_every_online_node(self) -> None:
        r = self.api_post("/backends/apply", {"id": "foo"})
        self.assertEqual(r.status_code, 200, r.content)
        parent = Job.objects.get(pk=r.json()["id"])
        children = {
            child.node.name: child for child in parent.children.all() if child.node
        }
        self.assertEqual(set(children), {"gpu-node", "cpu-node"})
        status = self.api_get(f"/backends/jobs/{parent.pk}").json()
        self.assertEqual(
            {n["node_name"] for n in status["nodes"]}, {"gpu-node", "cpu-node"}
        )
        self.assertEqual({n["status"] for n in status["nodes"]}, {"queued"})

    def test_an_unknown_name_is_404_as_on_a_single_node(self) -> None:
        # LocalAI lets it through and starts a job that fails on every node.
        r = self.api_post("/backends/apply", {"id": "nope"})
        self.assertEqual(r.status_code, 404)
        self.assertFalse(Job.objects.exists())

    def test_draining_and_offline_nodes_get_no_new_work(self) -> None:
        self.api_post(f"/api/nodes/{self.cpu.pk}/drain")
        Node.objects.filter(pk=self.gpu.pk).update(
            last_heartbeat=timezone.now() - timedelta(hours=1)
        )
        r = self.api_post("/backends/apply", {"id": "foo"})
        self.assertEqual(r.status_code, 409)
        self.assertIn("no online node", r.json()["error"]["message"])

    def test_cancelling_the_parent_cancels_every_child(self) -> None:
        parent_id = self.api_post("/backends/apply", {"id": "foo"}).json()["id"]
        self.assertEqual(
            self.api_post(f"/backends/jobs/{parent_id}/cancel").status_code, 200
        )
        states = set(Job.objects.values_list("state", flat=True))
        self.assertEqual(states, {"cancelled"})

    def test_a_node_going_offline_fails_only_its_child(self) -> None:
        parent = Job.objects.get(
            pk=self.api_post("/backends/apply", {"id": "foo"}).json()["id"]
        )
        gpu_child = parent.children.get(node=self.gpu)
        Job.objects.filter(pk=gpu_child.pk).update(state="completed", progress=100)
        Node.objects.filter(pk=self.cpu.pk).update(
            last_heartbeat=timezone.now() - timedelta(hours=1)
        )
        self.assertEqual(nodes.sweep_offline(), ["cpu-node"])
        cpu_child = parent.children.get(node=self.cpu)
        self.assertEqual(cpu_child.state, "failed")
        self.assertIn("cpu-node went offline", cpu_child.error)
        parent.refresh_from_db()
        self.assertEqual(parent.state, "failed")
        self.assertIn("failed on 1 of 2 node(s), 1 completed", parent.message)
        self.assertIn("cpu-node", parent.error)


@override_settings(**DISTRIBUTED)
class NodeRoutesTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.node = Node.objects.create(
            name="worker-1", capability="default", last_heartbeat=timezone.now()
        )

    def register(self, token: str = "s3cret", **body):
        return self.client.post(
            "/api/node/register",
            {"name": "worker-2", "backends_path": "/srv/backends", **body},
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )

    def test_an_agent_registers_with_the_token(self) -> None:
        r = self.register(
            hardware={"capability": "default", "os": "linux", "arch": "amd64"}
        )
        self.assertEqual(r.status_code, 201, r.content)
        self.assertEqual(r.json()["name"], "worker-2")
        self.assertEqual(r.json()["status"], "online")

    def test_a_wrong_or_missing_token_is_401(self) -> None:
        self.assertEqual(self.register(token="nope").status_code, 401)
        r = self.client.post("/api/node/register", {}, content_type="application/json")
        self.assertEqual(r.status_code, 401)
        self.assertIn("Authorization", r.json()["error"]["message"])

    def test_an_empty_configured_token_refuses_unless_allowed(self) -> None:
        with self.settings(LOCALAI_ADMIN_REGISTRATION_TOKEN=""):
            self.assertEqual(self.register(token="").status_code, 401)
            with self.settings(LOCALAI_ADMIN_ALLOW_EMPTY_TOKEN=True):
                self.assertEqual(self.register(token="anything").status_code, 201)

    def test_a_bad_registration_is_400(self) -> None:
        self.assertEqual(self.register(name="../x").status_code, 400)

    def test_nodes_are_listed_and_unknown_ones_are_404(self) -> None:
        names = [n["name"] for n in self.api_get("/api/nodes").json()]
        self.assertIn("worker-1", names)
        self.assertEqual(self.api_get("/api/nodes/999").status_code, 404)
        self.assertEqual(self.api_get("/api/nodes/worker-1").json()["name"], "worker-1")

    def test_install_on_a_node_answers_202_with_a_job(self) -> None:
        r = self.api_post(
            f"/api/nodes/{self.node.pk}/backends/install", {"backend": "cpu-bar"}
        )
        self.assertEqual(r.status_code, 202)
        self.assertEqual(r.json()["message"], "backend installation started")
        self.assertEqual(Job.objects.get(pk=r.json()["jobID"]).node, self.node)

    def test_a_bad_node_install_body_is_400(self) -> None:
        r = self.api_post(f"/api/nodes/{self.node.pk}/backends/install", {})
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["message"], "backend name or uri required")
        r = self.api_post(f"/api/nodes/{self.node.pk}/backends/upgrade", {})
        self.assertEqual(r.status_code, 400)

    def test_upgrade_and_delete_need_the_backend_on_that_node(self) -> None:
        r = self.api_post(
            f"/api/nodes/{self.node.pk}/backends/upgrade", {"backend": "cpu-bar"}
        )
        self.assertEqual(r.status_code, 404)
        InstalledBackend.objects.create(node=self.node, name="cpu-bar")
        r = self.api_post(
            f"/api/nodes/{self.node.pk}/backends/delete", {"backend": "cpu-bar"}
        )
        self.assertEqual(r.status_code, 202)

    def test_drain_and_resume(self) -> None:
        self.assertEqual(
            self.api_post(f"/api/nodes/{self.node.pk}/drain").json()["status"],
            "draining",
        )
        r = self.api_post(
            f"/api/nodes/{self.node.pk}/backends/install", {"backend": "cpu-bar"}
        )
        self.assertEqual(r.status_code, 409)
        self.assertEqual(
            self.api_post(f"/api/nodes/{self.node.pk}/resume").json()["status"],
            "online",
        )


class DriftTestCase(PipelineTestCase):
    def test_nodes_differing_from_the_majority_are_reported(self) -> None:
        for i, version in enumerate(("2.0.0", "2.0.0", "1.0.0"), start=1):
            node = Node.objects.create(name=f"worker-{i}")
            InstalledBackend.objects.create(node=node, name="vllm", version=version)
        info = self.api_get("/backends/upgrades").json()["vllm"]
        self.assertEqual(info["installed_version"], "2.0.0")
        self.assertEqual([d["node_name"] for d in info["node_drift"]], ["worker-3"])

    def test_unanimous_nodes_report_nothing(self) -> None:
        for i in (1, 2):
            node = Node.objects.create(name=f"worker-{i}")
            InstalledBackend.objects.create(node=node, name="vllm", version="2.0.0")
        self.assertEqual(self.api_get("/backends/upgrades").json(), {})


@override_settings(**DISTRIBUTED, NODE_OFFLINE_SECONDS=30)
class FleetCostTestCase(PipelineTestCase):
    """What the controller spends on a node event does not grow with the fleet."""

    def part(self, parent: Job, name: str, heard: datetime, state: str) -> Job:
        """A node last heard at ``heard``, and its part of ``parent``."""
        return Job.objects.create(
            kind="install",
            target="foo",
            dedup_key="foo",
            node=Node.objects.create(name=name, last_heartbeat=heard),
            parent=parent,
            state=state,
        )

    def sweep_queries(self, silent: int) -> int:
        """Queries of one sweep over ``silent`` dead agents, each running its part of
        one fan-out, beside as many live agents."""
        long_ago = timezone.now() - timedelta(hours=1)
        parent = Job.objects.create(kind="install", target="foo", dedup_key="foo")
        for number in range(silent):
            self.part(parent, f"dead{silent}-{number}", long_ago, Job.State.RUNNING)
            self.part(parent, f"live{silent}-{number}", timezone.now(), "running")
        with CaptureQueriesContext(connection) as queries:
            swept = nodes.sweep_offline()
        self.assertEqual(len(swept), silent)
        self.assertEqual(parent.children.filter(state=Job.State.FAILED).count(), silent)
        return len(queries)

    def test_a_sweep_costs_as_many_queries_for_50_dead_agents_as_for_5(self) -> None:
        self.assertEqual(self.sweep_queries(50), self.sweep_queries(5))

    def test_a_sweep_with_no_silent_agent_is_one_query(self) -> None:
        for number in range(50):
            Node.objects.create(name=f"alive-{number}", last_heartbeat=timezone.now())
        with CaptureQueriesContext(connection) as queries:
            self.assertEqual(nodes.sweep_offline(), [])
        self.assertEqual(len(queries), 1)

    def test_a_part_ending_while_others_run_costs_one_query_not_a_read_of_all(
        self,
    ) -> None:
        parent = Job.objects.create(kind="install", target="foo", dedup_key="foo")
        for number in range(50):
            state = Job.State.COMPLETED if number else Job.State.RUNNING
            self.part(parent, f"n-{number}", timezone.now(), state)
        with self.assertNumQueries(1):
            Job.objects.settle_parent(parent.pk)
        parent.refresh_from_db()
        self.assertEqual(parent.state, Job.State.QUEUED)
