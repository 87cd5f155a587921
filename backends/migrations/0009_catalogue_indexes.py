"""Columns and indexes for a catalogue filtered, searched and sorted in the database;
the per-capability "runs here" sets; a trigram index for search on PostgreSQL."""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def derive(apps: Any, schema_editor: Any) -> None:
    """Fill the derived columns of the entries synced before this migration."""
    model = apps.get_model("backends", "GalleryBackend")
    changed = []
    for entry in model.objects.all().iterator(chunk_size=2000):
        # The rule of GalleryBackend.derived, copied: a migration must not change
        # meaning when the model does.
        tags = [str(tag) for tag in entry.tags or []]
        entry.name_key = entry.name.lower()
        entry.alias_key = entry.alias.lower()
        entry.search_text = " ".join(
            [entry.name, entry.alias, entry.description, *tags]
        ).lower()
        entry.tag_text = "".join(f"\n{t.lower()}" for t in tags) + "\n" if tags else ""
        changed.append(entry)
        if len(changed) >= 2000:
            model.objects.bulk_update(
                changed, ["name_key", "alias_key", "search_text", "tag_text"]
            )
            changed = []
    model.objects.bulk_update(
        changed, ["name_key", "alias_key", "search_text", "tag_text"]
    )


def trigram_index(apps: Any, schema_editor: Any) -> None:
    # A search is "every word is a substring": LIKE '%word%', which a trigram GIN
    # index answers on PostgreSQL. SQLite has no such index; it scans one column.
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS gallerybackend_search_trgm ON "
            "backends_gallerybackend USING gin (search_text gin_trgm_ops)"
        )


def drop_trigram_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS gallerybackend_search_trgm")


class Migration(migrations.Migration):
    dependencies = [
        ("backends", "0008_gallery_verification"),
    ]

    operations = [
        migrations.CreateModel(
            name="RunsHere",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                ("capability", models.CharField(max_length=255)),
            ],
        ),
        migrations.CreateModel(
            name="RunsHereSet",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True,
                        primary_key=True,
                        serialize=False,
                        verbose_name="ID",
                    ),
                ),
                ("capability", models.CharField(max_length=255, unique=True)),
                ("fingerprint", models.CharField(max_length=64)),
                ("tags", models.JSONField(blank=True, default=list)),
                ("total", models.PositiveIntegerField(default=0)),
                ("computed_at", models.DateTimeField(auto_now=True)),
            ],
        ),
        migrations.AddField(
            model_name="gallerybackend",
            name="alias_key",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
        migrations.AddField(
            model_name="gallerybackend",
            name="name_key",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
        migrations.AddField(
            model_name="gallerybackend",
            name="search_text",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddField(
            model_name="gallerybackend",
            name="tag_text",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddIndex(
            model_name="gallerybackend",
            index=models.Index(fields=["name_key"], name="gallerybackend_name_key"),
        ),
        migrations.AddIndex(
            model_name="gallerybackend",
            index=models.Index(fields=["alias_key"], name="gallerybackend_alias_key"),
        ),
        migrations.AddIndex(
            model_name="gallerybackend",
            index=models.Index(
                fields=["gallery", "position"], name="gallerybackend_order"
            ),
        ),
        migrations.AddField(
            model_name="runshere",
            name="entry",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="backends.gallerybackend",
            ),
        ),
        migrations.AddConstraint(
            model_name="runshere",
            constraint=models.UniqueConstraint(
                fields=("capability", "entry"), name="unique_runs_here"
            ),
        ),
        migrations.RunPython(derive, migrations.RunPython.noop),
        migrations.RunPython(trigram_index, drop_trigram_index),
    ]
