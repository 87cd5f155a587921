"""Where a job runs: this host's install queue, an agent's own queue, or one job per agent.

Every job is queued from here, once its row is committed, so a worker never looks for a
row that is not there yet. Models know nothing of queues. This host's jobs go to
``INSTALLS``, never to the maintenance queue, so that slow installs cannot keep
gallery syncs and upgrade checks waiting (docs/workers.md).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.utils import timezone
from huey import Huey, RedisHuey
from huey.api import Task, TaskWrapper
from huey.utils import load_class
from redis import ConnectionPool

from backends.core.install import Installer
from backends.models import Job, Node
from backends.services import pipeline

log = logging.getLogger(__name__)

# Jobs this process marks running start after this instant; older running jobs were left
# behind by a worker that died.
PROCESS_STARTED = timezone.now()


def queue_from_settings(config: dict[str, Any]) -> Huey:
    """A Huey built from a settings dict shaped like djhuey's ``HUEY``."""
    options = {
        key: value
        for key, value in config.items()
        if key not in ("name", "huey_class", "consumer")
    }
    huey_class: type[Huey] = load_class(config["huey_class"])
    return huey_class(config["name"], **options)


INSTALLS = queue_from_settings(settings.HUEY_INSTALLS)


def closing_connections[**P, R](
    queue: Huey,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Djhuey's ``db_task`` for our own queues: a worker thread never reuses a
    connection the database closed; immediate mode (tests) keeps the test's own."""

    def decorator(fn: Callable[P, R]) -> Callable[P, R]:
        @wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            if not queue.immediate:
                close_old_connections()
            try:
                return fn(*args, **kwargs)
            finally:
                if not queue.immediate:
                    close_old_connections()

        return inner

    return decorator


_recovery = threading.Lock()
_recovered = False


@INSTALLS.on_startup()
def recover_from_a_killed_worker() -> None:
    """Once per worker process, before its first install: fail what a killed worker left
    running and tidy the backends folder (every install thread calls this hook; only the
    install consumer runs jobs, so only it may decide that a running job was orphaned)."""
    global _recovered
    with _recovery:
        if _recovered:
            return
        _recovered = True
        failed = Job.objects.fail_interrupted(Node.objects.local(), PROCESS_STARTED)
        actions = Installer(
            Path(settings.LOCALAI_BACKENDS_PATH),
            keep_versions=settings.LOCALAI_ADMIN_KEEP_VERSIONS,
        ).recover()
        if failed or actions:
            log.warning("recovered after a stop: %d job(s) failed; %s", failed, actions)


@INSTALLS.task()
@closing_connections(INSTALLS)
def run_job(job_id: str) -> str:
    return pipeline.run_job(job_id)


class NoNodes(Exception):
    """A fan-out found no agent that takes work."""


def queue_name(node_name: str) -> str:
    return f"{settings.HUEY['name']}-node-{node_name}"


@functools.cache
def _redis_pool(url: str) -> ConnectionPool:
    return ConnectionPool.from_url(url)


@functools.cache
def node_queue(name: str) -> tuple[RedisHuey, TaskWrapper[[str], str]]:
    """The Huey queue of one agent and its job task (the same in every process).

    Every node's queue shares one Redis connection pool: the controller talks to a
    fleet's queues over a few connections, not one per node."""
    queue = RedisHuey(name, connection_pool=_redis_pool(settings.HUEY_REDIS_URL))

    @queue.task(name="run_job")
    @closing_connections(queue)
    def run_job(job_id: str) -> str:
        try:
            return pipeline.run_job(job_id)
        finally:
            # An agent holds no database connection between jobs, so that a fleet
            # fits in PostgreSQL's connections (docs/distributed.md).
            if not queue.immediate:
                connection.close()

    return queue, run_job


def _runs_on_agent(job: Job) -> bool:
    return settings.DISTRIBUTED and job.node is not None and not job.node.is_local


def enqueue(job: Job) -> None:
    """Queue a job where it must run, and remember the task id for a cancel."""
    if _runs_on_agent(job):
        assert job.node is not None
        _queue, task = node_queue(queue_name(job.node.name))
        result = task(str(job.pk))
    else:
        result = run_job(str(job.pk))
    task_id = getattr(result, "id", "")
    if task_id:
        Job.objects.filter(pk=job.pk, task_id="").update(task_id=task_id)


def enqueue_on_commit(job: Job) -> None:
    transaction.on_commit(functools.partial(enqueue, job))


def revoke(job: Job) -> None:
    """Drop a cancelled job's task from its queue, so no worker starts it."""
    if not job.task_id:
        return
    if _runs_on_agent(job):
        assert job.node is not None
        queue, _task = node_queue(queue_name(job.node.name))
        queue.revoke_by_id(job.task_id)
    else:
        INSTALLS.revoke_by_id(job.task_id)


def fan_out(kind: str, target: str, *, dedup_key: str, **fields: Any) -> Job:
    """One parent job and a child per agent taking work; returns the parent.

    An active fan-out of the same backend is returned instead of starting another.
    The children are written in one insert and queued together once committed, each
    with its task id chosen beforehand: the request costs a fixed number of queries
    however many nodes there are, and the last agent starts as soon as the first.
    """
    agents = list(Node.objects.taking_work())
    if not agents:
        raise NoNodes("no online node to install on: start an agent (manage.py agent)")
    key = dedup_key.lower()
    with transaction.atomic():
        active = (
            Job.objects.select_for_update()
            .filter(node=None, parent=None, dedup_key=key, state__in=Job.ACTIVE_STATES)
            .first()
        )
        if active is not None:
            return active
        parent = Job.objects.create(
            kind=kind,
            target=target,
            dedup_key=key,
            state=Job.State.RUNNING,
            started_at=timezone.now(),
            message=f"{kind} on {len(agents)} node(s)",
            phase="fan-out",
            **fields,
        )
    busy = set(
        Job.objects.active()
        .filter(node__in=agents, dedup_key=key)
        .values_list("node_id", flat=True)
    )
    free = [agent for agent in agents if agent.pk not in busy]
    children = [
        Job(
            kind=kind,
            target=target,
            node=agent,
            dedup_key=key,
            parent=parent,
            message="queued",
            phase="queued",
            **fields,
        )
        for agent in free
    ]
    tasks = [_node_task(child) for child in children if _runs_on_agent(child)]
    try:
        with transaction.atomic():
            Job.objects.bulk_create(children)
    except IntegrityError:
        # Work on one of these nodes started meanwhile: take them one at a time.
        busy |= {agent.pk for agent in free}
        children, tasks = [], []
    transaction.on_commit(functools.partial(_enqueue_all, tasks))
    for child in children:
        if not _runs_on_agent(child):
            enqueue_on_commit(child)
    for agent in agents:
        if agent.pk in busy:
            child, created = Job.objects.open(
                kind, target, node=agent, dedup_key=key, parent=parent, **fields
            )
            if created:
                enqueue_on_commit(child)
    return parent


def _node_task(job: Job) -> tuple[RedisHuey, Task]:
    """The queue of the job's agent and the task for it, its id now stored on the job."""
    assert job.node is not None
    queue, task = node_queue(queue_name(job.node.name))
    message = task.s(str(job.pk))
    job.task_id = message.id
    return queue, message


def _enqueue_all(tasks: list[tuple[RedisHuey, Task]]) -> None:
    for queue, message in tasks:
        queue.enqueue(message)
