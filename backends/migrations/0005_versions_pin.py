"""Pins on installed backends, and rollback jobs with the kept version they restore."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("backends", "0004_role_groups"),
    ]

    operations = [
        migrations.AddField(
            model_name="installedbackend",
            name="pinned",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="job",
            name="version_ref",
            field=models.CharField(blank=True, max_length=255),
        ),
        migrations.AlterField(
            model_name="job",
            name="kind",
            field=models.CharField(
                choices=[
                    ("install", "Install"),
                    ("upgrade", "Upgrade"),
                    ("delete", "Delete"),
                    ("rollback", "Rollback"),
                ],
                max_length=16,
            ),
        ),
    ]
