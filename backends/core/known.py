"""The known-backends registry as data: its file format, and where a refresh reads it.

The registry mirrors what LocalAI's ``GET /backends/known`` is built from: its model
importers (``core/gallery/importers/``: each importer's name, modality and whether it
auto-detects), the drop-in alternatives those importers offer, and the preference-only
list in ``core/http/endpoints/localai/backend.go``. ``backends/data/known_backends.json``
is that list as of LocalAI commit 82c191a, written by hand from reading those files (the
descriptions are ours). When LocalAI adds a backend, edit the file (or write another one
in the same format) and run ``manage.py refresh_known_backends [--from FILE_OR_URL]``;
migration 0002 seeds a new database from the bundled file.

Each entry: ``{"name", "modality", "auto_detect", "description"?, "source"}`` with
``source`` one of ``importer``, ``drop-in``, ``preference-only``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.core.gallery import validate_name

BUNDLED = Path(__file__).resolve().parent.parent / "data" / "known_backends.json"
# When a name appears more than once, the stronger source wins (as in LocalAI's merge).
PRECEDENCE = {"importer": 0, "drop-in": 1, "preference-only": 2}
MAX_ENTRIES = 10_000
MAX_TEXT = {"modality": 64, "description": 2_000}  # the columns' sizes


class RegistryError(ValueError):
    """The registry file is not what a refresh can load; the message says where."""


@dataclass(frozen=True)
class KnownEntry:
    name: str
    modality: str
    auto_detect: bool
    description: str
    source: str


def parse_registry(text: str | bytes) -> list[KnownEntry]:
    """The entries of a registry file, one per name (the strongest source wins).

    All or nothing: one bad entry refuses the file, so a refresh never half-applies.
    """
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise RegistryError("the registry must be a JSON list of entries")
    if len(data) > MAX_ENTRIES:
        raise RegistryError(f"more than {MAX_ENTRIES} entries")
    entries = [_entry(index, row) for index, row in enumerate(data)]
    entries.sort(key=lambda e: PRECEDENCE[e.source])
    chosen: dict[str, KnownEntry] = {}
    for entry in entries:
        chosen.setdefault(entry.name, entry)
    return sorted(chosen.values(), key=lambda e: (e.modality, e.name))


def _entry(index: int, row: Any) -> KnownEntry:
    where = f"entry {index}"
    if not isinstance(row, dict):
        raise RegistryError(f"{where} is not an object")
    try:
        name = validate_name(row.get("name"), f"{where} name")
    except ValueError as exc:
        raise RegistryError(str(exc)) from None
    source = row.get("source")
    if source not in PRECEDENCE:
        raise RegistryError(
            f"{where} ({name}): source must be one of {', '.join(PRECEDENCE)}"
        )
    auto_detect = row.get("auto_detect", False)
    if not isinstance(auto_detect, bool):
        raise RegistryError(f"{where} ({name}): auto_detect must be true or false")
    texts = {key: row.get(key) or "" for key in ("modality", "description")}
    for key, value in texts.items():
        if not isinstance(value, str) or len(value) > MAX_TEXT[key] or "\x00" in value:
            raise RegistryError(
                f"{where} ({name}): {key} must be a string of at most "
                f"{MAX_TEXT[key]} characters"
            )
    return KnownEntry(
        name, texts["modality"], auto_detect, texts["description"], source
    )
