"""Which installed backends of this host LocalAI's models use (``LOCALAI_MODELS_PATH``).

The delete refusal, the plan and the Installed page all ask here, so "in use" means the
same thing everywhere: a folder the delete would remove is one a model's ``backend:``
lands on (``core.models_usage``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings

from backends.core import installed, models_usage
from backends.core.install import Installer, InstallError
from backends.models import InstalledBackend, Node
from backends.services import catalogue

log = logging.getLogger(__name__)


def models_path() -> Path | None:
    path: Path | None = settings.LOCALAI_MODELS_PATH
    return path


def users_by_folder(
    folders: Mapping[str, installed.DiskBackend] | None = None,
) -> dict[str, list[str]]:
    """This host's folder name -> the models that use it; {} when the check is off."""
    path = models_path()
    if path is None:
        return {}
    configs = models_usage.read_configs(path)
    if not configs:
        return {}
    if folders is None:
        folders = catalogue.installed_folders()
    registry = catalogue.local_disk(folders=folders)
    return models_usage.users_by_folder(configs, folders, registry)


def models_using(
    removed: list[Path], folders: Mapping[str, installed.DiskBackend] | None = None
) -> list[str]:
    """The models that stop working when the folders ``removed`` go (sorted).
    ``folders``: ``catalogue.installed_folders()`` when the caller has read them."""
    users = users_by_folder(folders)
    return sorted({model for folder in removed for model in users.get(folder.name, [])})


def delete_folders(
    name: str, folders: Mapping[str, installed.DiskBackend] | None = None
) -> list[Path]:
    """The folders deleting ``name`` removes (the installer's own plan); [] when it
    cannot be deleted (the delete's own checks say why)."""
    try:
        return Installer(Path(settings.LOCALAI_BACKENDS_PATH)).plan_delete(
            name, settings.LOCALAI_BACKENDS_SYSTEM_PATH, folders
        )
    except InstallError:
        return []


def in_use_refusal(
    name: str, folders: Mapping[str, installed.DiskBackend] | None = None
) -> tuple[str, list[str]]:
    """Why deleting ``name`` would break models, and which; ("", []) when it would not.
    ``folders``: ``catalogue.installed_folders()`` when the caller has read them."""
    return _refusal(name, models_using(delete_folders(name, folders), folders))


def _refusal(name: str, models: list[str]) -> tuple[str, list[str]]:
    if not models:
        return "", []
    return (
        f"{name} is used by {len(models)} model{'s' if len(models) != 1 else ''} "
        f"({', '.join(models)}): deleting it breaks them; use force to delete anyway",
        models,
    )


# -- distributed mode: each agent reads its own models folder ---------------------------


def model_report(capability: str) -> list[dict[str, Any]]:
    """This host's models, each with the backend it names and the folders that name
    lands on here: what an agent sends the controller (registration and heartbeats).
    The agent resolves the names itself, since only it can read its own disk; it
    passes its capability (which build an alias stands for), as asking for the local
    node would create a row for it in the shared database."""
    path = models_path()
    if path is None:
        return []
    configs = models_usage.read_configs(path)
    if not configs:
        return []
    folders = catalogue.installed_folders()
    registry = catalogue.local_disk(capability)
    cut = models_usage.REPORT_MAX_TEXT
    report: list[dict[str, Any]] = []
    size = 0
    for config in configs:
        entry = {
            "model": config.model[:cut],
            "backend": config.backend[:cut],
            "folders": sorted(
                models_usage.folders_used(config.backend, folders, registry)
            )[: models_usage.REPORT_MAX_FOLDERS],
        }
        size += len(json.dumps(entry)) + 2
        if (
            len(report) >= models_usage.REPORT_MAX_MODELS
            or size > models_usage.REPORT_MAX_BYTES
        ):
            # Past the bounds the controller takes, the rest go unprotected: said so.
            log.warning(
                "%s: only %d of %d models are reported to the controller",
                path,
                len(report),
                len(configs),
            )
            break
        report.append(entry)
    return report


def node_users_by_folder(node: Node) -> dict[str, list[str]]:
    """A node's folder name -> the models that use it, from its agent's last report
    (this host's models folder for the local node)."""
    if node.is_local:
        return users_by_folder()
    found: dict[str, set[str]] = {}
    reported = node.localai_models if isinstance(node.localai_models, list) else []
    for entry in reported:
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            continue
        folders = entry.get("folders")
        # An agent that sent no resolution: the folder of the name it asks for.
        if not isinstance(folders, list) or not folders:
            folders = [entry.get("backend")]
        for folder in folders:
            if isinstance(folder, str) and folder:
                found.setdefault(folder, set()).add(entry["model"])
    return {folder: sorted(models) for folder, models in found.items()}


def node_delete_folders(node: Node, name: str) -> list[str]:
    """The folder names deleting ``name`` removes on an agent, by the installer's rule
    (a meta takes its build along unless another meta points at it), read from the
    table the agent reconciles after each job."""
    rows = list(InstalledBackend.objects.filter(node=node))
    row = next((r for r in rows if r.name == name), None) or next(
        (r for r in rows if r.alias == name), None
    )
    if row is None:
        return [name]
    removed = [row.name]
    concrete = row.meta_backend_for if row.is_meta else ""
    shared = any(
        r.is_meta and r.name != row.name and r.meta_backend_for == concrete
        for r in rows
    )
    if concrete and not shared:
        removed.append(concrete)
    return removed


def node_in_use_refusal(node: Node, name: str) -> tuple[str, list[str]]:
    """Why deleting ``name`` from ``node`` would break models there, and which."""
    users = node_users_by_folder(node)
    models = sorted(
        {m for folder in node_delete_folders(node, name) for m in users.get(folder, [])}
    )
    reason, models = _refusal(name, models)
    return (f"on {node.name}: {reason}" if reason else ""), models
