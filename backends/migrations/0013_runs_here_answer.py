"""Each runs-here entry's place in gallery order (null when an earlier gallery's entry
wins its name) and a meta's resolution, so /backends/available reads its rows from an
index in order (docs/performance.md, "How cost grows")."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models


def forget_runs_here(apps: Any, schema_editor: Any) -> None:
    """Sets computed before this migration have no gallery ranks: the next request
    recomputes."""
    apps.get_model("backends", "RunsHereSet").objects.all().delete()
    apps.get_model("backends", "RunsHere").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("backends", "0012_gallery_entries_replaced_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="runshere",
            name="gallery_rank",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="runshere",
            name="concrete",
            field=models.CharField(blank=True, default="", max_length=255),
        ),
        migrations.AddField(
            model_name="runshere",
            name="explanation",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddIndex(
            model_name="runshere",
            index=models.Index(
                fields=["capability", "gallery_rank"], name="runshere_gallery_rank"
            ),
        ),
        migrations.RunPython(forget_runs_here, migrations.RunPython.noop),
    ]
