from __future__ import annotations

from backends.models import Node
from tests.base import BaseTestCase


class HardwareTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)

    def test_it_requires_login(self) -> None:
        self.client.logout()
        self.assertRedirects(
            self.client.get("/hardware/"), "/accounts/login/?next=/hardware/"
        )

    def test_it_probes_a_node_never_probed_and_explains_the_capability(self) -> None:
        r = self.client.get("/hardware/")
        node = Node.objects.local()
        self.assertIsNotNone(node.probed_at)
        self.assertContains(r, f'<code class="big">{node.capability}</code>', html=True)
        self.assertContains(r, node.capability_explanation)
        self.assertContains(r, "No GPU found")

    def test_it_says_when_the_capability_is_forced(self) -> None:
        with self.settings(LOCALAI_FORCE_META_BACKEND_CAPABILITY="nvidia-cuda-12"):
            r = self.client.get("/hardware/")
        self.assertContains(r, '<code class="big">nvidia-cuda-12</code>', html=True)
        self.assertContains(r, "Forced by LOCALAI_FORCE_META_BACKEND_CAPABILITY")

    def test_it_lists_the_gpus_of_the_report(self) -> None:
        node = Node.objects.local()
        node.current_capability()
        node.hardware = dict(
            node.hardware,
            gpus=[{"vendor": "nvidia", "name": "RTX 4090", "vram_bytes": 24 * 1024**3}],
        )
        node.save()
        r = self.client.get("/hardware/")
        self.assertContains(r, "RTX 4090")
        self.assertContains(r, "24.0\xa0GiB")

    def test_it_hides_re_probe_from_non_staff(self) -> None:
        self.assertNotContains(self.client.get("/hardware/"), "Re-probe")


class HardwareProbeTestCase(BaseTestCase):
    def test_it_rejects_get(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get("/hardware/probe/").status_code, 405)

    def test_it_is_forbidden_to_non_staff(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.post("/hardware/probe/").status_code, 403)

    def test_it_probes_again_and_shows_the_result(self) -> None:
        self.client.force_login(self.alice)
        node = Node.objects.local()
        node.current_capability()
        before = node.probed_at
        with self.settings(LOCALAI_FORCE_META_BACKEND_CAPABILITY="amd"):
            r = self.client.post("/hardware/probe/", follow=True)
        self.assertRedirects(r, "/hardware/")
        self.assertContains(r, "Hardware probed again: capability amd.")
        node.refresh_from_db()
        assert node.probed_at is not None and before is not None
        self.assertGreater(node.probed_at, before)
        self.assertEqual(node.capability, "amd")
