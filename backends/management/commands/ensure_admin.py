from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the first admin user if there is no superuser yet. The password comes from "
        "LOCALAI_ADMIN_PASSWORD, or is generated and printed once."
    )

    def handle(self, *args: Any, **options: Any) -> str:
        users = get_user_model().objects
        if users.filter(is_superuser=True).exists():
            return ""
        username = os.getenv("LOCALAI_ADMIN_USERNAME", "admin")
        password = os.getenv("LOCALAI_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        users.create_superuser(username=username, email="", password=password)
        if os.getenv("LOCALAI_ADMIN_PASSWORD"):
            return f"Created admin user {username!r} with the password from LOCALAI_ADMIN_PASSWORD."
        return (
            f"Created admin user {username!r} with password: {password}\n"
            "Write it down: it is not shown again (change it at /admin/password_change/)."
        )
