"""Disk use on the pages: each backend's size as a bar on the Installed page, and the
backends disk's space as a meter there and on every node card (SVG attributes and a
<meter>, no style attribute: the CSP forbids them)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from django.conf import settings
from django.test import override_settings

from backends.models import Node
from backends.services import disk
from tests.base import BaseTestCase


class DiskOnPagesTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)
        big = self.install_on_disk("cpu-big")
        (big / "lib.so").write_bytes(b"x" * 40_000)
        small = self.install_on_disk("cpu-small")
        (small / "lib.so").write_bytes(b"x" * 10_000)

    def test_the_installed_page_draws_a_bar_per_backend_scaled_to_the_largest(
        self,
    ) -> None:
        html = self.client.get("/installed/").content.decode()
        chart = html[html.index('class="disk-chart"') :]
        widths = re.findall(
            r'<th scope="row">([^<]+)</th>\s*<td class="bar"><svg[^>]*><rect x="0" y="0" width="([0-9.]+)"',
            chart,
        )
        self.assertEqual([name for name, _ in widths], ["cpu-big", "cpu-small"])
        self.assertEqual(float(widths[0][1]), 100.0)
        self.assertAlmostEqual(float(widths[1][1]), 25.0, delta=1.0)
        self.assertNotIn("style=", html)

    def test_the_installed_page_shows_the_free_space_of_the_backends_disk(self) -> None:
        usage = shutil.disk_usage(settings.LOCALAI_BACKENDS_PATH)
        r = self.client.get("/installed/")
        self.assertContains(r, '<meter class="visually-hidden" min="0"')
        self.assertContains(r, f'max="{usage.total}"')
        self.assertContains(r, "free of")

    def test_each_node_card_has_a_disk_meter_or_says_it_is_unknown(self) -> None:
        Node.objects.local()
        Node.objects.create(name="gpu-a", disk_total_bytes=1000, disk_free_bytes=250)
        Node.objects.create(name="gpu-b")
        html = self.client.get("/nodes/").content.decode()
        self.assertIn('max="1000" value="750"', html)
        # This host's backends are measured on its disk: 50 kB of files.
        self.assertIn("Backends 48.9\xa0KB", html)
        self.assertIn("Disk space not reported by this agent", html)
        self.assertEqual(html.count('class="node-disk"'), 3)
        self.assertNotIn("style=", html)


class SpaceTestCase(BaseTestCase):
    def test_the_bar_splits_backends_other_use_and_free_space(self) -> None:
        space = disk.Space(total=1000, free=400, backends=150)
        self.assertEqual((space.backends_percent, space.other_percent), (15.0, 45.0))

    @override_settings(LOCALAI_ADMIN_REGISTRATION_TOKEN="s3cret")
    def test_an_agents_heartbeat_reports_its_disk_space(self) -> None:
        agent = Node.objects.create(name="gpu-a")
        r = self.client.post(
            f"/api/node/{agent.pk}/heartbeat",
            {"disk": {"total": 1000, "free": 300}},
            content_type="application/json",
            headers={"Authorization": "Bearer s3cret"},
        )
        self.assertEqual(r.status_code, 200)
        space = disk.node_space(Node.objects.get(pk=agent.pk))
        assert space is not None
        self.assertEqual((space.total, space.free), (1000, 300))

    @override_settings(LOCALAI_ADMIN_REGISTRATION_TOKEN="s3cret")
    def test_a_nonsense_disk_report_is_refused_with_400(self) -> None:
        agent = Node.objects.create(name="gpu-a")
        for report in (
            {"total": 0, "free": 0},
            {"total": 10, "free": 11},
            {"total": "x", "free": 1},
        ):
            with self.subTest(report=report):
                r = self.client.post(
                    f"/api/node/{agent.pk}/heartbeat",
                    {"disk": report},
                    content_type="application/json",
                    headers={"Authorization": "Bearer s3cret"},
                )
                self.assertEqual(r.status_code, 400)
        self.assertIsNone(disk.node_space(Node.objects.get(pk=agent.pk)))

    def test_a_missing_backends_folder_reads_its_parent_disk(self) -> None:
        Path(settings.LOCALAI_BACKENDS_PATH).rename(
            Path(settings.LOCALAI_BACKENDS_PATH).with_name("moved")
        )
        self.assertIsNotNone(disk.local_space(0))
