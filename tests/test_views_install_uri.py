"""Install from a URI on the dashboard: the API's checks, errors in the form."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from backends.models import Job
from tests.base import BaseTestCase, queued_tasks

URL = "/installed/from-uri/"


class InstallFromUriTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(queued_tasks())
        self.client.force_login(self.carol)

    def test_the_installed_page_offers_the_form_to_operators(self) -> None:
        r = self.client.get("/installed/")
        self.assertContains(r, f'action="{URL}"')
        self.client.force_login(self.bob)
        self.assertNotContains(self.client.get("/installed/"), f'action="{URL}"')

    def test_it_is_for_operators(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.get(URL).status_code, 403)
        self.assertEqual(self.client.post(URL, {"uri": "x"}).status_code, 403)

    def test_it_starts_an_install_from_an_oci_image(self) -> None:
        uri = "127.0.0.1:5000/backends/custom:latest"
        r = self.client.post(URL, {"uri": uri, "name": "custom"})
        job = Job.objects.get()
        self.assertEqual((job.external_uri, job.target), (uri, "custom"))
        self.assertEqual(job.requested_by, "carol")
        self.assertRedirects(r, f"/jobs/{job.pk}/", fetch_redirect_response=False)

    def test_it_shows_the_services_refusal_in_the_form(self) -> None:
        r = self.client.post(URL, {"uri": "127.0.0.1:5000/backends/custom:latest"})
        self.assertContains(r, "specifying a name is required for OCI images")
        self.assertContains(r, 'class="install-uri"')
        self.assertFalse(Job.objects.exists())

    def test_it_requires_a_uri(self) -> None:
        r = self.client.post(URL, {"uri": "  "})
        self.assertContains(r, "This field is required.")

    def test_a_folder_on_this_host_needs_the_install_from_path_permission(
        self,
    ) -> None:
        folder = Path(settings.LOCALAI_ADMIN_LOCAL_ROOTS[0]) / "mine"
        folder.mkdir()
        r = self.client.post(URL, {"uri": str(folder)})
        self.assertContains(r, "backends.install_from_path")
        self.assertFalse(Job.objects.exists())

    def test_an_admin_installs_a_folder_under_the_local_roots(self) -> None:
        self.client.force_login(self.alice)
        folder = Path(settings.LOCALAI_ADMIN_LOCAL_ROOTS[0]) / "mine"
        folder.mkdir()
        self.client.post(URL, {"uri": str(folder)})
        self.assertEqual(Job.objects.get().external_uri, str(folder))

    def test_a_folder_outside_the_local_roots_is_refused(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(URL, {"uri": "/etc"})
        self.assertContains(r, "Not started:")
        self.assertFalse(Job.objects.exists())

    def test_it_never_shows_a_password_back(self) -> None:
        uri = "https://user:s3cret-pw@127.0.0.1:9/backend.tar.gz"
        r = self.client.post(URL, {"uri": uri, "name": "../up"})
        self.assertContains(r, "Not started:")
        self.assertNotContains(r, "s3cret-pw")
        self.assertFalse(Job.objects.exists())
