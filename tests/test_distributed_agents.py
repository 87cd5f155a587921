"""Two real agents (subprocesses) on PostgreSQL + Redis, each with its own backends folder
and fake hardware: a CUDA 12 node and a CPU node, installing from the test registry."""

from __future__ import annotations

import os
from typing import Any

import pytest

from backends import tasks
from backends.models import Job, Node
from tests.cluster import Cluster, make_gallery, push_builds, start_two_nodes, wait_for
from tests.imagebuild import file, make_layer
from tests.registry_fixtures import RegistryProcess
from tests.slowserver import slow_server, tarball
from tests.test_hardware import linux_host, nvidia_host

pytestmark = [pytest.mark.distributed, pytest.mark.registry]


def apply(client: Any, backend: str) -> Any:
    return client.post(
        "/backends/apply", {"id": backend}, content_type="application/json"
    )


def finished(job_id: str) -> Job | None:
    job = Job.objects.get(pk=job_id)
    return job if job.is_finished else None


def test_a_meta_lands_the_right_build_on_each_node(
    cluster: Cluster, registry: RegistryProcess, admin_client
) -> None:
    gpu_backends, cpu_backends = start_two_nodes(cluster, registry, "dist/foo")
    assert Node.objects.get(name="gpu-node").capability == "nvidia-cuda-12"
    assert Node.objects.get(name="cpu-node").capability == "default"

    refused = apply(admin_client, "cuda12-foo")
    assert refused.status_code == 409
    assert refused.json()["meta_alternative"] == "foo"

    response = apply(admin_client, "foo")
    assert response.status_code == 200, response.content
    parent = wait_for(lambda: finished(response.json()["id"]), cluster.log("gpu-node"))
    assert parent.state == "completed", (parent.message, parent.error)
    assert "cuda" in (gpu_backends / "cuda12-foo" / "run.sh").read_text()
    assert "cpu" in (cpu_backends / "cpu-foo" / "run.sh").read_text()
    assert not (gpu_backends / "cpu-foo").exists()
    assert (gpu_backends / "foo" / "metadata.json").exists()

    listed = {row["Name"]: row for row in admin_client.get("/backends").json()}
    assert {n["node_name"] for n in listed["foo"]["nodes"]} == {"gpu-node", "cpu-node"}
    nodes = admin_client.get(f"/backends/jobs/{parent.pk}").json()["nodes"]
    assert {n["status"] for n in nodes} == {"success"}


def test_a_killed_agent_fails_only_its_own_part(
    cluster: Cluster, registry: RegistryProcess, admin_client
) -> None:
    gpu = registry.push_image(
        "dist/foo", "cuda12-b", [make_layer([file("run.sh", "#!/bin/sh\n", 0o755)])]
    )
    body = tarball({"run.sh": b"#!/bin/sh\n", "big.bin": os.urandom(8 << 20)})
    with slow_server(body, pause=0.05) as slow_url:
        make_gallery(slow_url, gpu.ref(registry.host))
        cluster.start("gpu-node", nvidia_host)
        cluster.start("cpu-node", linux_host)
        parent_id = apply(admin_client, "foo").json()["id"]
        cpu_child = Job.objects.get(parent_id=parent_id, node__name="cpu-node")
        wait_for(lambda: Job.objects.get(pk=cpu_child.pk).current_bytes > 0)
        cluster.kill("cpu-node")
        # The controller's worker sweeps every minute; here the test is its clock.
        parent = wait_for(
            lambda: (
                tasks.sweep_offline_nodes.call_local() is not None
                and finished(parent_id)
            ),
            timeout=30,
        )
    assert parent.state == "failed"
    assert "cpu-node went offline" in parent.error
    gpu_child = Job.objects.get(parent_id=parent_id, node__name="gpu-node")
    assert gpu_child.state == "completed"


def test_an_agent_reports_its_backends_disk_with_each_heartbeat(
    cluster: Cluster, admin_client
) -> None:
    cluster.start("cpu-node", linux_host)
    node = wait_for(
        lambda: Node.objects.filter(name="cpu-node", disk_total_bytes__gt=0).first(),
        cluster.log("cpu-node"),
        timeout=30,
    )
    assert 0 < node.disk_free_bytes <= node.disk_total_bytes
    page = admin_client.get("/nodes/").content.decode()
    assert f'max="{node.disk_total_bytes}"' in page


def test_an_agent_reports_its_models_and_a_delete_there_is_refused(
    cluster: Cluster, admin_client, tmp_path
) -> None:
    models = tmp_path / "cpu-models"
    models.mkdir()
    (models / "stt.yaml").write_text("name: stt\nbackend: whisper\n")
    cluster.env["LOCALAI_MODELS_PATH"] = str(models)
    cluster.start("cpu-node", linux_host)
    node = wait_for(
        lambda: Node.objects.filter(name="cpu-node").exclude(localai_models=[]).first(),
        cluster.log("cpu-node"),
        timeout=30,
    )
    assert not node.is_local
    assert node.localai_models == [
        {"model": "stt", "backend": "whisper", "folders": []}
    ]
    r = admin_client.post(
        f"/api/nodes/{node.pk}/backends/delete",
        {"backend": "whisper"},
        content_type="application/json",
    )
    assert r.status_code == 409, r.content
    assert r.json()["models"] == ["stt"]


def test_ten_agents_install_a_fan_out_and_killed_ones_fail_after_the_sweep(
    cluster: Cluster, registry: RegistryProcess, admin_client
) -> None:
    builds = push_builds(registry, "dist/fleet")
    make_gallery(builds["cpu"], builds["cuda12"], metas=("foo", "bar"))
    hosts = {f"node-{n}": (nvidia_host if n % 2 else linux_host) for n in range(10)}
    folders = cluster.start_many(hosts)

    first = apply(admin_client, "foo").json()["id"]
    parent = wait_for(lambda: finished(first), cluster.log("node-0"))
    assert parent.state == "completed", (parent.message, parent.error)
    for name, folder in folders.items():
        build = "cuda12-foo" if hosts[name] is nvidia_host else "cpu-foo"
        assert (folder / build / "run.sh").exists(), name

    killed = ["node-0", "node-1", "node-2"]
    for name in killed:
        cluster.kill(name)
    # Within the offline window the dead agents still get their part, queued.
    second = apply(admin_client, "bar").json()["id"]
    assert Job.objects.filter(parent_id=second).count() == 10
    parent = wait_for(
        lambda: tasks.sweep_offline_nodes.call_local() is not None and finished(second),
        timeout=30,
    )
    assert parent.state == "failed"
    assert parent.message == "failed on 3 of 10 node(s), 7 completed"
    offline = Node.objects.filter(status="offline")
    assert sorted(offline.values_list("name", flat=True)) == killed
    for child in Job.objects.filter(parent_id=second, node__name__in=killed):
        assert child.state == "failed"
        assert child.node is not None
        assert f"{child.node.name} went offline" in child.error
