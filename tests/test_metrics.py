"""GET /metrics: who may scrape it, and the numbers it answers (from the database)."""

from __future__ import annotations

from datetime import timedelta

from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from backends.checks import metrics_allowlist
from backends.models import ApiToken, Gallery, InstalledBackend, Job, Node
from tests.base import BaseTestCase


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsAccessTestCase(BaseTestCase):
    def test_an_anonymous_scrape_is_refused_with_401_json(self) -> None:
        r = self.client.get("/metrics")
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.json()["error"]["type"], "unauthorized")
        self.assertIn("LOCALAI_ADMIN_METRICS_TOKEN", r.json()["error"]["message"])

    def test_an_api_token_of_a_viewer_may_scrape(self) -> None:
        value = ApiToken.objects.create_token(self.bob, "prometheus")[1]
        r = self.client.get("/metrics", headers={"Authorization": f"Bearer {value}"})
        self.assertEqual(r.status_code, 200)
        self.assertTrue(r["Content-Type"].startswith("text/plain"))
        self.assertIn(b"localai_admin_jobs_finished_total", r.content)

    def test_an_api_token_without_a_role_gets_403_json(self) -> None:
        value = ApiToken.objects.create_token(self.dave, "prometheus")[1]
        r = self.client.get("/metrics", headers={"Authorization": f"Bearer {value}"})
        self.assertEqual(r.status_code, 403)
        self.assertEqual(r.json()["permission"], "backends.view_backends")

    def test_a_wrong_token_gets_401(self) -> None:
        r = self.client.get("/metrics", headers={"Authorization": "Bearer nope"})
        self.assertEqual(r.status_code, 401)

    @override_settings(LOCALAI_ADMIN_METRICS_TOKEN="scrape-secret-123")
    def test_the_dedicated_metrics_token_may_scrape(self) -> None:
        r = self.client.get(
            "/metrics", headers={"Authorization": "Bearer scrape-secret-123"}
        )
        self.assertEqual(r.status_code, 200)

    @override_settings(LOCALAI_ADMIN_METRICS_ALLOW=["10.9.0.0/16"])
    def test_an_address_in_the_allowlist_may_scrape_without_a_token(self) -> None:
        self.assertEqual(
            self.client.get("/metrics", REMOTE_ADDR="10.9.4.2").status_code, 200
        )
        self.assertEqual(
            self.client.get("/metrics", REMOTE_ADDR="10.8.4.2").status_code, 401
        )

    @override_settings(LOCALAI_ADMIN_METRICS_ALLOW=["10.9.0.0/16"])
    def test_a_forged_forwarded_address_is_not_trusted(self) -> None:
        r = self.client.get(
            "/metrics", REMOTE_ADDR="192.0.2.1", headers={"X-Forwarded-For": "10.9.4.2"}
        )
        self.assertEqual(r.status_code, 401)


@override_settings(LOCALAI_ADMIN_METRICS_ALLOW=["127.0.0.1/32"])
class MetricsValuesTestCase(BaseTestCase):
    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        r = self.client.get("/metrics")
        self.assertEqual(r.status_code, 200)
        return samples(r.content.decode())

    def test_jobs_are_counted_by_kind_and_outcome_with_their_durations(self) -> None:
        now = timezone.now()
        local = Node.objects.local()
        for state, seconds in (("completed", 10), ("completed", 100), ("failed", 3)):
            Job.objects.create(
                kind="install",
                target="x",
                node=local,
                state=state,
                started_at=now - timedelta(seconds=seconds),
                finished_at=now,
                current_bytes=1000,
            )
        Job.objects.create(kind="upgrade", target="y", dedup_key="y", node=local)
        found = self.scrape()
        finished = "localai_admin_jobs_finished_total"
        self.assertEqual(
            found[(finished, (("kind", "install"), ("outcome", "completed")))], 2
        )
        self.assertEqual(
            found[(finished, (("kind", "install"), ("outcome", "failed")))], 1
        )
        active = (
            "localai_admin_jobs_active",
            (("kind", "upgrade"), ("state", "queued")),
        )
        self.assertEqual(found[active], 1)
        bucket = "localai_admin_job_duration_seconds_bucket"
        self.assertEqual(found[(bucket, (("kind", "install"), ("le", "15.0")))], 2)
        self.assertEqual(found[(bucket, (("kind", "install"), ("le", "+Inf")))], 3)
        total = ("localai_admin_job_duration_seconds_sum", (("kind", "install"),))
        self.assertAlmostEqual(found[total], 113, delta=1)
        downloaded = ("localai_admin_downloaded_bytes_total", (("kind", "install"),))
        self.assertEqual(found[downloaded], 3000)

    def test_nodes_are_counted_online_draining_and_offline(self) -> None:
        Node.objects.local()
        Node.objects.create(name="gpu-a", last_heartbeat=timezone.now())
        Node.objects.create(
            name="gpu-b", status="draining", last_heartbeat=timezone.now()
        )
        Node.objects.create(
            name="gpu-c", last_heartbeat=timezone.now() - timedelta(hours=1)
        )
        found = self.scrape()
        nodes = "localai_admin_nodes"
        self.assertEqual(found[(nodes, (("status", "offline"),))], 1)
        self.assertEqual(found[(nodes, (("status", "draining"),))], 1)
        self.assertGreaterEqual(found[(nodes, (("status", "online"),))], 1)

    def test_installed_backends_and_upgrades_are_counted_per_node(self) -> None:
        local = Node.objects.local()
        InstalledBackend.objects.create(node=local, name="cpu-a", size_bytes=500)
        InstalledBackend.objects.create(
            node=local, name="cpu-b", size_bytes=700, upgrade_available=True
        )
        found = self.scrape()
        label = (("node", local.name),)
        self.assertEqual(found[("localai_admin_installed_backends", label)], 2)
        self.assertEqual(found[("localai_admin_installed_bytes", label)], 1200)
        self.assertEqual(found[("localai_admin_upgrades_available", label)], 1)

    def test_gallery_staleness_is_the_age_of_the_last_good_sync(self) -> None:
        Gallery.objects.filter(pk=self.gallery.pk).update(
            last_synced_at=timezone.now() - timedelta(hours=2), last_error="timeout"
        )
        Gallery.objects.create(name="never", url="https://example.org/g.yaml")
        found = self.scrape()
        age = "localai_admin_gallery_last_sync_age_seconds"
        self.assertAlmostEqual(found[(age, (("gallery", "localai"),))], 7200, delta=60)
        self.assertEqual(found[(age, (("gallery", "never"),))], float("inf"))
        failing = ("localai_admin_gallery_sync_failing", (("gallery", "localai"),))
        self.assertEqual(found[failing], 1)


class MetricsAllowlistCheckTestCase(BaseTestCase):
    def test_a_mistyped_allowlist_entry_stops_the_start(self) -> None:
        with override_settings(
            LOCALAI_ADMIN_METRICS_ALLOW=["10.0.0.0/8", "10.0.0.300/8"]
        ):
            errors = metrics_allowlist(None)
        self.assertEqual([e.id for e in errors], ["backends.E002"])
        self.assertIn("10.0.0.300/8", errors[0].msg)
