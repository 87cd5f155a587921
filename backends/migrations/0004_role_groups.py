"""The groups "viewer", "operator" and "admin" with their permissions (backends/roles.py).

The lists are copied here, not imported: a migration must keep meaning what it meant
when it was written.
"""

from __future__ import annotations

from django.contrib.auth.management import create_permissions
from django.db import migrations

VIEWER = ["view_backends"]
OPERATOR = [
    *VIEWER,
    "install_backend",
    "upgrade_backend",
    "cancel_job",
    "retry_job",
]
ADMIN = [
    *OPERATOR,
    "delete_backend",
    "install_from_path",
    "sync_gallery",
    "manage_nodes",
    # The Django admin: galleries, tokens and the known backends registry are edited
    # there; the rest is read there.
    *(
        f"{action}_{model}"
        for model in ("gallery", "apitoken", "knownbackend")
        for action in ("add", "change", "delete", "view")
    ),
    *(
        f"view_{model}"
        for model in ("gallerybackend", "node", "installedbackend", "job")
    ),
]
# Locked-out logins are lifted by deleting their access attempts in the admin.
ADMIN_AXES = ["view_accessattempt", "delete_accessattempt", "view_accessfailurelog"]

ROLES = {"viewer": VIEWER, "operator": OPERATOR, "admin": ADMIN}


def create_groups(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Permissions are otherwise created after the last migration: these groups need
    # them now.
    for label in ("backends", "axes"):
        config = apps.get_app_config(label)
        config.models_module = True
        create_permissions(config, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        group.permissions.add(
            *Permission.objects.filter(
                content_type__app_label="backends", codename__in=codenames
            )
        )
    Group.objects.get(name="admin").permissions.add(
        *Permission.objects.filter(
            content_type__app_label="axes", codename__in=ADMIN_AXES
        )
    )


def delete_groups(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("backends", "0003_roles_and_token_expiry"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("axes", "0010_accessattemptexpiration"),
    ]
    operations = [migrations.RunPython(create_groups, delete_groups)]
