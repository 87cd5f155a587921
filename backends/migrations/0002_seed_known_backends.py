"""Seed the known-backends registry from the copy that ships with the app."""

from __future__ import annotations

import json
from pathlib import Path

from django.db import migrations

REGISTRY = Path(__file__).resolve().parent.parent / "data" / "known_backends.json"
# When a name appears more than once, the stronger source wins.
PRECEDENCE = {"importer": 0, "drop-in": 1, "preference-only": 2}


def seed(apps, schema_editor):  # type: ignore[no-untyped-def]
    KnownBackend = apps.get_model("backends", "KnownBackend")
    rows = sorted(
        json.loads(REGISTRY.read_text()), key=lambda r: PRECEDENCE[r["source"]]
    )
    seen: set[str] = set()
    for row in rows:
        if row["name"] in seen:
            continue
        seen.add(row["name"])
        KnownBackend.objects.create(
            name=row["name"],
            modality=row["modality"],
            auto_detect=row["auto_detect"],
            description=row.get("description", ""),
            source=row["source"],
        )


def unseed(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("backends", "KnownBackend").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("backends", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
