"""Read-side queries that combine the gallery tables, the disk and the node's hardware."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from backends.core import installed, resolve
from backends.models import (
    Gallery,
    GalleryBackend,
    InstalledBackend,
    KnownBackend,
    Node,
)


def local_disk(capability: str | None = None) -> dict[str, installed.DiskBackend]:
    """The local node's installed backends, read from its folders."""
    if capability is None:
        capability = Node.objects.local().current_capability()
    return installed.scan(
        settings.LOCALAI_BACKENDS_PATH,
        settings.LOCALAI_BACKENDS_SYSTEM_PATH,
        capability,
    )


def gallery_entries() -> list[GalleryBackend]:
    """Every entry of the enabled galleries, galleries in order; the first name wins."""
    seen: set[str] = set()
    entries = []
    for entry in GalleryBackend.objects.enabled().select_related("gallery"):
        key = entry.name.lower()
        if key not in seen:
            seen.add(key)
            entries.append(entry)
    return entries


def available(capability: str) -> list[dict[str, Any]]:
    """Gallery entries this node can run, in LocalAI's shape, with how metas resolve."""
    entries = gallery_entries()
    on_disk = local_disk(capability)
    rows = []
    for entry in resolve.available(entries, capability):
        row = entry.to_localai(installed=entry.name in on_disk)
        if entry.is_meta:
            choice = resolve.resolve_meta(entry, capability)
            row["resolution"] = {
                "concrete": choice.concrete,
                "explanation": choice.explanation,
            }
        rows.append(row)
    return rows


def known_backends(installed_names: set[str]) -> list[dict[str, Any]]:
    """The known-backends registry merged with what is installed, by modality then name."""
    rows: dict[str, dict[str, Any]] = {}
    for known in KnownBackend.objects.all():
        row: dict[str, Any] = {
            "name": known.name,
            "modality": known.modality,
            "auto_detect": known.auto_detect,
        }
        if known.description:
            row["description"] = known.description
        row["installed"] = known.name in installed_names
        rows[known.name] = row
    for name in installed_names - rows.keys():
        rows[name] = {
            "name": name,
            "modality": "",
            "auto_detect": False,
            "installed": True,
        }
    return sorted(rows.values(), key=lambda r: (r["modality"], r["name"]))


def galleries() -> list[dict[str, Any]]:
    return [g.to_localai() for g in Gallery.objects.filter(enabled=True)]


def cluster_available() -> list[dict[str, Any]]:
    """Distributed mode: entries that at least one online node can run (the union)."""
    entries = gallery_entries()
    capabilities = set(
        Node.objects.filter(is_local=False, status=Node.Status.ONLINE).values_list(
            "capability", flat=True
        )
    )
    runnable: set[str] = set()
    for capability in sorted(capabilities):
        runnable.update(entry.name for entry in resolve.available(entries, capability))
    installed_names = set(InstalledBackend.objects.values_list("name", flat=True))
    return [
        entry.to_localai(installed=entry.name in installed_names)
        for entry in entries
        if entry.name in runnable
    ]


def cluster_installed() -> list[dict[str, Any]]:
    """Distributed mode: each installed backend once, with the nodes that have it."""
    rows: dict[str, dict[str, Any]] = {}
    for row in InstalledBackend.objects.select_related("node").filter(
        node__is_local=False
    ):
        entry = rows.setdefault(
            row.name,
            {
                "Name": row.name,
                "RunFile": "",
                "IsMeta": row.is_meta,
                "IsSystem": row.is_system,
                "Metadata": {
                    "name": row.name,
                    "alias": row.alias,
                    "version": row.version,
                },
                "nodes": [],
            },
        )
        ref = {
            "node_id": str(row.node_id),
            "node_name": row.node.name,
            "node_status": row.node.status,
            "version": row.version,
            "digest": row.digest,
            "uri": row.uri,
            "installed_at": row.installed_at.isoformat() if row.installed_at else "",
        }
        entry["nodes"].append({key: value for key, value in ref.items() if value})
    return list(rows.values())
