"""Login throttling (django-axes) on the dashboard's and the admin's login forms."""

from __future__ import annotations

import io
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from tests.base import BaseTestCase

DASHBOARD = "/accounts/login/"
ADMIN = "/admin/login/"


class LoginThrottlingTestCase(BaseTestCase):
    def attempt(self, url: str, username: str, password: str, **headers: str) -> Any:
        return self.client.post(
            url, {"username": username, "password": password}, headers=headers
        )

    def fail_logins(self, url: str, times: int, **kwargs: Any) -> None:
        for n in range(times):
            username = kwargs.get("username") or f"guess{n}"
            address = kwargs.get("address", f"10.0.0.{n + 1}")
            r = self.client.post(
                url,
                {"username": username, "password": "wrong"},
                REMOTE_ADDR=address,
                headers=kwargs.get("headers", {}),
            )
            self.assertNotEqual(r.status_code, 302)

    def assert_locked(self, r: Any) -> None:
        self.assertEqual(r.status_code, 429)
        self.assertContains(r, "Too many failed logins", status_code=429)
        self.assertNotIn("_auth_user_id", self.client.session)

    def test_the_right_password_is_refused_after_too_many_failures_for_a_username(
        self,
    ) -> None:
        # From a new address each time: only the username ties the tries together.
        self.fail_logins(DASHBOARD, settings.AXES_FAILURE_LIMIT, username="alice")
        r = self.client.post(
            DASHBOARD,
            {"username": "alice", "password": "password"},
            REMOTE_ADDR="10.9.9.9",
        )
        self.assert_locked(r)

    def test_the_right_password_is_refused_after_too_many_failures_from_an_address(
        self,
    ) -> None:
        # A new username each time: only the address ties the tries together.
        self.fail_logins(DASHBOARD, settings.AXES_FAILURE_LIMIT, address="10.1.1.1")
        r = self.client.post(
            DASHBOARD,
            {"username": "alice", "password": "password"},
            REMOTE_ADDR="10.1.1.1",
        )
        self.assert_locked(r)

    def test_the_admin_login_is_throttled_too(self) -> None:
        self.fail_logins(ADMIN, settings.AXES_FAILURE_LIMIT, username="alice")
        r = self.client.post(ADMIN, {"username": "alice", "password": "password"})
        self.assert_locked(r)

    def test_failures_below_the_limit_still_let_the_right_password_in(self) -> None:
        self.fail_logins(DASHBOARD, settings.AXES_FAILURE_LIMIT - 1, username="alice")
        r = self.attempt(DASHBOARD, "alice", "password")
        self.assertEqual(r.status_code, 302)

    def test_an_admin_reset_lets_the_right_password_in_again(self) -> None:
        self.fail_logins(DASHBOARD, settings.AXES_FAILURE_LIMIT, username="alice")
        self.assert_locked(self.attempt(DASHBOARD, "alice", "password"))
        call_command("axes_reset", stdout=io.StringIO())
        self.assertEqual(self.attempt(DASHBOARD, "alice", "password").status_code, 302)

    def test_admins_can_lift_lockouts_in_the_admin(self) -> None:
        self.fail_logins(DASHBOARD, settings.AXES_FAILURE_LIMIT, username="bob")
        self.client.force_login(self.alice)
        r = self.client.get("/admin/axes/accessattempt/")
        self.assertContains(r, "bob")

    def test_a_script_gets_the_lockout_as_json(self) -> None:
        self.fail_logins(DASHBOARD, settings.AXES_FAILURE_LIMIT, username="alice")
        r = self.attempt(DASHBOARD, "alice", "password", Accept="application/json")
        self.assertEqual(r.status_code, 429)
        self.assertEqual(r.json()["error"]["type"], "too_many_requests")

    def test_a_forged_forwarded_address_does_not_escape_the_address_lockout(
        self,
    ) -> None:
        for n in range(settings.AXES_FAILURE_LIMIT):
            self.attempt(
                DASHBOARD, f"guess{n}", "wrong", **{"X-Forwarded-For": f"10.2.0.{n}"}
            )
        self.assert_locked(self.attempt(DASHBOARD, "alice", "password"))

    @override_settings(LOCALAI_ADMIN_TRUST_X_FORWARDED_FOR=True)
    def test_behind_a_trusted_proxy_the_address_it_appended_counts(self) -> None:
        for n in range(settings.AXES_FAILURE_LIMIT):
            self.attempt(
                DASHBOARD,
                f"guess{n}",
                "wrong",
                **{"X-Forwarded-For": f"forged, 10.3.0.{n}"},
            )
        # Other clients behind the same proxy are not locked out by those failures.
        r = self.attempt(
            DASHBOARD, "alice", "password", **{"X-Forwarded-For": "10.3.1.1"}
        )
        self.assertEqual(r.status_code, 302)
