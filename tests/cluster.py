"""A real cluster for distributed-mode tests: agents (``manage.py agent``) started as
subprocesses against the live server, on PostgreSQL + Redis.

Loaded as a plugin by tests/conftest.py. Fixture:

* ``cluster`` (function): skips on SQLite (``make test`` runs distributed mode in its
  PostgreSQL pass); on PostgreSQL, Redis not answering is a missing part (``tests.parts``).
  ``cluster.start(name, make_host)`` starts an agent with its own backends folder and a
  fake hardware root built by ``make_host(root)`` (``tests.test_hardware.linux_host``,
  ``nvidia_host``), waits until its node is online and returns its backends folder;
  ``cluster.start_many({name: make_host})`` starts several at once (their folders by
  name); ``cluster.kill(name)`` kills one with SIGKILL; ``cluster.log(name)`` is its log.

Helpers: ``wait_for(predicate)`` polls until the predicate returns something true;
``make_gallery(default_uri, cuda_uri, metas=("foo",))`` creates the gallery ``localai``
with each meta (``foo``) and its builds ``cpu-foo`` (default) and ``cuda12-foo``
(nvidia-cuda-12); ``push_builds(registry, repository)`` pushes a CPU and a CUDA 12 build.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection

from backends.models import Gallery, Job, Node
from tests.parts import missing_part

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "agent-secret"
# TEST_REDIS_URL: another Redis database, so that two checkouts can run tests at once.
REDIS_URL = os.getenv("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_answers() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL).ping())
    except redis.RedisError:
        return False


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


def make_gallery(
    default_uri: str, cuda_uri: str, metas: tuple[str, ...] = ("foo",)
) -> Gallery:
    gallery = Gallery.objects.create(name="localai", url="file:///dev/null")
    for number, meta in enumerate(metas):
        gallery.entries.create(
            name=meta,
            is_meta=True,
            description="An auto-resolving test backend",
            capabilities={"default": f"cpu-{meta}", "nvidia-cuda-12": f"cuda12-{meta}"},
        )
        gallery.entries.create(
            name=f"cpu-{meta}", uri=default_uri, alias=meta, position=2 * number + 1
        )
        gallery.entries.create(
            name=f"cuda12-{meta}", uri=cuda_uri, alias=meta, position=2 * number + 2
        )
    return gallery


class Cluster:
    """The agents of one test, each a process group of its own."""

    def __init__(self, tmp: Path, controller: str, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.controller = controller
        self.env = env
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, node: str) -> Path:
        return self.tmp / node / "agent.log"

    def start(self, node: str, make_host: Callable[[Path], Path]) -> Path:
        return self.start_many({node: make_host})[node]

    def start_many(
        self, hosts: Mapping[str, Callable[[Path], Path]]
    ) -> dict[str, Path]:
        """Start an agent per node at once, wait until every one is online, and return
        their backends folders."""
        for node, make_host in hosts.items():
            self._spawn(node, make_host)
        for node in hosts:
            online = Node.objects.filter(name=node, status="online")
            wait_for(online.exists, self.log(node))
        return {node: self.tmp / node / "backends" for node in hosts}

    def _spawn(self, node: str, make_host: Callable[[Path], Path]) -> None:
        home = self.tmp / node
        root = make_host(home / "root")
        env = self.env | {
            "LOCALAI_ADMIN_NODE_NAME": node,
            "LOCALAI_BACKENDS_PATH": str(home / "backends"),
            "LOCALAI_ADMIN_DATA_DIR": str(home / "data"),
            "LOCALAI_ADMIN_PROBE_ROOT": str(root),
        }
        with self.log(node).open("wb") as log:
            self.agents[node] = subprocess.Popen(
                [sys.executable, "manage.py", "agent", "--controller", self.controller],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self, node: str) -> None:
        os.killpg(self.agents[node].pid, signal.SIGKILL)
        self.agents[node].wait()

    def stop(self) -> None:
        running = [p for p in self.agents.values() if p.poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGTERM)
        for process in running:
            if process.poll() is None:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@pytest.fixture
def cluster(
    settings: Any, live_server: Any, transactional_db: None, tmp_path: Path
) -> Iterator[Cluster]:
    if connection.vendor != "postgresql":
        # By design, even in CI: this pass runs on SQLite, the PostgreSQL pass runs these.
        pytest.skip("distributed mode needs PostgreSQL (DATABASE_URL)")
    if not redis_answers():
        missing_part(f"distributed mode needs Redis at {REDIS_URL}")
    # A queue name of its own: a leftover task from another run can never reach it.
    name = f"test-{uuid.uuid4().hex[:8]}"
    settings.DISTRIBUTED = True
    settings.HUEY_REDIS_URL = REDIS_URL
    settings.HUEY = {**settings.HUEY, "name": name}
    settings.LOCALAI_ADMIN_REGISTRATION_TOKEN = TOKEN
    settings.NODE_OFFLINE_SECONDS = 3
    db = connection.settings_dict
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALAI")} | {
        "DEBUG": "True",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "HUEY_REDIS_URL": REDIS_URL,
        "HUEY_NAME": name,
        "LOCALAI_ADMIN_REGISTRATION_TOKEN": TOKEN,
        "LOCALAI_ADMIN_HEARTBEAT_SECONDS": "1",
        # The builds are local folders and loopback servers: the source policy allows
        # them as the suite's own settings do (tests/conftest.py).
        "LOCALAI_ADMIN_LOCAL_ROOTS": str(tmp_path),
        "LOCALAI_ADMIN_PRIVATE_HOSTS": "127.0.0.1,localhost",
        # Plain shell builds that speak no gRPC (tests/conftest.py turns it off too).
        "LOCALAI_ADMIN_HEALTH_CHECK": "off",
    }
    handle = Cluster(tmp_path, live_server.url, env)
    try:
        yield handle
    finally:
        handle.stop()
        redis.Redis.from_url(REDIS_URL).flushdb()


def push_builds(registry: Any, repository: str) -> dict[str, str]:
    """Push a CPU and a CUDA 12 build of a one-file backend; their references by tag."""
    from tests.imagebuild import file, make_layer

    return {
        tag: registry.push_image(
            repository,
            tag,
            [make_layer([file("run.sh", f"#!/bin/sh\necho {tag}\n", 0o755)])],
        ).ref(registry.host)
        for tag in ("cpu", "cuda12")
    }


def start_two_nodes(cluster: Any, registry: Any, repository: str) -> tuple[Path, Path]:
    """Push a CPU and a CUDA 12 build, make the `foo` gallery, start a GPU and a CPU agent.

    Returns the backends folders of the GPU node and of the CPU node.
    """
    from tests.test_hardware import linux_host, nvidia_host

    builds = push_builds(registry, repository)
    make_gallery(builds["cpu"], builds["cuda12"])
    return cluster.start("gpu-node", nvidia_host), cluster.start("cpu-node", linux_host)
