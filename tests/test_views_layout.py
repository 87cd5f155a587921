from __future__ import annotations

import re

from backends.models import Job, Node
from tests.base import BaseTestCase

PAGES = [
    "/",
    "/catalogue/localai/llama-cpp/",
    "/installed/",
    "/installed/cpu-whisper/delete/",
    "/installed/kits/",
    "/known/",
    "/jobs/",
    "/galleries/",
    "/hardware/",
]


class LayoutTestCase(BaseTestCase):
    """What every page shares: navigation, CSRF, the CSP and no inline script or style."""

    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.install_on_disk("cpu-whisper", alias="whisper")
        job = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="cpu-llama-cpp",
            node=Node.objects.local(),
            state=Job.State.RUNNING,
        )
        self.pages = [*PAGES, f"/jobs/{job.pk}/"]
        self.client.force_login(self.alice)

    def test_every_page_has_the_navigation(self) -> None:
        for url in self.pages:
            r = self.client.get(url)
            self.assertEqual(r.status_code, 200, url)
            for link in (
                "/installed/",
                "/known/",
                "/jobs/",
                "/galleries/",
                "/hardware/",
                "/admin/",
            ):
                self.assertContains(r, f'href="{link}"', msg_prefix=url)
            self.assertContains(r, 'action="/accounts/logout/"', msg_prefix=url)

    def test_the_admin_link_is_for_staff_only(self) -> None:
        self.client.force_login(self.bob)
        self.assertNotContains(self.client.get("/"), 'href="/admin/"')

    def test_the_current_page_is_marked_in_the_navigation(self) -> None:
        self.assertContains(
            self.client.get("/jobs/"),
            '<a href="/jobs/" aria-current="page">Jobs</a>',
            html=True,
        )

    def test_no_page_has_inline_script_or_style(self) -> None:
        for url in self.pages:
            body = self.client.get(url).content.decode()
            self.assertNotIn(" style=", body, url)
            self.assertNotIn("<style", body, url)
            for script in re.findall(r"<script[^>]*>", body):
                self.assertIn(" src=", script, url)
            self.assertNotRegex(body, r"\son[a-z]+=", url)  # no inline event handlers

    def test_every_post_form_carries_a_csrf_token(self) -> None:
        for url in self.pages:
            body = self.client.get(url).content.decode()
            for form in re.findall(r'<form method="post".*?</form>', body, re.S):
                self.assertIn('name="csrfmiddlewaretoken"', form, url)
            self.assertIn('hx-headers=\'{"x-csrftoken": "', body, url)

    def test_pages_send_a_strict_content_security_policy(self) -> None:
        r = self.client.get("/")
        csp = r["Content-Security-Policy"]
        self.assertIn("script-src 'self'", csp)
        self.assertIn("style-src 'self'", csp)
        self.assertNotIn("unsafe-inline", csp)
        self.assertEqual(r["X-Frame-Options"], "DENY")
        self.assertEqual(r["X-Content-Type-Options"], "nosniff")

    def test_htmx_is_served_from_this_site(self) -> None:
        body = self.client.get("/").content.decode()
        self.assertIn('<script src="/static/js/htmx.min.js" defer></script>', body)
        self.assertIn("includeIndicatorStyles", body)

    def test_a_mutation_without_the_permission_gets_a_403_page_naming_it(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.post("/hardware/probe/")
        self.assertEqual(r.status_code, 403)
        self.assertContains(r, "backends.manage_nodes", status_code=403)
        self.assertTemplateUsed(r, "403.html")

    def test_a_message_reaches_an_htmx_swap_out_of_band(self) -> None:
        job = Job.objects.get()
        r = self.client.post(f"/jobs/{job.pk}/cancel/", headers={"HX-Request": "true"})
        body = r.content.decode()
        self.assertIn(
            '<div id="messages" class="messages" role="status" aria-live="polite" hx-swap-oob="true">',
            body,
        )
        self.assertIn("Cancelling install of cpu-llama-cpp.", body)

    def test_a_poll_without_news_does_not_wipe_the_messages(self) -> None:
        job = Job.objects.get()
        r = self.client.get(f"/jobs/{job.pk}/", headers={"HX-Request": "true"})
        self.assertNotContains(r, 'id="messages"')

    def test_the_login_page_renders_for_anonymous_users(self) -> None:
        self.client.logout()
        r = self.client.get("/accounts/login/?next=/jobs/")
        self.assertContains(r, 'name="next" value="/jobs/"')
        self.assertNotContains(r, 'href="/jobs/"')
