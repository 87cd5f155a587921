"""Roles against every route of the URL conf: a route that declares no permission, or
that answers a role otherwise than its permission says, fails here."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User

from backends import roles
from backends.api.metrics import scrape
from backends.models import Job, Node
from tests.base import BaseTestCase, queued_tasks, user_with_role
from tests.routes import Route, app_routes

ROUTES = list(app_routes())


class RouteTableTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(queued_tasks())
        self.gallery.sync()
        self.install_on_disk("cpu-whisper", alias="whisper")
        node = Node.objects.local()
        job = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="cpu-whisper",
            node=node,
            state=Job.State.FAILED,
        )
        self.samples: dict[str, Any] = {
            "uuid": job.pk,
            "job_id": job.pk,
            "pk": node.pk,
            "gallery-sync:pk": self.gallery.pk,
            "node_id": node.pk,
            "gallery": "localai",
            "name": "cpu-whisper",
            # A kept version's id (installed/<name>/rollback/<version>/): none is
            # kept, so the page answers 404 to those allowed, 403 to the others.
            "version": "20260101T000000000000Z",
            "key": "0" * 32,
            # An offline kit's id (installed/kits/<kit>/): none is uploaded, so the
            # page answers 404 to those allowed, 403 to the others.
            "kit": "0" * 16,
        }
        self.personas = {
            "viewer": self.bob,
            "operator": self.carol,
            "admin": self.alice,
            "": self.dave,
        }

    def request(self, route: Route, user: User | None) -> Any:
        self.client.logout()
        if user is not None:
            self.client.force_login(user)
        url = route.url(self.samples)
        if route.method == "GET":
            return self.client.get(url)
        # A session's API writes pass the CSRF check like any form: the test client
        # skips it, as a browser with the token would pass it.
        return self.client.post(url, "{}", content_type="application/json")

    def user_routes(self) -> list[Route]:
        return [route for route in ROUTES if route.permission != roles.AGENT]

    def test_every_route_declares_a_permission(self) -> None:
        undeclared = [route.route for route in ROUTES if not route.permission]
        self.assertEqual(undeclared, [])
        self.assertGreater(len(self.user_routes()), 40)

    def test_every_declared_permission_belongs_to_a_role(self) -> None:
        for route in self.user_routes():
            self.assertIn(route.permission, roles.ROLES["admin"], route.route)

    def test_anonymous_users_are_sent_to_log_in_or_get_401(self) -> None:
        for route in self.user_routes():
            with self.subTest(route=route.route):
                r = self.request(route, None)
                if route.is_api:
                    self.assertEqual(r.status_code, 401)
                    self.assertEqual(r.json()["error"]["type"], "unauthorized")
                else:
                    self.assertEqual(r.status_code, 302)
                    self.assertTrue(r["Location"].startswith("/accounts/login/"))

    def test_each_role_gets_what_its_permissions_allow_and_a_403_naming_the_rest(
        self,
    ) -> None:
        for role, user in self.personas.items():
            held = roles.ROLES.get(role, ())
            for route in self.user_routes():
                with self.subTest(role=role or "none", route=route.route):
                    r = self.request(route, user)
                    self.assertLess(r.status_code, 500)
                    if route.permission in held:
                        self.assertNotIn(r.status_code, (401, 403))
                        continue
                    self.assertEqual(r.status_code, 403)
                    if route.is_api:
                        self.assertEqual(r.json()["permission"], route.permission)
                        self.assertIn(route.permission, r.json()["error"]["message"])
                    else:
                        self.assertContains(r, str(route.permission), status_code=403)

    def test_agent_routes_take_only_the_registration_token(self) -> None:
        for route in ROUTES:
            if route.permission == roles.AGENT:
                with self.subTest(route=route.route):
                    self.client.force_login(self.alice)
                    r = self.client.post(route.url(self.samples))
                    self.assertEqual(r.status_code, 401)


class RoleGroupsTestCase(BaseTestCase):
    def test_the_migration_creates_one_group_per_role_with_its_permissions(
        self,
    ) -> None:
        for role, permissions in roles.ROLES.items():
            group = Group.objects.get(name=role)
            held = {
                f"{p.content_type.app_label}.{p.codename}"
                for p in group.permissions.select_related("content_type")
            }
            self.assertTrue(set(permissions) <= held, role)
            self.assertFalse(set(roles.ROLES["admin"]) - set(permissions) & held, role)

    def test_the_admin_group_edits_galleries_and_tokens_and_resets_lockouts(
        self,
    ) -> None:
        for permission in (
            "backends.add_gallery",
            "backends.change_apitoken",
            "axes.delete_accessattempt",
        ):
            self.assertTrue(self.alice.has_perm(permission), permission)
            self.assertFalse(self.carol.has_perm(permission), permission)

    def test_a_superuser_holds_every_permission(self) -> None:
        root = User.objects.create_superuser("root", password="password")
        self.assertTrue(all(root.has_perm(p) for p in roles.ROLES["admin"]))

    def test_staff_alone_grants_nothing(self) -> None:
        staff = user_with_role("sam", is_staff=True)
        self.client.force_login(staff)
        self.assertEqual(self.client.get("/backends/known").status_code, 403)
        self.assertEqual(self.client.get("/installed/").status_code, 403)


class RoleRulesTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(queued_tasks())
        self.folder = self.gallery_file.parent / "sources" / "local-build"
        self.folder.mkdir(parents=True)

    def post_as(self, user: User, url: str, data: Any) -> Any:
        self.client.force_login(user)
        return self.client.post(url, data, content_type="application/json")

    def test_installing_from_a_host_folder_needs_the_admin_permission(self) -> None:
        body = {"uri": str(self.folder), "name": "local-build"}
        r = self.post_as(self.carol, "/api/backends/install-external", body)
        self.assertEqual(r.status_code, 403)
        self.assertEqual(r.json()["permission"], roles.INSTALL_FROM_PATH)
        r = self.post_as(self.alice, "/api/backends/install-external", body)
        self.assertEqual(r.status_code, 200)

    def test_installing_on_a_node_from_a_host_folder_needs_the_admin_permission(
        self,
    ) -> None:
        node = Node.objects.local()
        url = f"/api/nodes/{node.pk}/backends/install"
        body = {"uri": self.folder.as_uri(), "name": "local-build"}
        r = self.post_as(self.carol, url, body)
        self.assertEqual(r.status_code, 403)
        self.assertIn(roles.INSTALL_FROM_PATH, r.json()["error"]["message"])

    def test_retrying_a_delete_needs_the_delete_permission(self) -> None:
        job = Job.objects.create(
            kind=Job.Kind.DELETE,
            target="cpu-whisper",
            node=Node.objects.local(),
            state=Job.State.FAILED,
        )
        self.client.force_login(self.carol)
        r = self.client.post(f"/jobs/{job.pk}/retry/")
        self.assertContains(r, roles.DELETE, status_code=403)

    def test_pages_show_only_the_actions_the_role_allows(self) -> None:
        self.install_on_disk("cpu-whisper")
        self.client.force_login(self.bob)
        page = self.client.get("/installed/")
        self.assertNotContains(page, "Reinstall")
        self.assertNotContains(page, "/installed/cpu-whisper/delete/")
        self.client.force_login(self.carol)
        page = self.client.get("/installed/")
        self.assertContains(page, "Reinstall")
        self.assertNotContains(page, "/installed/cpu-whisper/delete/")
        self.client.force_login(self.alice)
        self.assertContains(
            self.client.get("/installed/"), "/installed/cpu-whisper/delete/"
        )


class MetricsRouteTestCase(BaseTestCase):
    """/metrics lives outside the app's URL conf (Prometheus' path): its permission is
    checked here, with the same personas."""

    def test_metrics_takes_the_view_permission(self) -> None:
        self.assertEqual(scrape.permission, roles.VIEW)  # type: ignore[attr-defined]
        for role, user, status in (
            ("viewer", self.bob, 200),
            ("admin", self.alice, 200),
            ("none", self.dave, 403),
        ):
            with self.subTest(role=role):
                self.client.force_login(user)
                self.assertEqual(self.client.get("/metrics").status_code, status)
        self.client.logout()
        self.assertEqual(self.client.get("/metrics").status_code, 401)
