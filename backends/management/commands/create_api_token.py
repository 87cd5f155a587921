from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from backends import roles
from backends.models import ApiToken
from backends.services import audit

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m`` or ``2w``."""
    match = re.fullmatch(r"([1-9][0-9]{0,5})([mhdw])", text.strip())
    if match is None:
        raise CommandError(
            f"--expires-in must be a number and a unit (m, h, d or w), e.g. 30d; "
            f"got {text!r}"
        )
    return timedelta(**{UNITS[match[2]]: int(match[1])})


class Command(BaseCommand):
    help = (
        "Create an API token for a user and print it (it is shown only once). The "
        "token acts with the user's permissions (their role)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--name", default="script", help="a label to recognise the token"
        )
        parser.add_argument(
            "--expires-in",
            default="",
            help="refuse the token after this long, e.g. 30d, 12h, 2w (default: never)",
        )

    def handle(
        self, *args: Any, username: str, name: str, expires_in: str, **options: Any
    ) -> str:
        expires_at = timezone.now() + parse_duration(expires_in) if expires_in else None
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        if not user.is_active:
            raise CommandError(f"{username!r} is inactive: its tokens would be refused")
        if not user.has_perm(roles.VIEW):
            raise CommandError(
                f"{username!r} has no role: add them to the viewer, operator or admin "
                "group first"
            )
        token, value = ApiToken.objects.create_token(user, name, expires_at=expires_at)
        audit.record(
            audit.Actor.cli(),
            "token_create",
            token.audit_label,
            "done",
        )
        return value
