from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.test import override_settings
from django.utils import timezone

from backends.core import gallery as gallery_format
from backends.models import Gallery, GalleryBackend, InstalledBackend, Job, Node
from backends.services import catalogue as read
from tests.base import BaseTestCase

HTMX = {"HX-Request": "true"}


def make_agent(name: str = "gpu-node", **fields: Any) -> Node:
    defaults: dict[str, Any] = {
        "capability": "nvidia-cuda-12",
        "capability_explanation": "nvidia-cuda-12: driver 550.54 supports CUDA 12.4",
        "vendor": "nvidia",
        "vram_bytes": 24 * 1024**3,
        "driver_version": "550.54",
        "cuda_version": "12.4",
        "os": "linux",
        "arch": "amd64",
        "hardware": {"gpus": [{"vendor": "nvidia", "name": "RTX 4090"}]},
        "backends_path": "/srv/backends",
        "last_heartbeat": timezone.now(),
        "probed_at": timezone.now(),
    }
    return Node.objects.create(name=name, **(defaults | fields))


class NodeListTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.client.force_login(self.bob)

    def test_it_requires_login(self) -> None:
        self.client.logout()
        self.assertRedirects(
            self.client.get("/nodes/"), "/accounts/login/?next=/nodes/"
        )

    def test_it_is_in_the_navigation(self) -> None:
        r = self.client.get("/nodes/")
        self.assertContains(r, '<a href="/nodes/" aria-current="page">Nodes</a>')

    def test_it_shows_the_local_node_in_single_node_mode(self) -> None:
        self.install_on_disk("cpu-whisper", alias="whisper")
        r = self.client.get("/nodes/")
        local = Node.objects.local()
        self.assertContains(r, "Single-node mode")
        self.assertContains(r, f'id="node-{local.pk}"')
        self.assertContains(r, "this host")
        self.assertContains(
            r, f'<code class="capability-name">{local.capability}</code>'
        )
        self.assertContains(r, local.capability_explanation)
        self.assertContains(r, "No GPU: CPU builds")
        # The local disk is read directly, like the Installed page.
        self.assertContains(r, '<span class="name">cpu-whisper</span>', html=True)

    def test_it_shows_an_agent_with_hardware_capability_status_and_heartbeat(
        self,
    ) -> None:
        agent = make_agent(last_heartbeat=timezone.now() - timedelta(seconds=5))
        InstalledBackend.objects.create(node=agent, name="cuda12-foo", version="v2")
        InstalledBackend.objects.create(
            node=agent, name="foo", is_meta=True, meta_backend_for="cuda12-foo"
        )
        r = self.client.get("/nodes/")
        self.assertContains(r, f'id="node-{agent.pk}"')
        self.assertContains(
            r, '<span class="badge node-online">Online</span>', html=True
        )
        self.assertContains(r, "last heartbeat")
        self.assertContains(r, "just now")
        self.assertContains(r, "nvidia-cuda-12: driver 550.54 supports CUDA 12.4")
        self.assertContains(
            r, "RTX 4090 · 24.0\xa0GiB VRAM · driver 550.54 · CUDA 12.4"
        )
        self.assertContains(r, '<span class="name">cuda12-foo</span>', html=True)
        self.assertContains(r, "→ cuda12-foo")

    def test_it_shows_a_silent_agent_offline_before_the_sweep_runs(self) -> None:
        make_agent(last_heartbeat=timezone.now() - timedelta(minutes=5))
        r = self.client.get("/nodes/")
        self.assertContains(
            r, '<span class="badge node-offline">Offline</span>', html=True
        )

    def test_it_shows_what_a_node_is_working_on(self) -> None:
        agent = make_agent()
        job = Job.objects.create(
            kind="install",
            target="localai@foo",
            dedup_key="foo",
            node=agent,
            state=Job.State.RUNNING,
            progress=40,
        )
        r = self.client.get("/nodes/")
        self.assertContains(r, "Working on")
        self.assertContains(r, f'id="job-{job.pk}"')
        self.assertContains(r, '<progress max="100" value="40.0"', html=False)

    def test_it_hides_every_action_from_non_staff(self) -> None:
        make_agent()
        r = self.client.get("/nodes/")
        self.assertNotContains(r, 'method="post" action="/nodes/')
        self.assertNotContains(r, "<datalist")

    @override_settings(DISTRIBUTED=True)
    def test_it_offers_drain_and_install_to_staff(self) -> None:
        agent = make_agent()
        local = Node.objects.local()
        self.client.force_login(self.alice)
        r = self.client.get("/nodes/")
        self.assertContains(r, f'action="/nodes/{agent.pk}/drain/"')
        self.assertNotContains(r, f'action="/nodes/{local.pk}/drain/"')
        self.assertContains(r, f'action="/nodes/{agent.pk}/install/"')
        self.assertContains(r, f'action="/nodes/{local.pk}/install/"')

    @override_settings(DISTRIBUTED=True)
    def test_its_suggestions_are_what_each_capability_can_run(self) -> None:
        make_agent()
        self.client.force_login(self.alice)
        r = self.client.get("/nodes/")
        body = r.content.decode()
        cpu = body.split('<datalist id="backends-for-default">')[1].split(
            "</datalist>"
        )[0]
        gpu = body.split('<datalist id="backends-for-nvidia-cuda-12">')[1].split(
            "</datalist>"
        )[0]
        self.assertIn('value="cpu-llama-cpp"', cpu)
        self.assertNotIn('value="cuda12-llama-cpp"', cpu)
        self.assertIn('value="cuda12-llama-cpp"', gpu)
        self.assertIn('value="llama-cpp"', gpu)

    def test_it_says_a_draining_node_takes_no_new_work(self) -> None:
        agent = make_agent(status=Node.Status.DRAINING)
        self.client.force_login(self.alice)
        r = self.client.get("/nodes/")
        self.assertContains(r, "gpu-node is draining: it takes no new work")
        self.assertContains(r, f'action="/nodes/{agent.pk}/resume/"')
        self.assertNotContains(r, f'action="/nodes/{agent.pk}/install/"')

    @override_settings(DISTRIBUTED=True)
    def test_it_explains_distributed_mode(self) -> None:
        r = self.client.get("/nodes/")
        self.assertContains(r, "go to every online agent")


class NodeDetailTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.agent = make_agent()
        self.client.force_login(self.bob)

    def test_it_shows_the_node_and_its_recent_jobs(self) -> None:
        Job.objects.create(
            kind="install",
            target="localai@foo",
            dedup_key="foo",
            node=self.agent,
            state=Job.State.COMPLETED,
        )
        r = self.client.get(f"/nodes/{self.agent.pk}/")
        self.assertTemplateUsed(r, "base.html")
        self.assertContains(r, "Recent jobs on gpu-node")
        self.assertContains(r, "localai@foo")

    def test_it_returns_the_state_that_refreshes_itself_for_htmx(self) -> None:
        r = self.client.get(f"/nodes/{self.agent.pk}/", headers=HTMX)
        self.assertTemplateNotUsed(r, "base.html")
        body = r.content.decode()
        self.assertTrue(body.lstrip().startswith('<div class="node-state"'))
        self.assertIn('hx-trigger="every 5s, job-finished from:body"', body)

    def test_it_answers_404_for_an_unknown_node(self) -> None:
        self.assertEqual(self.client.get("/nodes/999/").status_code, 404)


class NodeInstallTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.local = Node.objects.local()
        self.local.current_capability()
        self.client.force_login(self.alice)

    def url(self, node: Node) -> str:
        return f"/nodes/{node.pk}/install/"

    def test_it_rejects_get(self) -> None:
        self.assertEqual(self.client.get(self.url(self.local)).status_code, 405)

    def test_it_is_forbidden_to_non_staff(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.post(self.url(self.local), {"backend": "whisper"})
        self.assertEqual(r.status_code, 403)
        self.assertFalse(Job.objects.exists())

    def test_it_installs_on_this_host_in_single_node_mode(self) -> None:
        r = self.client.post(self.url(self.local), {"backend": "whisper"})
        job = Job.objects.get()
        self.assertEqual(
            (job.kind, job.target, job.node, job.dedup_key, job.requested_by),
            ("install", "localai@whisper", self.local, "whisper", "alice"),
        )
        self.assertRedirects(
            r, f"/nodes/#node-{self.local.pk}", fetch_redirect_response=False
        )
        self.assertContains(
            self.client.get("/nodes/"), "Install of whisper on local started."
        )

    @override_settings(DISTRIBUTED=True)
    def test_it_starts_the_job_on_the_chosen_agent(self) -> None:
        agent = make_agent()
        self.client.post(self.url(agent), {"backend": "localai@llama-cpp"})
        job = Job.objects.get()
        self.assertEqual(
            (job.node, job.target, job.parent), (agent, "localai@llama-cpp", None)
        )

    @override_settings(DISTRIBUTED=True)
    def test_it_refuses_a_node_that_is_not_online(self) -> None:
        for status in (Node.Status.DRAINING, Node.Status.OFFLINE):
            agent = make_agent(f"{status}-node", status=status)
            r = self.client.post(self.url(agent), {"backend": "whisper"}, follow=True)
            self.assertContains(
                r, f"Not started: {status}-node is {status}: it takes no new work."
            )
        self.assertFalse(Job.objects.exists())

    def test_it_refuses_agents_when_distributed_mode_is_off(self) -> None:
        agent = make_agent()
        r = self.client.post(self.url(agent), {"backend": "whisper"}, follow=True)
        self.assertContains(r, "distributed mode is off")
        self.assertFalse(Job.objects.exists())

    def test_it_refuses_an_unknown_backend(self) -> None:
        r = self.client.post(self.url(self.local), {"backend": "nope"}, follow=True)
        self.assertContains(
            r, "Not started: No backend named nope in the enabled galleries."
        )
        self.assertFalse(Job.objects.exists())

    def test_it_refuses_a_bad_name(self) -> None:
        r = self.client.post(self.url(self.local), {"backend": "../etc"}, follow=True)
        self.assertContains(r, "may only contain letters")
        self.assertFalse(Job.objects.exists())

    def test_it_refuses_a_build_the_node_cannot_run(self) -> None:
        r = self.client.post(
            self.url(self.local), {"backend": "cuda12-llama-cpp"}, follow=True
        )
        self.assertContains(r, "cuda12-llama-cpp does not run on local")
        self.assertFalse(Job.objects.exists())

    def test_it_returns_the_card_with_the_job_for_htmx(self) -> None:
        r = self.client.post(self.url(self.local), {"backend": "whisper"}, headers=HTMX)
        self.assertTemplateUsed(r, "backends/partials/_node.html")
        body = r.content.decode()
        self.assertTrue(body.lstrip().startswith('<article class="card node"'))
        self.assertIn(f'id="job-{Job.objects.get().pk}"', body)
        self.assertIn('hx-swap-oob="true"', body)  # the flash message comes along

    def test_it_returns_the_card_with_the_error_next_to_the_field_for_htmx(
        self,
    ) -> None:
        r = self.client.post(self.url(self.local), {"backend": "nope"}, headers=HTMX)
        self.assertContains(r, 'aria-invalid="true"')
        self.assertContains(r, "No backend named nope in the enabled galleries.")
        self.assertContains(r, 'value="nope"')


class NodeSuggestionsTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.agent = make_agent()
        self.client.force_login(self.alice)

    def suggested(self, typed: str, node: Node | None = None) -> list[str]:
        node = node or self.agent
        r = self.client.get(
            f"/nodes/{node.pk}/suggestions/", {"backend": typed}, headers=HTMX
        )
        self.assertEqual(r.status_code, 200)
        return re.findall(r'<option value="([^"]+)"', r.content.decode())

    def test_the_install_field_asks_for_suggestions_as_the_admin_types(self) -> None:
        local = Node.objects.local()
        r = self.client.get("/nodes/")
        self.assertContains(r, f'hx-get="/nodes/{local.pk}/suggestions/"')
        self.assertContains(r, 'hx-target="#backends-for-default"')

    def test_it_suggests_what_matches_the_typing_and_runs_on_the_node(self) -> None:
        self.assertEqual(
            self.suggested("llama"),
            ["cpu-llama-cpp", "cuda12-llama-cpp", "llama-cpp"],
        )
        self.assertEqual(
            self.suggested("llama", Node.objects.local()),
            ["cpu-llama-cpp", "llama-cpp"],
        )
        self.assertEqual(self.suggested("whisper"), ["whisper", "cpu-whisper"])

    def test_it_suggests_a_few_of_many_and_finds_the_others_by_typing(self) -> None:
        many = [
            gallery_format.GalleryEntry(f"tool-{i:03}", uri=f"quay.io/x/tool:{i}")
            for i in range(100)
        ]
        extra = Gallery.objects.create(name="extra", url="file:///x.yaml", position=1)
        GalleryBackend.objects.insert_entries(extra, many)
        extra.entry_count = len(many)
        extra.save()
        self.assertEqual(len(self.suggested("")), read.SUGGESTIONS)
        self.assertEqual(self.suggested("tool-077"), ["tool-077"])

    def test_a_name_in_two_galleries_is_suggested_once(self) -> None:
        twin = Gallery.objects.create(name="twin", url="file:///x.yaml", position=1)
        GalleryBackend.objects.insert_entries(
            twin,
            [gallery_format.GalleryEntry("cpu-whisper", uri="quay.io/x/whisper:1")],
        )
        twin.entry_count = 1
        twin.save()
        self.assertEqual(self.suggested("cpu-whisper"), ["cpu-whisper"])

    def test_it_is_forbidden_to_viewers(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.get(f"/nodes/{self.agent.pk}/suggestions/")
        self.assertEqual(r.status_code, 403)


class NodeDrainTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.agent = make_agent()
        self.client.force_login(self.alice)

    def test_drain_stops_new_work_and_resume_brings_it_back(self) -> None:
        r = self.client.post(f"/nodes/{self.agent.pk}/drain/")
        self.assertRedirects(
            r, f"/nodes/#node-{self.agent.pk}", fetch_redirect_response=False
        )
        self.agent.refresh_from_db()
        self.assertEqual(self.agent.status, Node.Status.DRAINING)
        self.client.post(f"/nodes/{self.agent.pk}/resume/")
        self.agent.refresh_from_db()
        self.assertEqual(self.agent.status, Node.Status.ONLINE)

    def test_it_rejects_get(self) -> None:
        self.assertEqual(
            self.client.get(f"/nodes/{self.agent.pk}/drain/").status_code, 405
        )

    def test_it_is_forbidden_to_non_staff(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(
            self.client.post(f"/nodes/{self.agent.pk}/drain/").status_code, 403
        )
        self.assertEqual(
            self.client.post(f"/nodes/{self.agent.pk}/resume/").status_code, 403
        )

    def test_it_never_drains_this_host(self) -> None:
        local = Node.objects.local()
        r = self.client.post(f"/nodes/{local.pk}/drain/", follow=True)
        self.assertContains(r, "local is this host: it is never drained")
        local.refresh_from_db()
        self.assertEqual(local.status, Node.Status.ONLINE)

    def test_it_says_when_there_is_nothing_to_resume(self) -> None:
        r = self.client.post(f"/nodes/{self.agent.pk}/resume/", follow=True)
        self.assertContains(r, "gpu-node is online: nothing changed.")

    def test_it_returns_the_card_for_htmx(self) -> None:
        r = self.client.post(f"/nodes/{self.agent.pk}/drain/", headers=HTMX)
        self.assertTemplateUsed(r, "backends/partials/_node.html")
        self.assertContains(r, f'action="/nodes/{self.agent.pk}/resume/"')
        self.assertContains(r, "gpu-node is draining")
