"""The audit log (AuditEvent), readable by the admin role (roles.VIEW_AUDIT), and the
backends disk space agents report with their heartbeat."""

from __future__ import annotations

import django.db.models.deletion
import django.utils.timezone
from django.contrib.auth.management import create_permissions
from django.db import migrations, models


def grant_admin(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Permissions are otherwise created after the last migration: the group needs
    # them now.
    config = apps.get_app_config("backends")
    config.models_module = True
    create_permissions(config, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.filter(name="admin").first()
    if group is not None:
        group.permissions.add(
            *Permission.objects.filter(
                content_type__app_label="backends",
                codename__in=("view_audit", "view_auditevent"),
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("backends", "0005_versions_pin"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditEvent",
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
                (
                    "created_at",
                    models.DateTimeField(
                        db_index=True, default=django.utils.timezone.now
                    ),
                ),
                (
                    "username",
                    models.CharField(blank=True, db_index=True, max_length=150),
                ),
                ("token_name", models.CharField(blank=True, max_length=100)),
                (
                    "channel",
                    models.CharField(
                        choices=[
                            ("dashboard", "Dashboard"),
                            ("api", "API token"),
                            ("cli", "Command"),
                            ("agent", "Agent"),
                            ("admin", "Django admin"),
                            ("system", "Worker"),
                        ],
                        max_length=16,
                    ),
                ),
                ("ip", models.GenericIPAddressField(blank=True, null=True)),
                ("action", models.CharField(db_index=True, max_length=64)),
                ("target", models.CharField(blank=True, max_length=2000)),
                ("node_name", models.CharField(blank=True, max_length=255)),
                (
                    "outcome",
                    models.CharField(
                        choices=[
                            ("started", "Started"),
                            ("done", "Done"),
                            ("refused", "Refused"),
                            ("failed", "Failed"),
                        ],
                        max_length=16,
                    ),
                ),
                ("reason", models.TextField(blank=True)),
                (
                    "job",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="audit_events",
                        to="backends.job",
                    ),
                ),
            ],
            options={
                "ordering": ("-created_at", "-id"),
                "permissions": [("view_audit", "Can read the audit log")],
                "indexes": [
                    models.Index(fields=["-created_at"], name="audit_newest_first")
                ],
            },
        ),
        migrations.AddField(
            model_name="node",
            name="disk_total_bytes",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="node",
            name="disk_free_bytes",
            field=models.BigIntegerField(default=0),
        ),
        migrations.RunPython(grant_admin, migrations.RunPython.noop),
    ]
