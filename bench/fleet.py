"""Figures: a fleet of real agents on PostgreSQL + Redis, fanning out and going offline.

One fleet per run, because starting it is the expensive part (50 Django processes on
two cores take about a minute, never timed): a controller on a fresh PostgreSQL
database and a Redis database of the benchmark's own (``BENCH_FLEET_REDIS_URL``,
flushed before and after), gunicorn (``bench.polling.GUNICORN_ARGS``) serving the API
the agents and the poller use, the controller's ``manage.py run_worker`` (its periodic
sweep), and ``BENCH_FLEET_NODES`` agents (default 50): ``manage.py agent`` processes,
each with its own backends folder and a forced capability, every other one CUDA 12,
at ``nice`` ``BENCH_FLEET_AGENT_NICE`` (default 19: in a real fleet they are other
hosts, here they share the controller's cores).
The images come from Debian's ``docker-registry`` started as ``bench.install`` does:
a CPU and a CUDA 12 build of a small backend (one layer, ``run.sh`` and 256 KiB), and
the gallery has metas mapping ``default`` and ``nvidia-cuda-12`` to them, one meta per
install so that each run is a fresh install of the same image.

* ``fanout_<n>``: from ``POST /backends/apply`` of a meta until the parent job reads
  completed (every child completed), with all the agents running, against the same
  apply when only the first agent has started (the single-node install, same path).
  One warm-up of each (an agent's first job pays its imports), then ``--runs`` timed
  runs each; medians. Target: <= 5x.
  ``extra``: the apply request's seconds, the CPU seconds of the agents, gunicorn and
  the worker per fan-out, and their CPU per second with the fleet idle.
* ``fanout_<n>_status_p99``: p99 of ``GET /backends/jobs/<parent>`` over HTTP, polled
  back to back with a 50 ms pause during the timed fan-outs. Target: < 100 ms.
* ``offline_<k>_of_<n>``: ``kill -9`` of a fifth of the agents, then at once a fan-out
  whose children for those nodes are queued on their queues: the time until each
  killed node is marked offline and each of their jobs failed, polled in the
  database. Target: the offline window plus one sweep period, with the window
  shortened for the run (``BENCH_FLEET_OFFLINE_SECONDS``, default 10; heartbeats every
  ``BENCH_FLEET_HEARTBEAT_SECONDS``, default 2); the sweep runs every minute.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.common import (
    Figure,
    Unavailable,
    django_env,
    postgres_database,
    run_worker,
    setup_django,
    unavailable,
    worker_main,
)
from bench.install import Image, _push, _start_registry, _write_layer
from bench.polling import GUNICORN_ARGS

NODES = int(os.getenv("BENCH_FLEET_NODES", "50"))
KILLED = max(1, NODES // 5)
REDIS_URL = os.getenv("BENCH_FLEET_REDIS_URL", "redis://127.0.0.1:6379/14")
OFFLINE_SECONDS = int(os.getenv("BENCH_FLEET_OFFLINE_SECONDS", "10"))
HEARTBEAT_SECONDS = int(os.getenv("BENCH_FLEET_HEARTBEAT_SECONDS", "2"))
# In a real fleet each agent has a host of its own; here they share the controller's
# cores, so they yield to it (BENCH_FLEET_AGENT_NICE=0 to compete as equals).
AGENT_NICE = int(os.getenv("BENCH_FLEET_AGENT_NICE", "19"))
# The controller's worker sweeps once a minute (tasks.sweep_offline_nodes).
SWEEP_SECONDS = 60
FANOUT_RATIO = 5.0
STATUS_P99_MS = 100.0
POLL_PAUSE = 0.05
IDLE_SECONDS = 10
PAYLOAD = 256 << 10
TOKEN = "bench-fleet-registration"
CAPABILITIES = ("default", "nvidia-cuda-12")
HTTPS = {"X-Forwarded-Proto": "https"}
CLOCK = os.sysconf("SC_CLK_TCK")


def figures() -> dict[str, Figure]:
    return {
        "fanout": Figure(
            f"fanout_{NODES}", "s", f"ratio <= {FANOUT_RATIO:g}", FANOUT_RATIO
        ),
        "status": Figure(
            f"fanout_{NODES}_status_p99",
            "ms",
            f"< {STATUS_P99_MS:g} ms",
            1.0,
            "below",
        ),
        "offline": Figure(
            f"offline_{KILLED}_of_{NODES}",
            "s",
            "<= offline window + sweep",
            1.0,
        ),
    }


def run(runs: int, **_: Any) -> list[Figure]:
    wanted = figures()
    missing = [t for t in ("docker-registry",) if shutil.which(t) is None]
    if missing:
        why = f"{', '.join(missing)} not installed (make system-deps)"
        return [unavailable(f, why) for f in wanted.values()]
    # A SIGTERM unwinds the stack like an error, so no agent outlives the benchmark.
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        with ExitStack() as stack:
            tmp = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-"))
            )
            fleet = Fleet(tmp, stack)
            fleet.start(stack.enter_context(postgres_database("fleet")), runs)
            _measure(fleet, wanted, runs)
    except Unavailable as exc:
        for figure in wanted.values():
            if figure.value is None and figure.status == "ok":
                unavailable(figure, str(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return list(wanted.values())


def _yield_session(path: str = "/proc/self/autogroup") -> None:
    """In an agent's new session: give the whole session the agents' niceness.

    Linux's autogroup scheduler (on by default) shares the CPU fairly between
    sessions first and applies a process's nice only inside its session, so 50
    agents each in a session of its own at nice 19 would still get 50 shares
    against gunicorn's one; a session's own nice is its share."""
    try:
        with open(path, "w") as autogroup:
            autogroup.write(str(AGENT_NICE))
    except OSError:
        pass  # no autogroup (a kernel without it): the process nice is enough


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class Fleet:
    """The controller, its registry, and the agents, all children of this process."""

    def __init__(self, tmp: Path, stack: ExitStack) -> None:
        self.tmp, self.stack = tmp, stack
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.groups: dict[int, str] = {}  # process group: what it is
        self.port = 0
        self.token = ""
        self.database_url = ""
        self.queue = f"bench-fleet-{os.getpid()}"

    def start(self, database_url: str, runs: int) -> None:
        import redis

        self.database_url = database_url
        try:
            self.redis = redis.Redis.from_url(REDIS_URL)
            self.redis.flushdb()
        except redis.RedisError as exc:
            raise Unavailable(f"Redis unavailable at {REDIS_URL}: {exc}") from None
        self.stack.callback(self.redis.flushdb)
        registry = _start_registry(self.tmp, self.stack)
        builds = self._push_builds(registry)
        env = self.env(self.tmp / "controller")
        prepared = run_worker(
            "bench.fleet",
            {
                "task": "prepare",
                "cpu": builds[0].ref(registry),
                "cuda": builds[1].ref(registry),
                "metas": self.metas(runs),
            },
            env,
        )
        self.token = prepared["token"]
        self.port = common.free_port()
        server = self.spawn(
            "gunicorn",
            [
                "-m",
                "gunicorn",
                *shlex.split(GUNICORN_ARGS),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--error-logfile",
                "-",
                "--log-level",
                "warning",
                "localai_admin.wsgi:application",
            ],
            env,
        )
        common.wait_for_port(self.port, server)
        self.spawn("worker", ["manage.py", "run_worker"], env)
        self.stack.callback(self.stop_agents)

    @staticmethod
    def metas(runs: int) -> list[str]:
        return [
            *(f"single-{i}" for i in range(runs + 1)),
            *(f"fan-{i}" for i in range(runs + 1)),
            "kill",
        ]

    def _push_builds(self, registry: int) -> list[Image]:
        def fill(tar: Any) -> int:
            import io
            import tarfile

            info = tarfile.TarInfo("lib/payload.bin")
            info.size, info.mode = PAYLOAD, 0o644
            tar.addfile(info, io.BytesIO(os.urandom(PAYLOAD)))
            return 1

        with httpx.Client(base_url=f"http://127.0.0.1:{registry}", timeout=60) as c:
            return [
                _push(c, self.tmp, "bench/fleet", _write_layer(self.tmp, fill), tag)
                for tag in ("cpu", "cuda12")
            ]

    def env(self, home: Path) -> dict[str, str]:
        env = django_env(home, self.database_url)
        env.update(
            HUEY_REDIS_URL=REDIS_URL,
            HUEY_NAME=self.queue,
            LOCALAI_ADMIN_REGISTRATION_TOKEN=TOKEN,
            LOCALAI_ADMIN_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
            LOCALAI_ADMIN_NODE_OFFLINE_SECONDS=str(OFFLINE_SECONDS),
            # The registry listens on loopback; run.sh speaks no gRPC.
            LOCALAI_ADMIN_PRIVATE_HOSTS="127.0.0.1",
            LOCALAI_ADMIN_HEALTH_CHECK="off",
        )
        return env

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        log = self.stack.enter_context((self.tmp / f"{name}.log").open("wb"))
        agent = name.startswith("agent-")
        nice = ["nice", "-n", str(AGENT_NICE)] if agent and AGENT_NICE else []
        proc = subprocess.Popen(
            [*nice, common.PYTHON, *argv],
            cwd=common.REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_yield_session if agent and AGENT_NICE else None,
        )
        self.stack.callback(common.stop, proc)
        self.groups[proc.pid] = "agents" if agent else name
        return proc

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each kind of child (agents, gunicorn, worker)."""
        used: dict[str, float] = dict.fromkeys(self.groups.values(), 0.0)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            # After the name: state, ppid, pgrp, ..., utime (12th), stime (13th).
            kind = self.groups.get(int(fields[2]))
            if kind is not None:
                used[kind] += (int(fields[11]) + int(fields[12])) / CLOCK
        return used

    def start_agents(self, count: int) -> None:
        """Start agents up to ``count`` and wait until every one is online."""
        for number in range(len(self.agents), count):
            name = f"agent-{number:03d}"
            env = self.env(self.tmp / name)
            env.update(
                LOCALAI_ADMIN_NODE_NAME=name,
                LOCALAI_FORCE_META_BACKEND_CAPABILITY=CAPABILITIES[number % 2],
            )
            self.agents[name] = self.spawn(
                name,
                ["manage.py", "agent", "--controller", f"http://127.0.0.1:{self.port}"],
                env,
            )
        deadline = time.monotonic() + 60 + 5 * count
        while self.online(list(self.agents)) < count:
            dead = [n for n, p in self.agents.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = (self.tmp / f"{(dead or ['agent-000'])[0]}.log").read_text()
                raise RuntimeError(f"agents did not come online: {tail[-800:]}")
            time.sleep(0.5)

    def stop_agents(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.agents.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def kill(self, names: list[str]) -> None:
        for name in names:
            os.killpg(self.agents[name].pid, signal.SIGKILL)
        for name in names:
            self.agents[name].wait()

    def sql(self, query: str, *params: Any) -> Any:
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
            return row[0] if row else None

    def online(self, names: list[str]) -> int:
        return int(
            self.sql(
                "SELECT count(*) FROM backends_node WHERE status = 'online' "
                "AND name = ANY(%s)",
                names,
            )
        )

    def apply(self, meta: str) -> str:
        response = httpx.post(
            f"http://127.0.0.1:{self.port}/backends/apply",
            json={"id": meta},
            headers={"Authorization": f"Bearer {self.token}", **HTTPS},
            timeout=60,
        )
        if response.status_code != 200:
            raise RuntimeError(f"apply {meta}: {response.status_code} {response.text}")
        return str(response.json()["id"])

    def install(self, meta: str) -> tuple[float, list[float], float]:
        """Apply ``meta`` and poll its status until it ends: (seconds, latencies, the
        seconds the apply request took)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {self.token}", **HTTPS}
        latencies: list[float] = []
        started = time.perf_counter()
        job = self.apply(meta)
        applied = time.perf_counter() - started
        while True:
            sent = time.perf_counter()
            connection.request("GET", f"/backends/jobs/{job}", headers=headers)
            response = connection.getresponse()
            body = response.read()
            latencies.append(time.perf_counter() - sent)
            status = json.loads(body)
            if status["processed"]:
                elapsed = time.perf_counter() - started
                break
            time.sleep(POLL_PAUSE)
        connection.close()
        if status["state"] != "completed":
            raise RuntimeError(f"{meta}: {status['state']}: {status.get('error')}")
        return elapsed, latencies, applied


def _measure(fleet: Fleet, wanted: dict[str, Figure], runs: int) -> None:
    fleet.start_agents(1)
    fleet.install("single-0")
    single = [fleet.install(f"single-{i}")[0] for i in range(1, runs + 1)]
    started = time.monotonic()
    fleet.start_agents(NODES)
    startup = time.monotonic() - started
    fleet.install("fan-0")
    idle = _used(fleet, lambda: time.sleep(IDLE_SECONDS))
    idle.pop("result")
    fanouts, latencies, applies = [], [], []
    cpu: dict[str, float] = {}
    for i in range(1, runs + 1):
        used = _used(fleet, lambda i=i: fleet.install(f"fan-{i}"))
        seconds, polled, applied = used.pop("result")
        fanouts.append(seconds)
        latencies += polled
        applies.append(applied)
        cpu = {k: cpu.get(k, 0) + v / runs for k, v in used.items()}
    fanout = wanted["fanout"]
    fanout.value, fanout.baseline = common.median(fanouts), common.median(single)
    fanout.samples = {"ours": fanouts, "baseline": single}
    fanout.detail = (
        f"{NODES} agents ({NODES - NODES // 2} CPU, {NODES // 2} CUDA 12) vs 1; "
        f"fleet started in {startup:.0f} s (not timed)"
    )
    fanout.extra = {
        "apply_seconds": applies,
        "cpu_seconds_per_fanout": cpu,
        "idle_cpu_per_second": {k: v / IDLE_SECONDS for k, v in idle.items()},
    }
    status = wanted["status"]
    status.value, status.baseline = _p99(latencies) * 1000, STATUS_P99_MS
    status.samples = {"ours": [x * 1000 for x in latencies]}
    status.detail = (
        f"{len(latencies)} polls during {runs} fan-outs, median "
        f"{common.median(latencies) * 1000:.1f} ms; gunicorn {GUNICORN_ARGS}"
    )
    _offline(fleet, wanted["offline"])


def _offline(fleet: Fleet, figure: Figure) -> None:
    # Every fifth agent, so both capabilities lose nodes.
    killed = list(fleet.agents)[::5][:KILLED]
    started = time.perf_counter()
    fleet.kill(killed)
    parent = fleet.apply("kill")
    queued = fleet.sql(
        "SELECT count(*) FROM backends_job j JOIN backends_node n ON n.id = j.node_id "
        "WHERE j.parent_id = %s AND n.name = ANY(%s)",
        parent,
        killed,
    )
    while True:
        offline = fleet.sql(
            "SELECT count(*) FROM backends_node WHERE status = 'offline' "
            "AND name = ANY(%s)",
            killed,
        )
        unfinished = fleet.sql(
            "SELECT count(*) FROM backends_job j JOIN backends_node n ON n.id = j.node_id "
            "WHERE n.name = ANY(%s) AND j.state IN ('queued', 'running')",
            killed,
        )
        if offline == len(killed) and not unfinished:
            break
        if time.perf_counter() - started > 3 * (OFFLINE_SECONDS + SWEEP_SECONDS):
            raise RuntimeError(f"{offline} of {len(killed)} killed nodes offline")
        time.sleep(0.2)
    figure.value = time.perf_counter() - started
    figure.baseline = float(OFFLINE_SECONDS + SWEEP_SECONDS)
    failed = fleet.sql(
        "SELECT count(*) FROM backends_job j JOIN backends_node n ON n.id = j.node_id "
        "WHERE j.parent_id = %s AND n.name = ANY(%s) AND j.state = 'failed'",
        parent,
        killed,
    )
    figure.detail = (
        f"{len(killed)} of {NODES} agents killed, {queued} jobs queued to them, "
        f"{failed} failed; offline window {OFFLINE_SECONDS} s, heartbeat "
        f"{HEARTBEAT_SECONDS} s, sweep every {SWEEP_SECONDS} s"
    )
    if failed != len(killed):
        figure.violations.append(f"{failed} of {len(killed)} killed nodes' jobs failed")


def _used(fleet: Fleet, work: Any) -> dict[str, Any]:
    """CPU seconds each kind of child used while ``work`` ran; its result as "result"."""
    before = fleet.cpu()
    result = work()
    used: dict[str, Any] = {k: v - before.get(k, 0) for k, v in fleet.cpu().items()}
    used["result"] = result
    return used


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# --- worker ------------------------------------------------------------------------------


def _prepare(args: dict[str, Any]) -> dict[str, str]:
    """Schema, an admin's API token, and one meta per install, before gunicorn starts."""
    setup_django()
    from django.contrib.auth import get_user_model

    from backends.models import ApiToken, Gallery

    gallery = Gallery.objects.create(name="fleet", url="file:///dev/null")
    for position, meta in enumerate(args["metas"]):
        cpu, cuda = f"cpu-{meta}", f"cuda12-{meta}"
        gallery.entries.create(
            name=meta,
            is_meta=True,
            capabilities={"default": cpu, "nvidia-cuda-12": cuda},
            position=3 * position,
        )
        gallery.entries.create(
            name=cpu, uri=args["cpu"], alias=meta, position=3 * position + 1
        )
        gallery.entries.create(
            name=cuda, uri=args["cuda"], alias=meta, position=3 * position + 2
        )
    user = get_user_model().objects.create_user(
        "bench", "bench@example.invalid", is_staff=True, is_superuser=True
    )
    _, value = ApiToken.objects.create_token(user, "bench")
    return {"token": value}


if __name__ == "__main__":
    worker_main({"prepare": _prepare})
