"""Which installed backends LocalAI's models use, read from LocalAI's models folder.

LocalAI keeps one YAML config per model at the top of its models folder; its ``backend:``
field names a backend the way LocalAI looks it up: a folder name, a meta name (which
stands for the build it points at) or an alias (which stands for the build this host
prefers among those sharing it). Deleting any folder that lookup lands on breaks the
model at its next load, so the delete asks here first.

The folder is written by whoever manages the models, and a config may come from a model
gallery: every file is read as hostile input (a size cap, the safe loader, regular files
only, at most ``MAX_CONFIGS`` of them); an unreadable one is skipped with a warning
rather than hiding every other model.

No Django imports: the services pass the folder (``LOCALAI_MODELS_PATH``) in.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from backends.core.installed import DiskBackend

log = logging.getLogger(__name__)

# A model config is a few hundred bytes to a few KiB (prompt templates included); one
# over this is not a config LocalAI would load sensibly either.
MAX_CONFIG_BYTES = 1 << 20
# A models folder holds a few hundred configs at most; past this the rest is skipped
# (and said so) instead of reading an attacker-sized folder on every delete.
MAX_CONFIGS = 5000
SUFFIXES = (".yaml", ".yml")
# The bounds of an agent's models report (the controller's schema says the same): past
# them an entry is cut, since one odd config must not get a whole heartbeat refused.
REPORT_MAX_TEXT = 255
REPORT_MAX_FOLDERS = 16
# The whole report rides in one heartbeat, under the API's 64 KiB body limit.
REPORT_MAX_MODELS = 500
REPORT_MAX_BYTES = 48 * 1024

try:  # the C loader when PyYAML was built with libyaml, as the gallery parser uses
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


@dataclass(frozen=True)
class ModelConfig:
    """One model config: the model's name and the backend it asks for."""

    model: str
    backend: str
    file: str


def read_configs(
    models_path: Path,
    *,
    max_bytes: int = MAX_CONFIG_BYTES,
    max_configs: int = MAX_CONFIGS,
) -> list[ModelConfig]:
    """The model configs of ``models_path`` that name a backend, by file name.

    A missing folder reads as no models (LocalAI may not have started yet).
    """
    try:
        entries = sorted(
            (e for e in os.scandir(models_path) if e.name.endswith(SUFFIXES)),
            key=lambda e: e.name,
        )
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        log.warning("cannot list the models folder %s: %s", models_path, exc)
        return []
    if len(entries) > max_configs:
        log.warning(
            "%s holds %d model configs: only the first %d are read",
            models_path,
            len(entries),
            max_configs,
        )
        entries = entries[:max_configs]
    configs = []
    for entry in entries:
        try:
            config = _read_one(Path(entry.path), max_bytes)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            log.warning("skipping model config %s: %s", entry.name, exc)
            continue
        if config is not None:
            configs.append(config)
    return configs


def _read_one(path: Path, max_bytes: int) -> ModelConfig | None:
    # O_NONBLOCK: a FIFO named *.yaml must not hang the delete; it is refused below.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError("not a regular file")
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    data = yaml.load(raw, Loader=_Loader)  # noqa: S506 - a safe loader
    if not isinstance(data, dict):
        return None
    backend = data.get("backend")
    if not isinstance(backend, str) or not backend.strip():
        return None
    name = data.get("name")
    model = name if isinstance(name, str) and name.strip() else path.stem
    return ModelConfig(model.strip(), backend.strip(), path.name)


def folders_used(
    backend: str,
    folders: Mapping[str, DiskBackend],
    registry: Mapping[str, DiskBackend],
) -> set[str]:
    """The backend folders a model naming ``backend`` depends on.

    ``folders`` is ``installed.folders`` (each folder under its own name), ``registry``
    ``installed.scan`` (LocalAI's lookup, where an alias may take a meta's place). Both
    count: the folder of that name (and a meta's build), and what the lookup lands on.
    """
    used: set[str] = set()
    for row in (folders.get(backend), registry.get(backend)):
        if row is None:
            continue
        if row.folder is not None:
            used.add(row.folder.name)
        if row.is_meta and row.metadata and row.metadata.meta_backend_for:
            used.add(row.metadata.meta_backend_for)
    return used


def users_by_folder(
    configs: Iterable[ModelConfig],
    folders: Mapping[str, DiskBackend],
    registry: Mapping[str, DiskBackend],
) -> dict[str, list[str]]:
    """Folder name -> the models (sorted, once each) that depend on it."""
    found: dict[str, set[str]] = {}
    for config in configs:
        for folder in folders_used(config.backend, folders, registry):
            found.setdefault(folder, set()).add(config.model)
    return {folder: sorted(models) for folder, models in found.items()}
