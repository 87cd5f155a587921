"""Upgrade detection: compare what a node has installed with what the galleries offer.

A gallery version, when both sides have one, decides. Without versions, an OCI build is
compared by digest: the registry's current manifest digest against the one recorded at
install time. The result is cached on the InstalledBackend rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import models
from django.utils import timezone

from backends.core import oci
from backends.core.redact import redact_message
from backends.core.sources import looks_like_oci
from backends.models import WATCH_WINDOW, GalleryBackend, InstalledBackend, Node
from backends.services.pipeline import reconcile, registry_client

log = logging.getLogger(__name__)

DEV_SUFFIX = "-development"


def check(node: Node, client: oci.RegistryClient | None = None) -> int:
    """Re-evaluate every installed backend of ``node``; returns how many can be upgraded.

    This host's own node is reconciled from its disk first; an agent's rows are kept
    current by the agent itself.
    """
    if node.is_local:
        reconcile(node)
    rows = list(InstalledBackend.objects.filter(node=node, is_system=False))
    names = {row.name for row in rows}
    client = client or registry_client()
    found = 0
    for row in rows:
        if not row.name.endswith(DEV_SUFFIX) and row.name + DEV_SUFFIX in names:
            # The development build is installed as a drop-in: do not offer the stable one.
            verdict = (False, "", "")
        else:
            verdict = evaluate(row, client)
        row.upgrade_available, row.available_version, row.available_digest = verdict
        row.checked_at = timezone.now()
        row.save(
            update_fields=(
                "upgrade_available",
                "available_version",
                "available_digest",
                "checked_at",
            )
        )
        found += verdict[0]
    return found


def check_pending(node: Node, since: datetime, *, window: bool = True) -> bool:
    """An upgrade check of ``node`` asked for at ``since`` has not reached every one of
    its backends yet: within the watch window, or ever with ``window=False``."""
    if window and timezone.now() - since > WATCH_WINDOW:
        return False
    rows = InstalledBackend.objects.filter(node=node, is_system=False)
    return rows.filter(
        models.Q(checked_at__isnull=True) | models.Q(checked_at__lt=since)
    ).exists()


def check_all(client: oci.RegistryClient | None = None) -> int:
    """Every node that has backends: the local one, and the agents in distributed mode."""
    client = client or registry_client()
    local = Node.objects.local()
    found = check(local, client)
    for node in (
        Node.objects.exclude(pk=local.pk).filter(installed__isnull=False).distinct()
    ):
        found += check(node, client)
    return found


def evaluate(
    row: InstalledBackend, client: oci.RegistryClient
) -> tuple[bool, str, str]:
    """(upgrade available, gallery version, registry digest) for one installed backend."""
    entry = GalleryBackend.objects.find(row.name)
    if entry is None or row.is_meta:
        # A meta has nothing to download itself: its concrete build carries the upgrade.
        return False, "", ""
    if entry.version:
        return entry.version != row.version, entry.version, ""
    if not looks_like_oci(entry.uri):
        return False, "", ""
    try:
        digest = client.head_digest(entry.uri)
    except oci.OCIError as exc:
        log.warning(
            "upgrade check of %s skipped: %s",
            row.name,
            redact_message(str(exc), entry.uri),
        )
        return row.upgrade_available, row.available_version, row.available_digest
    return (not row.digest or digest != row.digest), "", digest


def upgrade_info() -> dict[str, dict[str, Any]]:
    """LocalAI's ``GET /backends/upgrades`` map: name -> UpgradeInfo.

    Across nodes, the installed version and digest are the majority's, and ``node_drift``
    lists the nodes that differ from it (which is itself a reason to upgrade).
    """
    by_name: dict[str, list[InstalledBackend]] = {}
    for row in InstalledBackend.objects.select_related("node").filter(is_system=False):
        by_name.setdefault(row.name, []).append(row)
    info = {}
    for name, rows in sorted(by_name.items()):
        version = majority(row.version for row in rows)
        digest = majority(row.digest for row in rows)
        drift = [
            {
                "node_id": str(row.node_id),
                "node_name": row.node.name,
                "version": row.version,
                "digest": row.digest,
            }
            for row in rows
            if row.version != version or row.digest != digest
        ]
        flagged = [row for row in rows if row.upgrade_available]
        if not flagged and not drift:
            continue
        first = flagged[0] if flagged else rows[0]
        info[name] = {
            "backend_name": name,
            "installed_version": version,
            "available_version": first.available_version,
            "installed_digest": digest,
            "available_digest": first.available_digest,
            "node_drift": drift,
        }
    return info


def majority(values: Iterable[str]) -> str:
    counts = Counter(values)
    if not counts:
        return ""
    # Most common; ties go to the first value seen, so the answer is stable.
    return counts.most_common(1)[0][0]
