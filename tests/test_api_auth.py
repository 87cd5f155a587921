from __future__ import annotations

from django.utils import timezone

from backends.models import ApiToken
from tests.base import BaseTestCase


class ApiAuthTestCase(BaseTestCase):
    def test_it_rejects_anonymous_with_401_json(self) -> None:
        r = self.client.get("/backends/known")
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.json()["error"]["code"], 401)
        self.assertEqual(r.json()["error"]["type"], "unauthorized")

    def test_it_rejects_a_session_without_the_permission_with_403_json(self) -> None:
        self.client.force_login(self.dave)
        r = self.client.get("/backends/known")
        self.assertEqual(r.status_code, 403)
        self.assertIn("backends.view_backends", r.json()["error"]["message"])

    def test_it_accepts_a_session_with_the_permission(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get("/backends/known").status_code, 200)

    def test_it_accepts_a_bearer_token_and_records_its_use(self) -> None:
        self.assertEqual(self.api_get("/backends/known").status_code, 200)
        self.assertIsNotNone(ApiToken.objects.get().last_used_at)

    def test_it_rejects_a_wrong_token(self) -> None:
        r = self.client.get(
            "/backends/known", headers={"Authorization": "Bearer lai_nope"}
        )
        self.assertEqual(r.status_code, 401)

    def test_it_rejects_a_revoked_token(self) -> None:
        ApiToken.objects.update(revoked_at=timezone.now())
        self.assertEqual(self.api_get("/backends/known").status_code, 401)

    def test_it_rejects_a_token_of_an_inactive_user(self) -> None:
        self.alice.is_active = False
        self.alice.save()
        self.assertEqual(self.api_get("/backends/known").status_code, 401)

    def test_the_token_acts_as_its_user(self) -> None:
        token = ApiToken.objects.authenticate(self.token_value)
        assert token is not None
        self.assertEqual(token.user, self.alice)
        self.assertEqual(token.user.date_joined, self.alice.date_joined)
        self.assertFalse(token._state.adding)
        self.assertIsNone(ApiToken.objects.authenticate(self.token_value + "x"))

    def test_it_rejects_a_token_of_a_user_without_a_role(self) -> None:
        _token, value = ApiToken.objects.create_token(self.dave, "dave's")
        r = self.client.get(
            "/backends/known", headers={"Authorization": f"Bearer {value}"}
        )
        self.assertEqual(r.status_code, 403)

    def test_it_stores_only_a_hash_of_the_token(self) -> None:
        token = ApiToken.objects.get()
        self.assertNotIn(self.token_value, token.token_hash)
        self.assertTrue(self.token_value.startswith(token.prefix))

    def test_it_answers_405_json_for_a_wrong_method(self) -> None:
        r = self.api_post("/backends/known", {})
        self.assertEqual(r.status_code, 405)
        self.assertEqual(r.json()["error"]["code"], 405)

    def test_pages_redirect_anonymous_users_to_login(self) -> None:
        r = self.client.get("/")
        self.assertRedirects(
            r, "/accounts/login/?next=/", fetch_redirect_response=False
        )
