"""Request limits and Django's own errors under /api and /backends: always the JSON
envelope, never a 500 for a hostile body, never a stack trace."""

from __future__ import annotations

from typing import Any

from django.test import Client, override_settings

from backends.api.http import MAX_BODY, MAX_DEPTH, nesting_depth
from backends.models import Node
from tests.base import BaseTestCase, queued_tasks
from tests.routes import app_routes

REGISTRATION_TOKEN = "registration-secret"


def body_routes() -> list[Any]:
    return [
        route
        for route in app_routes()
        if route.contract is not None and route.contract.body is not None
    ]


@override_settings(LOCALAI_ADMIN_REGISTRATION_TOKEN=REGISTRATION_TOKEN)
class BodyLimitsTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(queued_tasks())
        node = Node.objects.local()
        # Routes with a body under /backends/<name> (delete, upgrade, rollback) need a
        # name.
        self.samples = {"node_id": node.pk, "name": "cpu-whisper"}

    def post_each(self, body: bytes) -> list[tuple[str, Any]]:
        answers = []
        for route in body_routes():
            token = (
                REGISTRATION_TOKEN
                if route.contract.auth == "agent"
                else self.token_value
            )
            r = self.client.post(
                route.url(self.samples),
                body,
                content_type="application/json",
                headers={"Authorization": f"Bearer {token}"},
            )
            answers.append((route.route, r))
        return answers

    def assert_envelope(self, r: Any, status: int) -> None:
        self.assertEqual(r.status_code, status)
        self.assertEqual(r["Content-Type"], "application/json")
        self.assertEqual(r.json()["error"]["code"], status)

    def test_the_routes_with_a_body_are_the_ones_the_issue_names(self) -> None:
        routes = {route.route for route in body_routes()}
        self.assertIn("backends/apply", routes)
        self.assertIn("api/backends/install-external", routes)
        self.assertIn("api/nodes/<str:node_id>/backends/install", routes)

    def test_json_nested_10000_levels_deep_answers_400_on_every_route(self) -> None:
        deep = b'{"id": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
        for route, r in self.post_each(deep):
            with self.subTest(route=route):
                self.assert_envelope(r, 400)
                self.assertIn("deeper than", r.json()["error"]["message"])

    def test_a_body_over_the_limit_answers_413_on_every_route(self) -> None:
        big = b'{"id": "' + b"x" * MAX_BODY + b'"}'
        for route, r in self.post_each(big):
            with self.subTest(route=route):
                self.assert_envelope(r, 413)

    def test_a_body_over_djangos_own_limit_answers_413_too(self) -> None:
        huge = b'{"id": "' + b"x" * (3 * 1024 * 1024) + b'"}'
        for route, r in self.post_each(huge):
            with self.subTest(route=route):
                self.assert_envelope(r, 413)


class NestingDepthTestCase(BaseTestCase):
    def test_brackets_inside_strings_do_not_count(self) -> None:
        self.assertEqual(nesting_depth(b'{"a": "[[[[{{{{\\"[["}'), 1)
        self.assertEqual(nesting_depth(b'{"a": [{"b": []}]}'), 4)

    def test_a_body_at_the_limit_is_accepted(self) -> None:
        nested = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
        r = self.client.post(
            "/backends/apply",
            b'{"id": ' + nested + b"}",
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.token_value}"},
        )
        self.assertEqual(r.status_code, 400)
        self.assertIn("id must be a string", r.json()["error"]["message"])


class DjangoErrorsTestCase(BaseTestCase):
    def test_a_csrf_failure_on_an_api_post_with_a_session_answers_json_403(
        self,
    ) -> None:
        client = Client(enforce_csrf_checks=True)
        client.force_login(self.alice)
        r = client.post(
            "/backends/apply", {"id": "cpu-whisper"}, content_type="application/json"
        )
        self.assertEqual(r.status_code, 403)
        self.assertEqual(r.json()["error"]["type"], "forbidden")
        self.assertIn("CSRF", r.json()["error"]["message"])

    def test_an_unknown_route_answers_json_404(self) -> None:
        for url in ("/api/no-such-route", "/backends/no/such/route"):
            with self.subTest(url=url):
                r = self.api_get(url)
                self.assertEqual(r.status_code, 404)
                self.assertEqual(r.json()["error"]["type"], "not_found")

    @override_settings(ROOT_URLCONF="tests.urls_failing", DEBUG=False)
    def test_an_unhandled_exception_in_an_api_view_answers_json_500_without_trace(
        self,
    ) -> None:
        client = Client(raise_request_exception=False)
        r = client.get(
            "/api/failing", headers={"Authorization": f"Bearer {self.token_value}"}
        )
        self.assertEqual(r.status_code, 500)
        self.assertEqual(
            r.json()["error"],
            {
                "code": 500,
                "message": "internal server error",
                "type": "server_error",
            },
        )
        self.assertNotIn(b"secret detail", r.content)
        self.assertNotIn(b"Traceback", r.content)

    @override_settings(ROOT_URLCONF="tests.urls_failing", DEBUG=True)
    def test_the_api_answers_json_errors_in_debug_mode_too(self) -> None:
        client = Client(raise_request_exception=False)
        headers = {"Authorization": f"Bearer {self.token_value}"}
        r = client.get("/api/failing", headers=headers)
        self.assertEqual(r.status_code, 500)
        self.assertEqual(r.json()["error"]["type"], "server_error")
        self.assertNotIn(b"secret detail", r.content)
        r = client.get("/api/no-such-route", headers=headers)
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json()["error"]["type"], "not_found")

    @override_settings(ROOT_URLCONF="tests.urls_failing", DEBUG=False)
    def test_an_unhandled_exception_in_a_page_answers_the_html_500(self) -> None:
        client = Client(raise_request_exception=False)
        client.force_login(self.alice)
        r = client.get("/failing/")
        self.assertEqual(r.status_code, 500)
        self.assertTrue(r["Content-Type"].startswith("text/html"))
        self.assertNotIn(b"secret detail", r.content)


class UnicodeTestCase(BaseTestCase):
    def test_a_lone_surrogate_in_a_body_is_a_400(self) -> None:
        r = self.client.post(
            "/backends/apply",
            '{"id": "\\udbfc"}',
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.token_value}"},
        )
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["error"]["type"], "invalid_request")
