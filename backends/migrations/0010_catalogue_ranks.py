"""Each runs-here entry's place in the name order, and the catalogue's counts without
filters, so the default view pages from an index (docs/performance.md, "At scale")."""

from __future__ import annotations

from typing import Any

import django.db.models.deletion
from django.db import migrations, models


def forget_runs_here(apps: Any, schema_editor: Any) -> None:
    """Sets computed before this migration have no ranks: the next request recomputes."""
    apps.get_model("backends", "RunsHereSet").objects.all().delete()
    apps.get_model("backends", "RunsHere").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("backends", "0009_catalogue_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="runshere",
            name="rank",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="runshereset",
            name="release",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="runshereset",
            name="runnable",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="runshereset",
            name="runnable_release",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="runshere",
            name="entry",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="runs_on",
                to="backends.gallerybackend",
            ),
        ),
        migrations.AddIndex(
            model_name="runshere",
            index=models.Index(fields=["capability", "rank"], name="runshere_rank"),
        ),
        migrations.RunPython(forget_runs_here, migrations.RunPython.noop),
    ]
