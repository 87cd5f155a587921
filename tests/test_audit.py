"""The audit log: every change records who asked, through what, from where, and how it
went; the Audit page and GET /api/audit read it; old events are pruned."""

from __future__ import annotations

import getpass
from datetime import timedelta

from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from backends import tasks
from backends.models import ApiToken, AuditEvent, Gallery, Job, Node
from backends.services import audit
from tests.base import BaseTestCase, queued_tasks

HTMX = {"HX-Request": "true"}


def last_event() -> AuditEvent:
    event = AuditEvent.objects.order_by("-id").first()
    assert event is not None, "no audit event recorded"
    return event


def failed_job(target: str = "cpu-whisper") -> Job:
    return Job.objects.create(
        kind=Job.Kind.INSTALL,
        target=target,
        dedup_key=target,
        node=Node.objects.local(),
        state=Job.State.FAILED,
    )


class MutationsAreAuditedTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(queued_tasks())
        self.gallery.sync()

    def test_an_api_install_records_the_token_name_user_ip_and_job(self) -> None:
        r = self.api_post(
            "/backends/apply", {"id": "cpu-whisper"}, REMOTE_ADDR="10.1.2.3"
        )
        self.assertEqual(r.status_code, 200)
        event = last_event()
        self.assertEqual(
            (event.username, event.token_name, event.channel, event.ip),
            ("alice", "tests", "api", "10.1.2.3"),
        )
        self.assertEqual(
            (event.action, event.target, event.outcome),
            ("install", "cpu-whisper", "started"),
        )
        self.assertEqual(str(event.job_id), r.json()["id"])

    def test_a_refused_request_is_recorded_with_the_reason(self) -> None:
        r = self.api_post("/backends/apply", {"id": "no-such-backend"})
        self.assertEqual(r.status_code, 404)
        event = last_event()
        self.assertEqual((event.action, event.outcome), ("install", "refused"))
        self.assertIn("no backend found", event.reason)
        self.assertIsNone(event.job)

    def test_a_dashboard_delete_records_the_signed_in_user(self) -> None:
        self.install_on_disk("cpu-whisper")
        self.client.force_login(self.alice)
        self.client.post("/installed/cpu-whisper/delete/")
        event = last_event()
        self.assertEqual(
            (event.username, event.token_name, event.channel, event.action),
            ("alice", "", "dashboard", "delete"),
        )
        self.assertEqual(event.outcome, "started")

    def test_the_client_address_is_the_proxys_last_forwarded_entry_only_when_trusted(
        self,
    ) -> None:
        headers = {"X-Forwarded-For": "6.6.6.6, 192.0.2.7"}
        self.client.post(
            "/backends/apply",
            '{"id": "cpu-whisper"}',
            content_type="application/json",
            headers={**headers, "Authorization": f"Bearer {self.token_value}"},
        )
        self.assertEqual(last_event().ip, "127.0.0.1")
        Job.objects.all().delete()
        with override_settings(LOCALAI_ADMIN_TRUST_X_FORWARDED_FOR=True):
            self.client.post(
                "/backends/apply",
                '{"id": "cpu-whisper"}',
                content_type="application/json",
                headers={**headers, "Authorization": f"Bearer {self.token_value}"},
            )
        self.assertEqual(last_event().ip, "192.0.2.7")

    def test_cancel_and_retry_are_recorded_with_the_job(self) -> None:
        job = failed_job()
        self.api_post(f"/backends/jobs/{job.pk}/cancel")
        refused = last_event()
        self.assertEqual((refused.action, refused.outcome), ("cancel", "refused"))
        self.assertIn("failed", refused.reason)
        self.client.force_login(self.carol)
        self.client.post(f"/jobs/{job.pk}/retry/")
        retried = last_event()
        self.assertEqual(
            (retried.action, retried.username, retried.outcome),
            ("retry", "carol", "started"),
        )
        self.assertEqual(retried.target, "install cpu-whisper")
        self.assertNotEqual(retried.job_id, job.pk)

    def test_a_command_records_the_cli_channel_and_the_os_account(self) -> None:
        with self.assertRaises(CommandError):
            call_command("delete_backend", "not-installed")
        event = last_event()
        self.assertEqual(
            (event.channel, event.action, event.outcome), ("cli", "delete", "refused")
        )
        self.assertEqual(event.username, getpass.getuser())

    def test_node_drain_and_resume_are_recorded(self) -> None:
        agent = Node.objects.create(name="gpu-node")
        self.api_post(f"/api/nodes/{agent.pk}/drain")
        event = last_event()
        self.assertEqual(
            (event.action, event.outcome, event.node_name),
            ("node_drain", "done", "gpu-node"),
        )
        self.client.force_login(self.alice)
        self.client.post(f"/nodes/{agent.pk}/resume/")
        self.assertEqual(
            (last_event().action, last_event().channel), ("node_resume", "dashboard")
        )

    @override_settings(LOCALAI_ADMIN_REGISTRATION_TOKEN="s3cret")
    def test_an_agent_registration_is_recorded_with_the_agent_channel(self) -> None:
        r = self.client.post(
            "/api/node/register",
            {"name": "worker-2", "backends_path": "/srv/backends"},
            content_type="application/json",
            headers={"Authorization": "Bearer s3cret"},
            REMOTE_ADDR="10.4.4.4",
        )
        self.assertEqual(r.status_code, 201)
        event = last_event()
        self.assertEqual(
            (event.channel, event.username, event.ip, event.action),
            ("agent", "worker-2", "10.4.4.4", "node_register"),
        )

    def test_a_refused_drain_is_recorded_with_the_reason(self) -> None:
        local = Node.objects.local()
        self.api_post(f"/api/nodes/{local.pk}/drain")
        self.assertEqual(
            (last_event().action, last_event().outcome), ("node_drain", "refused")
        )
        self.assertIn("never drained", last_event().reason)

    def test_gallery_and_token_changes_in_the_admin_are_recorded(self) -> None:
        self.client.force_login(self.alice)
        self.client.post(
            "/admin/backends/gallery/add/",
            {
                "name": "extra",
                "url": "https://user:s3cret@example.org/g.yaml",
                "mirrors": "[]",
                "enabled": "on",
                "position": "1",
            },
        )
        event = last_event()
        self.assertEqual(
            (event.action, event.target, event.channel),
            ("gallery_add", "extra", "admin"),
        )
        gallery = Gallery.objects.get(name="extra")
        self.client.post(
            f"/admin/backends/gallery/{gallery.pk}/delete/", {"post": "yes"}
        )
        self.assertEqual(last_event().action, "gallery_delete")
        token = ApiToken.objects.get(name="tests")
        self.client.post(
            f"/admin/backends/apitoken/{token.pk}/delete/", {"post": "yes"}
        )
        event = last_event()
        self.assertEqual(event.action, "token_delete")
        self.assertIn("tests", event.target)
        self.assertNotIn(self.token_value, event.target)

    def test_a_token_created_by_the_command_is_recorded(self) -> None:
        call_command("create_api_token", "carol", "--name", "ci")
        event = last_event()
        self.assertEqual((event.action, event.channel), ("token_create", "cli"))
        self.assertIn("ci", event.target)

    def test_a_gallery_sync_from_the_command_is_recorded(self) -> None:
        call_command("sync_galleries")
        event = last_event()
        self.assertEqual(
            (event.action, event.channel, event.outcome),
            ("gallery_sync", "cli", "done"),
        )

    def test_a_change_refused_for_want_of_a_role_is_recorded(self) -> None:
        self.install_on_disk("cpu-whisper")
        self.client.force_login(self.carol)
        self.assertEqual(
            self.client.post("/installed/cpu-whisper/delete/").status_code, 403
        )
        event = last_event()
        self.assertEqual(
            (event.action, event.username, event.outcome),
            ("denied", "carol", "refused"),
        )
        self.assertEqual(event.target, "POST /installed/cpu-whisper/delete/")
        self.assertIn("backends.delete_backend", event.reason)
        before = AuditEvent.objects.count()
        self.client.get("/installed/cpu-whisper/delete/")
        self.assertEqual(AuditEvent.objects.count(), before)

    def test_credentials_in_an_external_uri_are_redacted_in_the_log(self) -> None:
        self.api_post(
            "/api/backends/install-external",
            {"uri": "https://bob:hunter2@example.org/b.tar", "name": "ext"},
        )
        self.assertNotIn("hunter2", last_event().target + last_event().reason)


class AuditReadingTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        now = timezone.now()
        self.old = AuditEvent.objects.create(
            created_at=now - timedelta(days=400),
            username="carol",
            channel="dashboard",
            action="delete",
            target="cpu-old",
            outcome="done",
        )
        self.recent = AuditEvent.objects.create(
            created_at=now - timedelta(days=2),
            username="alice",
            token_name="ci",
            channel="api",
            ip="10.0.0.9",
            action="install",
            target="cpu-whisper",
            outcome="refused",
            reason="nope",
        )
        self.today = AuditEvent.objects.create(
            username="carol",
            channel="dashboard",
            action="upgrade",
            target="cuda12-llama",
            outcome="started",
        )

    def test_the_audit_page_is_for_the_admin_role(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.get("/audit/").status_code, 403)
        self.client.force_login(self.alice)
        r = self.client.get("/audit/")
        self.assertContains(r, "cuda12-llama")
        self.assertContains(r, "alice (token ci)")
        self.assertContains(r, "10.0.0.9")

    def test_the_audit_page_filters_by_who_action_target_outcome_and_dates(
        self,
    ) -> None:
        self.client.force_login(self.alice)
        cases = {
            "who=carol": {"cpu-old", "cuda12-llama"},
            "who=ci": {"cpu-whisper"},
            "action=delete": {"cpu-old"},
            "target=llama": {"cuda12-llama"},
            "outcome=refused": {"cpu-whisper"},
            f"since={(timezone.now() - timedelta(days=3)).date()}": {
                "cpu-whisper",
                "cuda12-llama",
            },
            f"until={(timezone.now() - timedelta(days=2)).date()}": {
                "cpu-old",
                "cpu-whisper",
            },
        }
        for query, expected in cases.items():
            with self.subTest(query=query):
                r = self.client.get(f"/audit/?{query}", headers=HTMX)
                shown = {
                    t
                    for t in ("cpu-old", "cpu-whisper", "cuda12-llama")
                    if t in r.content.decode()
                }
                self.assertEqual(shown, expected)

    def test_api_audit_answers_filtered_events_newest_first(self) -> None:
        r = self.api_get("/api/audit?who=carol")
        self.assertEqual(r.status_code, 200)
        body = r.json()
        self.assertEqual(body["count"], 2)
        self.assertEqual(
            [e["target"] for e in body["events"]], ["cuda12-llama", "cpu-old"]
        )
        refused = self.api_get("/api/audit?outcome=refused").json()["events"][0]
        self.assertEqual(
            (refused["user"], refused["token"], refused["ip"], refused["reason"]),
            ("alice", "ci", "10.0.0.9", "nope"),
        )

    def test_api_audit_refuses_a_bad_filter_with_400(self) -> None:
        for query in ("outcome=maybe", "since=yesterday", "since=2026-13-45"):
            with self.subTest(query=query):
                r = self.api_get(f"/api/audit?{query}")
                self.assertEqual(r.status_code, 400)
                self.assertEqual(r.json()["error"]["type"], "invalid_request")

    def test_the_audit_log_is_read_only_in_the_admin(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(
            self.client.get("/admin/backends/auditevent/").status_code, 200
        )
        self.assertEqual(
            self.client.get("/admin/backends/auditevent/add/").status_code, 403
        )
        r = self.client.post(
            f"/admin/backends/auditevent/{self.old.pk}/delete/", {"post": "yes"}
        )
        self.assertEqual(r.status_code, 403)
        self.assertTrue(AuditEvent.objects.filter(pk=self.old.pk).exists())

    @override_settings(LOCALAI_ADMIN_AUDIT_RETENTION_DAYS=365)
    def test_the_daily_task_prunes_events_past_the_retention(self) -> None:
        self.assertEqual(tasks.prune_audit_log.call_local(), 1)
        self.assertEqual(
            set(AuditEvent.objects.values_list("target", flat=True)),
            {"cpu-whisper", "cuda12-llama"},
        )

    @override_settings(LOCALAI_ADMIN_AUDIT_RETENTION_DAYS=0)
    def test_a_retention_of_zero_keeps_every_event(self) -> None:
        self.assertEqual(audit.prune(), 0)
        self.assertEqual(AuditEvent.objects.count(), 3)
