"""The Nodes page, and an install fanned out to two real agents from the catalogue."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from backends.models import Job, Node
from tests.cluster import Cluster, start_two_nodes
from tests.registry_fixtures import RegistryProcess

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.registry
def test_the_nodes_page_installs_on_this_host_and_drains_an_agent(
    new_page: Any,
    users: Any,
    whisper_image: str,
    whisper_gallery: Any,
    job_worker: Any,
) -> None:
    whisper_gallery(whisper_image)
    agent = Node.objects.create(
        name="gpu-node",
        capability="nvidia-cuda-12",
        capability_explanation="driver 550.54 supports CUDA 12.4",
        vendor="nvidia",
        last_heartbeat=timezone.now(),
    )
    page = new_page(users["alice"])
    page.goto("/")
    page.get_by_role("link", name="Nodes").click()
    local = page.locator(f"#node-{Node.objects.local().pk}")
    expect(local.locator(".capability-name")).to_have_text("default")
    expect(local).to_contain_text("Nothing installed yet.")

    local.get_by_label("Install on this node").fill("whisper")
    local.get_by_role("button", name="Install on local").click()
    expect(page.locator("#messages")).to_contain_text(
        "Install of whisper on local started."
    )
    # The job shows in the card while it runs; once it ends the card lists the backend.
    expect(local.locator(".node-backends")).to_contain_text("cpu-whisper")
    expect(local.locator(".node-backends")).to_contain_text("→ cpu-whisper")
    assert Job.objects.get().state == Job.State.COMPLETED

    gpu = page.locator(f"#node-{agent.pk}")
    expect(gpu.locator(".node-status .badge")).to_have_text("Online")
    gpu.get_by_role("button", name="Drain gpu-node").click()
    expect(gpu.locator(".node-status .badge")).to_have_text("Draining")
    expect(gpu).to_contain_text("gpu-node is draining: it takes no new work")
    gpu.get_by_role("button", name="Resume gpu-node").click()
    expect(gpu.locator(".node-status .badge")).to_have_text("Online")
    # Single-node mode: an agent's queue is never read, so it is offered no install.
    expect(gpu).to_contain_text("distributed mode is off")
    expect(gpu.get_by_label("Install on this node")).to_have_count(0)


def test_typing_in_an_install_field_suggests_the_matching_backends(
    new_page: Any, users: Any, real_gallery: Any
) -> None:
    page = new_page(users["alice"])
    page.goto("/nodes/")
    choices = page.locator("#backends-for-default option")
    # 30 of the hundreds that run here; the rest are found by typing.
    expect(choices).to_have_count(30)
    expect(page.locator('#backends-for-default option[value="whisper"]')).to_have_count(
        0
    )
    field = page.locator(f"#node-{Node.objects.local().pk}").get_by_label(
        "Install on this node"
    )
    field.press_sequentially("whisper")
    expect(choices.first).to_have_attribute("value", "whisper")
    expect(choices.filter(has_text="meta:")).not_to_have_count(0)


@pytest.mark.distributed
@pytest.mark.registry
def test_a_meta_installed_from_the_catalogue_reaches_every_node(
    new_page: Any, users: Any, cluster: Cluster, registry: RegistryProcess
) -> None:
    gpu_backends, cpu_backends = start_two_nodes(cluster, registry, "browser/foo")

    page = new_page(users["alice"])
    page.goto("/?q=foo")
    row = page.locator("tr#entry-localai-foo")
    row.get_by_role("button", name="Install foo").click()

    # One bar per node in the row's job card while it runs; the small test images may
    # be in place before the first poll, and then the row shows the outcome at once.
    done = row.locator(".state", has_text="On 2 nodes")
    for node in ("gpu-node", "cpu-node"):
        part = row.locator(f'.node-part[data-node="{node}"]')
        expect(part.or_(done).first).to_be_visible()
    expect(row.locator(".state")).to_contain_text("On 2 nodes", timeout=30_000)
    expect(row.locator(".state")).to_contain_text("cpu-node, gpu-node")

    parent = Job.objects.get(parent=None)
    assert parent.state == Job.State.COMPLETED, (parent.message, parent.error)
    assert "cuda" in (gpu_backends / "cuda12-foo" / "run.sh").read_text()
    assert "cpu" in (cpu_backends / "cpu-foo" / "run.sh").read_text()

    # The job's history card keeps the outcome on each node.
    page.get_by_role("link", name="Jobs").click()
    card = page.locator(f"#job-{parent.pk}")
    expect(card).to_contain_text("Install: completed")
    for node in ("gpu-node", "cpu-node"):
        part = card.locator(f'.node-part[data-node="{node}"]')
        expect(part.locator(".badge")).to_have_text("success")
        expect(part.locator("progress")).to_have_attribute("value", "100.0")

    # The Nodes page: both agents online, with their capability and what they now run.
    page.get_by_role("link", name="Nodes").click()
    expect(page.locator(".node")).to_have_count(3)  # this controller and two agents
    for name, capability, build in (
        ("gpu-node", "nvidia-cuda-12", "cuda12-foo"),
        ("cpu-node", "default", "cpu-foo"),
    ):
        node = page.locator(".node", has=page.get_by_role("heading", name=name))
        expect(node.locator(".node-status .badge")).to_have_text("Online")
        expect(node.locator(".capability-name")).to_have_text(capability)
        expect(node.locator(".why")).not_to_be_empty()
        expect(node.locator(".node-backends li .name")).to_have_text([build, "foo"])
