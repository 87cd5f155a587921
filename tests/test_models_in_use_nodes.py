"""In-use protection per node: each agent reports LocalAI's models on its host, and a
delete on that node is refused while one of them uses the backend."""

from __future__ import annotations

from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backends.core import models_usage
from backends.management.commands import agent
from backends.models import InstalledBackend, Job, Node
from tests.base import PipelineTestCase
from tests.cluster import REDIS_URL
from tests.test_models_in_use import write_model

DISTRIBUTED = {
    "DISTRIBUTED": True,
    "HUEY_REDIS_URL": REDIS_URL,
    "LOCALAI_ADMIN_REGISTRATION_TOKEN": "s3cret",
}


@override_settings(**DISTRIBUTED)
class NodeDeleteInUseTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.node = Node.objects.create(
            name="worker-1",
            capability="default",
            last_heartbeat=timezone.now(),
            localai_models=[
                {"model": "chat", "backend": "bar", "folders": ["bar", "cpu-bar"]},
                {"model": "stt", "backend": "whisper", "folders": ["whisper"]},
            ],
        )
        InstalledBackend.objects.create(node=self.node, name="cpu-bar")
        InstalledBackend.objects.create(
            node=self.node, name="bar", is_meta=True, meta_backend_for="cpu-bar"
        )
        InstalledBackend.objects.create(node=self.node, name="cpu-foo")

    def delete(self, body: dict[str, object]):
        return self.api_post(f"/api/nodes/{self.node.pk}/backends/delete", body)

    def test_deleting_a_backend_a_model_on_that_node_uses_is_refused(self) -> None:
        r = self.delete({"backend": "cpu-bar"})
        self.assertEqual(r.status_code, 409, r.content)
        body = r.json()
        self.assertEqual(body["code"], "backend_in_use")
        self.assertEqual(body["models"], ["chat"])
        self.assertIn("on worker-1", body["error"]["message"])
        self.assertFalse(Job.objects.filter(kind=Job.Kind.DELETE).exists())

    def test_deleting_a_meta_takes_its_build_so_the_builds_users_refuse_it(
        self,
    ) -> None:
        self.node.localai_models = [
            {"model": "direct", "backend": "cpu-bar", "folders": ["cpu-bar"]}
        ]
        self.node.save(update_fields=("localai_models",))
        r = self.delete({"backend": "bar"})
        self.assertEqual(r.status_code, 409, r.content)
        self.assertEqual(r.json()["models"], ["direct"])

    def test_force_deletes_a_backend_in_use_on_that_node(self) -> None:
        r = self.delete({"backend": "cpu-bar", "force": True})
        self.assertEqual(r.status_code, 202, r.content)
        job = Job.objects.get(pk=r.json()["jobID"])
        self.assertEqual((job.kind, job.node), (Job.Kind.DELETE, self.node))

    def test_a_backend_no_model_on_that_node_uses_is_deleted(self) -> None:
        self.assertEqual(self.delete({"backend": "cpu-foo"}).status_code, 202)

    def test_models_on_another_node_do_not_protect_this_one(self) -> None:
        other = Node.objects.create(name="worker-2", last_heartbeat=timezone.now())
        InstalledBackend.objects.create(node=other, name="cpu-bar")
        r = self.api_post(
            f"/api/nodes/{other.pk}/backends/delete", {"backend": "cpu-bar"}
        )
        self.assertEqual(r.status_code, 202, r.content)

    def test_a_non_boolean_force_is_400(self) -> None:
        self.assertEqual(
            self.delete({"backend": "cpu-bar", "force": "yes"}).status_code, 400
        )

    def test_the_node_card_shows_which_models_use_each_backend(self) -> None:
        self.client.force_login(self.bob)
        page = self.client.get("/nodes/")
        self.assertContains(page, "used by chat")
        self.assertContains(page, "used by stt", count=0)


