"""Distributed mode: worker nodes, their queues, and jobs fanned out across them.

Each agent host runs ``manage.py agent``: it registers its Node over the HTTP API with the
registration token, heartbeats, and consumes a Huey queue of its own on Redis, so a job
for a node runs on that node's disk. The controller (the web app) creates the jobs; the
database (PostgreSQL) is where every process reads and writes their state.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone
from huey import RedisHuey

from backends.models import GalleryBackend, Job, JobConflict, Node
from backends.services import pipeline

log = logging.getLogger(__name__)


# -- registration token ----------------------------------------------------------------


def token_is_valid(presented: str) -> bool:
    """Compare the presented token with the configured one, in constant time."""
    expected = settings.LOCALAI_ADMIN_REGISTRATION_TOKEN
    if not expected:
        return bool(settings.LOCALAI_ADMIN_ALLOW_EMPTY_TOKEN)
    # Compare digests so the comparison time does not depend on the token's length.
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )


# -- node life -------------------------------------------------------------------------


def register(name: str, hardware: dict[str, Any], backends_path: str) -> Node:
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults={"backends_path": backends_path, "last_heartbeat": timezone.now()},
        create_defaults={
            "backends_path": backends_path,
            "last_heartbeat": timezone.now(),
            "is_local": False,
        },
    )
    if node.status == Node.Status.OFFLINE:
        node.status = Node.Status.ONLINE
    node.apply_hardware_dict(hardware)
    return node


def heartbeat(node: Node) -> None:
    updates: dict[str, Any] = {"last_heartbeat": timezone.now()}
    if node.status == Node.Status.OFFLINE:
        updates["status"] = Node.Status.ONLINE
    Node.objects.filter(pk=node.pk).update(**updates)


def mark_offline_nodes() -> list[str]:
    """Nodes silent for too long go offline, and their unfinished jobs fail.

    Called periodically and on the reads that show node state, so a dead agent is
    noticed even where no periodic worker runs.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.NODE_OFFLINE_SECONDS)
    silent = list(
        Node.objects.filter(is_local=False, last_heartbeat__lt=cutoff).exclude(
            status=Node.Status.OFFLINE
        )
    )
    for node in silent:
        with transaction.atomic():
            changed = (
                Node.objects.filter(pk=node.pk)
                .exclude(status=Node.Status.OFFLINE)
                .update(status=Node.Status.OFFLINE)
            )
            if not changed:
                continue
            message = f"node {node.name} went offline (no heartbeat for {settings.NODE_OFFLINE_SECONDS} s)"
            for job in Job.objects.active().filter(node=node):
                fail_job(job, message)
        log.warning("node %s is offline", node.name)
    return [node.name for node in silent]


def fail_job(job: Job, message: str) -> None:
    Job.objects.filter(pk=job.pk, state__in=Job.ACTIVE_STATES).update(
        state=Job.State.FAILED,
        error=message,
        message=f"error: {message}",
        cancellable=False,
        finished_at=timezone.now(),
    )
    if job.parent_id:
        Job.objects.settle_parent(job.parent_id)


# -- queues ----------------------------------------------------------------------------


def queue_name(node_name: str) -> str:
    return f"{settings.HUEY['name']}-node-{node_name}"


@functools.cache
def node_queue(name: str) -> tuple[RedisHuey, Any]:
    """The Huey queue of one node and its job task (the same in every process)."""
    queue = RedisHuey(name, url=settings.HUEY_REDIS_URL)

    @queue.task(name="run_job")
    def run_job(job_id: str) -> str:
        close_old_connections()
        try:
            return pipeline.run_job(job_id)
        finally:
            close_old_connections()

    return queue, run_job


def enqueue_on_node(job: Job) -> None:
    _queue, task = node_queue(queue_name(job.node.name))
    result = task(str(job.pk))
    Job.objects.filter(pk=job.pk).update(task_id=result.id)


# -- fan-out ---------------------------------------------------------------------------


def fan_out_guard(requested: str) -> dict[str, Any] | None:
    """The 409 body refusing to send a hardware-specific build to every node, or None.

    Like LocalAI, an unknown name (or a gallery that cannot be read) lets the request
    through: the job then fails with a clearer "not found" than this guard could give.
    """
    entry = GalleryBackend.objects.find(requested)
    if entry is None or entry.is_meta:
        return None
    alternative = next(
        (
            meta.name
            for meta in GalleryBackend.objects.enabled().filter(is_meta=True)
            if entry.name in meta.capabilities.values()
        ),
        "",
    )
    message = (
        f"Backend {entry.name!r} is a hardware-specific build and would not run correctly "
        "on every node of this cluster. Install it on chosen nodes instead: "
        f'POST /api/nodes/{{node_id}}/backends/install {{"backend": "{entry.name}"}}.'
    )
    if alternative:
        message += (
            f" To install on every node, use the auto-resolving backend {alternative!r}: "
            "each node picks the build for its own hardware."
        )
    return {
        "error": message,
        "code": "concrete_backend_requires_target",
        "meta_alternative": alternative,
    }


def online_nodes() -> list[Node]:
    mark_offline_nodes()
    return list(Node.objects.filter(is_local=False, status=Node.Status.ONLINE))


class NoNodes(Exception):
    pass


class InstallRefused(Exception):
    """An install request that starts no job: ``status`` is the HTTP status to answer."""

    def __init__(
        self, status: int, message: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def start_install(target: str, *, force: bool = False, requested_by: str = "") -> Job:
    """Install a gallery backend, the same way from the API and the dashboard.

    Single node: a job on the local node. Distributed mode: the fan-out guard, then a
    parent job with a child per online node.
    """
    entry = GalleryBackend.objects.find(target)
    dedup_key = entry.name if entry else target
    if settings.DISTRIBUTED:
        if (refusal := fan_out_guard(target)) is not None:
            raise InstallRefused(409, refusal["error"], refusal)
        try:
            return start_fan_out(
                Job.Kind.INSTALL,
                target,
                dedup_key=dedup_key,
                force=force,
                requested_by=requested_by,
            )
        except NoNodes as exc:
            raise InstallRefused(409, str(exc)) from None
    if entry is None:
        raise InstallRefused(404, f'no backend found with name "{target}"')
    try:
        return Job.objects.start(
            Job.Kind.INSTALL,
            target,
            force=force,
            requested_by=requested_by,
            dedup_key=dedup_key,
        )
    except JobConflict as exc:
        raise InstallRefused(409, str(exc)) from None


def start_fan_out(kind: str, target: str, *, dedup_key: str, **fields: Any) -> Job:
    """One parent job and a child per online node; returns the parent (or the active one)."""
    nodes = online_nodes()
    if not nodes:
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
            message=f"{kind} on {len(nodes)} node(s)",
            phase="fan-out",
            **fields,
        )
    for node in nodes:
        Job.objects.start(
            kind, target, node=node, dedup_key=key, parent=parent, **fields
        )
    return parent
