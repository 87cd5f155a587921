"""The models of LocalAI each agent reports (Node.localai_models), so a delete on a node
is refused while a model there uses the backend."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("backends", "0006_audit_metrics"),
    ]

    operations = [
        migrations.AddField(
            model_name="node",
            name="localai_models",
            field=models.JSONField(blank=True, default=list),
        ),
    ]
