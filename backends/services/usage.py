"""Which installed backends of this host LocalAI's models use (``LOCALAI_MODELS_PATH``).

The delete refusal, the plan and the Installed page all ask here, so "in use" means the
same thing everywhere: a folder the delete would remove is one a model's ``backend:``
lands on (``core.models_usage``).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from backends.core import installed, models_usage
from backends.core.install import Installer, InstallError
from backends.services import catalogue


def models_path() -> Path | None:
    path: Path | None = settings.LOCALAI_MODELS_PATH
    return path


def users_by_folder(
    folders: dict[str, installed.DiskBackend] | None = None,
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
    return models_usage.users_by_folder(configs, folders, catalogue.local_disk())


def models_using(removed: list[Path]) -> list[str]:
    """The models that stop working when the folders ``removed`` go (sorted)."""
    users = users_by_folder()
    return sorted({model for folder in removed for model in users.get(folder.name, [])})


def delete_folders(name: str) -> list[Path]:
    """The folders deleting ``name`` removes (the installer's own plan); [] when it
    cannot be deleted (the delete's own checks say why)."""
    try:
        return Installer(Path(settings.LOCALAI_BACKENDS_PATH)).plan_delete(
            name, settings.LOCALAI_BACKENDS_SYSTEM_PATH
        )
    except InstallError:
        return []


def in_use_refusal(name: str) -> tuple[str, list[str]]:
    """Why deleting ``name`` would break models, and which; ("", []) when it would not."""
    models = models_using(delete_folders(name))
    if not models:
        return "", []
    return (
        f"{name} is used by {len(models)} model{'s' if len(models) != 1 else ''} "
        f"({', '.join(models)}): deleting it breaks them; use force to delete anyway",
        models,
    )
