from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from backends.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a staff user and print it (it is shown only once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--name", default="script", help="a label to recognise the token"
        )

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> str:
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        if not user.is_staff:
            raise CommandError(f"{username!r} is not staff: the API is for staff only")
        _token, value = ApiToken.objects.create_token(user, name)
        return value
