"""API tokens: expiry, inactive users, and what the admin shows about them."""

from __future__ import annotations

import io
from datetime import timedelta

from django.core.management import CommandError, call_command
from django.utils import timezone

from backends.models import ApiToken
from tests.base import BaseTestCase


class TokenExpiryTestCase(BaseTestCase):
    def bearer(self, value: str) -> int:
        r = self.client.get(
            "/backends/known", headers={"Authorization": f"Bearer {value}"}
        )
        return r.status_code

    def test_an_expired_token_is_refused(self) -> None:
        ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
        r = self.api_get("/backends/known")
        self.assertEqual(r.status_code, 401)
        self.assertIn("expired", r.json()["error"]["message"])

    def test_a_token_before_its_expiry_is_accepted(self) -> None:
        ApiToken.objects.update(expires_at=timezone.now() + timedelta(hours=1))
        self.assertEqual(self.api_get("/backends/known").status_code, 200)

    def test_a_token_acts_with_its_users_permissions(self) -> None:
        _token, value = ApiToken.objects.create_token(self.bob, "viewer's")
        self.assertEqual(self.bearer(value), 200)
        r = self.client.post(
            "/backends/apply",
            {"id": "cpu-whisper"},
            content_type="application/json",
            headers={"Authorization": f"Bearer {value}"},
        )
        self.assertEqual(r.status_code, 403)
        self.assertEqual(r.json()["permission"], "backends.install_backend")


class CreateApiTokenTestCase(BaseTestCase):
    def call(self, *args: str) -> str:
        out = io.StringIO()
        call_command("create_api_token", *args, stdout=out)
        return out.getvalue().strip()

    def test_expires_in_sets_the_expiry(self) -> None:
        value = self.call("carol", "--expires-in", "30d")
        token = ApiToken.objects.get(user=self.carol)
        assert token.expires_at is not None
        expected = timezone.now() + timedelta(days=30)
        self.assertLess(abs(token.expires_at - expected), timedelta(minutes=1))
        self.assertIsNotNone(ApiToken.objects.authenticate(value))

    def test_a_token_without_expires_in_never_expires(self) -> None:
        self.call("carol")
        self.assertIsNone(ApiToken.objects.get(user=self.carol).expires_at)

    def test_it_refuses_an_unreadable_duration(self) -> None:
        for text in ("30", "thirty days", "0d", "-1d", "1y"):
            with (
                self.subTest(text=text),
                self.assertRaisesMessage(CommandError, "--expires-in"),
            ):
                self.call("carol", "--expires-in", text)

    def test_it_refuses_an_inactive_user(self) -> None:
        self.carol.is_active = False
        self.carol.save()
        with self.assertRaisesMessage(CommandError, "inactive"):
            self.call("carol")
        self.assertFalse(ApiToken.objects.filter(user=self.carol).exists())

    def test_it_refuses_a_user_without_a_role(self) -> None:
        with self.assertRaisesMessage(CommandError, "no role"):
            self.call("dave")


class TokenAdminTestCase(BaseTestCase):
    def test_the_admin_lists_last_use_and_expiry(self) -> None:
        self.api_get("/backends/known")
        ApiToken.objects.update(expires_at=timezone.now() + timedelta(days=3))
        self.client.force_login(self.alice)
        r = self.client.get("/admin/backends/apitoken/")
        self.assertContains(r, "Last used at")
        self.assertContains(r, "Expires at")
        # The admin shows "-" for an empty value: both columns hold a date here.
        for column in ("last_used_at", "expires_at"):
            self.assertRegex(r.content.decode(), rf'class="field-{column}[^"]*">\w')

    def test_an_admin_creates_a_token_with_an_expiry(self) -> None:
        self.client.force_login(self.alice)
        expires = timezone.now() + timedelta(days=7)
        r = self.client.post(
            "/admin/backends/apitoken/add/",
            {
                "name": "ci",
                "user": self.carol.pk,
                "expires_at_0": expires.strftime("%Y-%m-%d"),
                "expires_at_1": expires.strftime("%H:%M:%S"),
            },
        )
        self.assertEqual(r.status_code, 302)
        self.assertIsNotNone(ApiToken.objects.get(name="ci").expires_at)
