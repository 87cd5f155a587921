"""Each domain rule answers the same through the API and the dashboard.

These pin the places where the two used to carry their own copies and disagree:
draining the local node, new work for a node that takes none, what a node can run, and
a dead agent's jobs seen by a script that only polls the API.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

from django.test import override_settings
from django.utils import timezone
from huey.api import PeriodicTask

from backends import tasks
from backends.models import ApiToken, AuditEvent, Gallery, Job, Node
from tests.base import REAL_GALLERY, BaseTestCase


def make_agent(name: str = "gpu-node", **fields: object) -> Node:
    defaults: dict[str, object] = {
        "capability": "nvidia-cuda-12",
        "last_heartbeat": timezone.now(),
    }
    return Node.objects.create(name=name, **(defaults | fields))


class NodeRulesTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync(force=True)
        self.client.force_login(self.alice)

    def test_the_local_node_is_never_drained_by_the_api_or_the_dashboard(self) -> None:
        local = Node.objects.local()
        api = self.api_post(f"/api/nodes/{local.pk}/drain")
        self.assertEqual(api.status_code, 409)
        self.assertIn("never drained", api.json()["error"]["message"])
        page = self.client.post(f"/nodes/{local.pk}/drain/", follow=True)
        self.assertContains(page, "never drained")
        local.refresh_from_db()
        self.assertEqual(local.status, Node.Status.ONLINE)

    def test_the_admin_drains_and_resumes_as_the_api_and_the_dashboard_do_audited(
        self,
    ) -> None:
        local, agent = Node.objects.local(), make_agent()
        api = self.api_post(f"/api/nodes/{local.pk}/drain").json()["error"]["message"]
        page = self.client.post(
            "/admin/backends/node/",
            {"action": "drain", "_selected_action": [local.pk, agent.pk]},
            follow=True,
        )
        self.assertContains(page, api)
        agent.refresh_from_db()
        self.assertEqual(agent.status, Node.Status.DRAINING)
        self.client.post(
            "/admin/backends/node/",
            {"action": "resume", "_selected_action": [agent.pk]},
        )
        agent.refresh_from_db()
        self.assertEqual(agent.status, Node.Status.ONLINE)
        recorded = AuditEvent.objects.filter(channel="admin").order_by("id")
        self.assertEqual(
            [(e.action, e.node_name, e.outcome, e.username) for e in recorded],
            [
                ("node_drain", local.name, "refused", "alice"),
                ("node_drain", "gpu-node", "done", "alice"),
                ("node_resume", "gpu-node", "done", "alice"),
            ],
        )
        self.assertEqual(recorded[0].reason, api)

    @override_settings(DISTRIBUTED=True)
    def test_a_draining_agent_gets_no_install_from_the_api_or_the_dashboard(
        self,
    ) -> None:
        agent = make_agent()
        self.assertEqual(self.api_post(f"/api/nodes/{agent.pk}/drain").status_code, 200)
        api = self.api_post(
            f"/api/nodes/{agent.pk}/backends/install", {"backend": "llama-cpp"}
        )
        self.assertEqual(api.status_code, 409)
        self.assertEqual(api.json()["code"], "node_takes_no_work")
        page = self.client.post(
            f"/nodes/{agent.pk}/install/", {"backend": "llama-cpp"}, follow=True
        )
        self.assertContains(page, "gpu-node is draining: it takes no new work")
        self.assertFalse(Job.objects.exists())

    def test_an_agent_gets_no_job_while_distributed_mode_is_off(self) -> None:
        agent = make_agent()
        api = self.api_post(
            f"/api/nodes/{agent.pk}/backends/install", {"backend": "llama-cpp"}
        )
        self.assertEqual(api.status_code, 409)
        self.assertIn("distributed mode is off", api.json()["error"]["message"])
        page = self.client.post(
            f"/nodes/{agent.pk}/install/", {"backend": "llama-cpp"}, follow=True
        )
        self.assertContains(page, "distributed mode is off")
        self.assertFalse(Job.objects.exists())

    @override_settings(DISTRIBUTED=True)
    def test_a_build_an_agent_cannot_run_is_refused_by_the_api_and_the_dashboard(
        self,
    ) -> None:
        agent = make_agent(name="cpu-node", capability="default")
        api = self.api_post(
            f"/api/nodes/{agent.pk}/backends/install",
            {"backend": "cuda12-llama-cpp"},
        )
        self.assertEqual(api.status_code, 409)
        self.assertEqual(api.json()["code"], "not_runnable_here")
        self.assertIn("needs an NVIDIA GPU", api.json()["error"]["message"])
        page = self.client.post(
            f"/nodes/{agent.pk}/install/", {"backend": "cuda12-llama-cpp"}, follow=True
        )
        self.assertContains(page, "cuda12-llama-cpp does not run on cpu-node")
        self.assertFalse(Job.objects.exists())


@override_settings(DISTRIBUTED=True, NODE_OFFLINE_SECONDS=30)
class OfflineSweepTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.agent = make_agent(last_heartbeat=timezone.now() - timedelta(minutes=5))
        self.parent = Job.objects.create(
            kind="install", target="llama-cpp", dedup_key="llama-cpp", node=None
        )
        self.part = Job.objects.create(
            kind="install",
            target="llama-cpp",
            dedup_key="llama-cpp",
            node=self.agent,
            parent=self.parent,
            state=Job.State.RUNNING,
        )

    def test_the_sweep_runs_every_minute_in_the_worker(self) -> None:
        for minute in (0, 1, 17, 59):
            when = datetime(2026, 12, 2, 10, minute)
            task = tasks.sweep_offline_nodes.task_class()
            assert isinstance(task, PeriodicTask)
            self.assertTrue(task.validate_datetime(when))

    def test_a_script_polling_the_api_sees_a_dead_agents_job_fail_after_the_sweep(
        self,
    ) -> None:
        before = self.api_get(f"/backends/jobs/{self.parent.pk}").json()
        self.assertEqual(before["state"], "queued")
        self.assertEqual(
            self.api_get(f"/api/nodes/{self.agent.pk}").json()["status"], "offline"
        )
        self.assertEqual(tasks.sweep_offline_nodes.call_local(), ["gpu-node"])
        after = self.api_get(f"/backends/jobs/{self.parent.pk}").json()
        self.assertEqual(after["state"], "failed")
        self.assertTrue(after["processed"])
        self.assertIn("gpu-node went offline", after["nodes"][0]["error"])

    def test_a_second_sweep_changes_nothing(self) -> None:
        tasks.sweep_offline_nodes.call_local()
        self.assertEqual(tasks.sweep_offline_nodes.call_local(), [])


class WhatRunsHereTestCase(BaseTestCase):
    """The catalogue's "runs on this hardware" and /backends/available agree, on the
    real gallery, for every kind of node."""

    def setUp(self) -> None:
        super().setUp()
        self.gallery.delete()
        Gallery.objects.create(name="localai", url=REAL_GALLERY.as_uri()).sync()
        self.client.force_login(self.bob)

    def dashboard_names(self) -> set[str]:
        names: set[str] = set()
        page = 1
        while True:
            r = self.client.get(f"/?development=on&sort=name&page={page}")
            body = r.content.decode()
            names |= set(re.findall(r'<tr id="entry-localai-([^"]+)"', body))
            pages = re.search(r"Page (\d+) of (\d+)", body)
            if not pages or pages.group(1) == pages.group(2):
                return names
            page += 1

    def test_the_dashboard_and_the_api_list_the_same_runnable_entries(self) -> None:
        for capability in ("default", "nvidia-cuda-12", "amd", "metal"):
            with (
                self.subTest(capability=capability),
                self.settings(LOCALAI_FORCE_META_BACKEND_CAPABILITY=capability),
            ):
                api = {
                    row["name"] for row in self.api_get("/backends/available").json()
                }
                self.assertGreater(len(api), 50)
                self.assertEqual(self.dashboard_names(), api)


class PermissionRuleTestCase(BaseTestCase):
    """One permission check for pages, routes and the checks that depend on what is
    asked: whichever refuses a change, the refusal is audited alike."""

    def denials(self) -> list[tuple[str, str, str]]:
        return [
            (e.channel, e.target, e.reason)
            for e in AuditEvent.objects.filter(action="denied").order_by("id")
        ]

    def test_an_install_from_a_host_path_is_refused_and_recorded_by_the_api_and_the_dashboard(
        self,
    ) -> None:
        carol_token = ApiToken.objects.create_token(self.carol, "ci")[1]
        api = self.client.post(
            "/api/backends/install-external",
            {"uri": "/srv/builds/cpu-bar"},
            content_type="application/json",
            headers={"Authorization": f"Bearer {carol_token}"},
        )
        self.assertEqual(api.status_code, 403)
        self.client.force_login(self.carol)
        page = self.client.post(
            "/installed/from-uri/", {"uri": "/srv/builds/cpu-bar", "name": "cpu-bar"}
        )
        self.assertContains(page, "backends.install_from_path")
        refusal = "permission backends.install_from_path required (admin role or above)"
        self.assertEqual(
            self.denials(),
            [
                ("api", "POST /api/backends/install-external", refusal),
                ("dashboard", "POST /installed/from-uri/", refusal),
            ],
        )
        self.assertFalse(Job.objects.exists())

    def test_a_retry_or_reinstall_needing_more_than_the_button_is_refused_and_recorded(
        self,
    ) -> None:
        deleted = Job.objects.create(
            kind=Job.Kind.DELETE, target="cpu-whisper", state=Job.State.FAILED
        )
        folder = self.install_on_disk("cpu-bar")
        (folder / "metadata.json").write_text(
            json.dumps({"name": "cpu-bar", "uri": "/srv/builds/cpu-bar"})
        )
        self.client.force_login(self.carol)
        retry = self.client.post(f"/jobs/{deleted.pk}/retry/")
        reinstall = self.client.post("/installed/cpu-bar/reinstall/")
        self.assertEqual((retry.status_code, reinstall.status_code), (403, 403))
        self.assertEqual(
            self.denials(),
            [
                (
                    "dashboard",
                    f"POST /jobs/{deleted.pk}/retry/",
                    "permission backends.delete_backend required (admin role or above)",
                ),
                (
                    "dashboard",
                    "POST /installed/cpu-bar/reinstall/",
                    "permission backends.install_from_path required (admin role or "
                    "above)",
                ),
            ],
        )
        self.assertEqual(Job.objects.count(), 1)