@override_settings(**DISTRIBUTED)
class AgentModelsReportTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.models = self.gallery_file.parent / "models"
        self.enterContext(override_settings(LOCALAI_MODELS_PATH=self.models))
        self.node = Node.objects.create(name="worker-1", last_heartbeat=timezone.now())

    def heartbeat(self, body: dict[str, object]):
        return self.client.post(
            f"/api/node/{self.node.pk}/heartbeat",
            body,
            content_type="application/json",
            headers={"Authorization": "Bearer s3cret"},
        )

    def test_the_agents_heartbeat_carries_its_models_and_the_folders_they_use(
        self,
    ) -> None:
        self.install_on_disk("cpu-bar")
        self.install_on_disk("bar", meta_for="cpu-bar")
        write_model(self.models, "chat.yaml", "bar", name="chat")
        body = agent.heartbeat_body("default")
        self.assertEqual(
            body["models"],
            [{"model": "chat", "backend": "bar", "folders": ["bar", "cpu-bar"]}],
        )
        self.assertIn("disk", body)
        # Reading its own disk must not make the agent a local node in the shared table.
        self.assertFalse(Node.objects.filter(is_local=True).exists())

    def test_without_a_models_folder_the_agent_reports_no_models(self) -> None:
        with override_settings(LOCALAI_MODELS_PATH=None):
            self.assertEqual(agent.heartbeat_body("default")["models"], [])

    def test_a_heartbeat_replaces_the_nodes_models(self) -> None:
        models = [{"model": "chat", "backend": "bar", "folders": ["cpu-bar"]}]
        self.assertEqual(self.heartbeat({"models": models}).status_code, 200)
        self.node.refresh_from_db()
        self.assertEqual(self.node.localai_models, models)
        self.assertEqual(self.heartbeat({"models": []}).status_code, 200)
        self.node.refresh_from_db()
        self.assertEqual(self.node.localai_models, [])

    def test_a_heartbeat_does_not_read_the_nodes_reports(self) -> None:
        # Every agent, every few seconds: the last reports are written, never read.
        with CaptureQueriesContext(connection) as queries:
            self.assertEqual(self.heartbeat({}).status_code, 200)
        [read] = [q["sql"] for q in queries.captured_queries if "SELECT" in q["sql"]]
        self.assertNotIn("hardware", read)
        self.assertNotIn("localai_models", read)

    def test_a_heartbeat_without_models_keeps_the_last_report(self) -> None:
        models = [{"model": "chat", "backend": "bar"}]
        self.heartbeat({"models": models})
        self.heartbeat({})
        self.node.refresh_from_db()
        self.assertEqual(self.node.localai_models, models)

    def test_a_malformed_models_report_is_400_and_changes_nothing(self) -> None:
        bad = [{"model": "chat", "backend": "bar", "folders": ["../etc"]}]
        r = self.heartbeat({"models": bad})
        self.assertEqual(r.status_code, 400)
        self.assertIn("models", r.json()["error"]["message"])
        self.node.refresh_from_db()
        self.assertEqual(self.node.localai_models, [])

    def test_registration_carries_the_models(self) -> None:
        r = self.client.post(
            "/api/node/register",
            {"name": "worker-2", "models": [{"model": "m", "backend": "cpu-foo"}]},
            content_type="application/json",
            headers={"Authorization": "Bearer s3cret"},
        )
        self.assertEqual(r.status_code, 201, r.content)
        node = Node.objects.get(name="worker-2")
        self.assertEqual(node.localai_models, [{"model": "m", "backend": "cpu-foo"}])

    def test_a_report_past_the_heartbeats_bounds_is_cut_and_said_so(self) -> None:
        for i in range(models_usage.REPORT_MAX_MODELS + 5):
            write_model(self.models, f"m{i:04}.yaml", "cpu-foo", name=f"m{i:04}")
        with self.assertLogs("backends.services.usage", "WARNING") as logs:
            report = agent.heartbeat_body("default")["models"]
        self.assertEqual(len(report), models_usage.REPORT_MAX_MODELS)
        self.assertIn("only 500 of 505 models", logs.output[0])
        self.assertEqual(self.heartbeat({"models": report}).status_code, 200)
