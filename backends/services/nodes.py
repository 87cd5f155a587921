"""Distributed mode: agents register, heartbeat, and are swept offline when silent.

Each agent host runs ``manage.py agent``: it registers its Node over the HTTP API with the
registration token, heartbeats, and consumes a Huey queue of its own on Redis
(``services.dispatch``), so a job for a node runs on that node's disk. Whether a node
is offline is derived on read (``Node.current_status``); the writes that follow (the
node marked offline, its jobs failed) are done by one periodic sweep.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backends.models import Job, Node, NodeRefused
from backends.services import audit

log = logging.getLogger(__name__)


def token_is_valid(presented: str) -> bool:
    """Compare the presented registration token with the configured one, in constant time."""
    expected = settings.LOCALAI_ADMIN_REGISTRATION_TOKEN
    if not expected:
        return bool(settings.LOCALAI_ADMIN_ALLOW_EMPTY_TOKEN)
    # Compare digests so the comparison time does not depend on the token's length.
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )


def register(
    name: str,
    hardware: dict[str, Any],
    backends_path: str,
    *,
    models: list[dict[str, Any]] | None = None,
) -> Node:
    """Create or update an agent's node; ``models`` is its models report (None: keep
    the last one, as from an agent that sends none)."""
    updates: dict[str, Any] = {
        "backends_path": backends_path,
        "last_heartbeat": timezone.now(),
    }
    if models is not None:
        updates["localai_models"] = models
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults=updates,
        create_defaults={**updates, "is_local": False},
    )
    if node.status == Node.Status.OFFLINE:
        node.status = Node.Status.ONLINE
    node.apply_hardware_dict(hardware)
    return node


def heartbeat(
    node: Node,
    *,
    disk: tuple[int, int] | None = None,
    models: list[dict[str, Any]] | None = None,
) -> str:
    """Record a heartbeat, the disk space (total, free) and the models the agent
    reports; an agent that was offline is online again. Returns the status."""
    updates: dict[str, Any] = {"last_heartbeat": timezone.now()}
    if disk is not None:
        updates["disk_total_bytes"], updates["disk_free_bytes"] = disk
    if models is not None:
        updates["localai_models"] = models
    if node.status == Node.Status.OFFLINE:
        updates["status"] = Node.Status.ONLINE
    Node.objects.filter(pk=node.pk).update(**updates)
    return str(updates.get("status", node.status))


def sweep_offline() -> list[str]:
    """Mark silent agents offline and fail their unfinished jobs; returns their names.

    Run every minute by the worker (``tasks.sweep_offline_nodes``). Its cost does not
    grow with the fleet: one query when no agent is silent (every minute, as a rule),
    otherwise a fixed handful (the silent nodes locked and marked offline, their jobs
    failed in one update, the fan-outs they were part of settled), however many.
    The rows are locked, and locked rows skipped, so two sweeps never fail the same
    jobs twice.
    """
    if not Node.objects.silent().exists():
        return []
    with transaction.atomic():
        silent = dict(
            Node.objects.silent()
            .select_for_update(skip_locked=True)
            .values_list("pk", "name")
        )
        if not silent:
            return []
        Node.objects.filter(pk__in=silent).update(status=Node.Status.OFFLINE)
        Job.objects.fail_active_on(
            silent,
            f"went offline (no heartbeat for {settings.NODE_OFFLINE_SECONDS} s)",
        )
    names = sorted(silent.values())
    log.warning("node(s) offline: %s", ", ".join(names))
    return names


def drain(node: Node, *, actor: audit.Actor | None = None) -> None:
    """Stop sending the node new work (its running jobs finish); audited."""
    _change_status(node, Node.drain, "node_drain", actor)


def resume(node: Node, *, actor: audit.Actor | None = None) -> None:
    """Let a drained node take new work again; audited."""
    _change_status(node, Node.resume, "node_resume", actor)


def _change_status(
    node: Node, change: Any, action: str, actor: audit.Actor | None
) -> None:
    try:
        change(node)
    except NodeRefused as exc:
        audit.record(actor, action, node.name, "refused", reason=str(exc), node=node)
        raise
    audit.record(actor, action, node.name, "done", node=node)
