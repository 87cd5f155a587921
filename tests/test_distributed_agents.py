"""Two real agents (subprocesses) on PostgreSQL + Redis, each with its own backends folder
and fake hardware: a CUDA 12 node and a CPU node, installing from the test registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection

from backends.models import Gallery, Job, Node
from tests.imagebuild import file, make_layer
from tests.registry_fixtures import RegistryProcess
from tests.slowserver import slow_server, tarball
from tests.test_hardware import linux_host, nvidia_host

pytestmark = [pytest.mark.distributed, pytest.mark.registry]
ROOT = Path(__file__).resolve().parent.parent
TOKEN = "agent-secret"


def services_available() -> bool:
    if connection.vendor != "postgresql":
        return False
    try:
        return bool(redis.Redis.from_url("redis://127.0.0.1:6379/15").ping())
    except redis.RedisError:
        return False


@pytest.fixture
def cluster(settings, live_server, transactional_db, tmp_path: Path) -> Iterator[Any]:
    if not services_available():
        pytest.skip("distributed mode needs PostgreSQL (DATABASE_URL) and Redis")
    name = f"test-{uuid.uuid4().hex[:8]}"
    settings.DISTRIBUTED = True
    settings.HUEY_REDIS_URL = "redis://127.0.0.1:6379/15"
    settings.HUEY = {**settings.HUEY, "name": name}
    settings.LOCALAI_ADMIN_REGISTRATION_TOKEN = TOKEN
    settings.NODE_OFFLINE_SECONDS = 3
    db = connection.settings_dict
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALAI")} | {
        "DEBUG": "True",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "HUEY_REDIS_URL": settings.HUEY_REDIS_URL,
        "HUEY_NAME": name,
        "LOCALAI_ADMIN_REGISTRATION_TOKEN": TOKEN,
        "LOCALAI_ADMIN_HEARTBEAT_SECONDS": "1",
    }
    agents: dict[str, subprocess.Popen[bytes]] = {}

    def start(node: str, make_host: Callable[[Path], Path]) -> Path:
        home = tmp_path / node
        root = make_host(home / "root")
        env = base_env | {
            "LOCALAI_ADMIN_NODE_NAME": node,
            "LOCALAI_BACKENDS_PATH": str(home / "backends"),
            "LOCALAI_ADMIN_DATA_DIR": str(home / "data"),
            "LOCALAI_ADMIN_PROBE_ROOT": str(root),
        }
        log = (home / "agent.log").open("wb")
        agents[node] = subprocess.Popen(
            [sys.executable, "manage.py", "agent", "--controller", live_server.url],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: Node.objects.filter(name=node, status="online").exists(),
            home / "agent.log",
        )
        return home / "backends"

    def kill(node: str) -> None:
        os.killpg(agents[node].pid, signal.SIGKILL)
        agents[node].wait()

    class Cluster:
        pass

    handle = Cluster()
    handle.start, handle.kill, handle.tmp = start, kill, tmp_path  # type: ignore[attr-defined]
    yield handle
    for process in agents.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    redis.Redis.from_url(settings.HUEY_REDIS_URL).flushdb()


def wait_for(
    predicate: Callable[[], Any], log: Path | None = None, timeout: float = 60
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    detail = log.read_text()[-3000:] if log and log.exists() else ""
    jobs = [
        (j.node.name if j.node else None, j.state, j.message, j.error)
        for j in Job.objects.all()
    ]
    raise AssertionError(f"timed out\n{jobs}\n{detail}")


def make_gallery(default_uri: str, cuda_uri: str) -> None:
    gallery = Gallery.objects.create(name="localai", url="file:///dev/null")
    gallery.entries.create(
        name="foo",
        is_meta=True,
        capabilities={"default": "cpu-foo", "nvidia-cuda-12": "cuda12-foo"},
    )
    gallery.entries.create(name="cpu-foo", uri=default_uri, alias="foo")
    gallery.entries.create(name="cuda12-foo", uri=cuda_uri, alias="foo")


def apply(client: Any, backend: str) -> Any:
    return client.post(
        "/backends/apply", {"id": backend}, content_type="application/json"
    )


def finished(job_id: str) -> Job | None:
    job = Job.objects.get(pk=job_id)
    return job if job.is_finished else None


def test_a_meta_lands_the_right_build_on_each_node(
    cluster, registry: RegistryProcess, admin_client
) -> None:
    cpu = registry.push_image(
        "dist/foo",
        "cpu",
        [make_layer([file("run.sh", "#!/bin/sh\necho cpu\n", 0o755)])],
    )
    gpu = registry.push_image(
        "dist/foo",
        "cuda12",
        [make_layer([file("run.sh", "#!/bin/sh\necho cuda\n", 0o755)])],
    )
    make_gallery(cpu.ref(registry.host), gpu.ref(registry.host))
    gpu_backends = cluster.start("gpu-node", nvidia_host)
    cpu_backends = cluster.start("cpu-node", linux_host)
    assert Node.objects.get(name="gpu-node").capability == "nvidia-cuda-12"
    assert Node.objects.get(name="cpu-node").capability == "default"

    refused = apply(admin_client, "cuda12-foo")
    assert refused.status_code == 409
    assert refused.json()["meta_alternative"] == "foo"

    response = apply(admin_client, "foo")
    assert response.status_code == 200, response.content
    parent = wait_for(
        lambda: finished(response.json()["id"]), cluster.tmp / "gpu-node" / "agent.log"
    )
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
    cluster, registry: RegistryProcess, admin_client
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
        # The controller notices on its next read once the heartbeats stop.
        parent = wait_for(
            lambda: admin_client.get("/api/nodes") and finished(parent_id), timeout=30
        )
    assert parent.state == "failed"
    assert "cpu-node went offline" in parent.error
    gpu_child = Job.objects.get(parent_id=parent_id, node__name="gpu-node")
    assert gpu_child.state == "completed"
