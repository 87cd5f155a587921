"""Reinstall of a backend installed from a URI fetches that URI again (it is in no
gallery), with the credentials the database kept, not the redacted metadata.json copy."""

from __future__ import annotations

from backends.models import Job
from tests.base import PipelineTestCase
from tests.test_secrets_never_shown import secret_server


class ReinstallFromUriTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server = self.enterContext(secret_server())

    def test_reinstall_from_the_installed_page_fetches_the_tokenised_url_again(
        self,
    ) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post(
                "/api/backends/install-external",
                {"uri": self.server.token_uri, "name": "tokened", "alias": "tok"},
            )
        first = self.api_get(f"/backends/jobs/{r.json()['id']}").json()
        self.assertEqual(first["state"], "completed", first)
        (self.backends / "tokened" / "run.sh").write_text("#!/bin/sh\necho broken\n")
        self.client.force_login(self.alice)

        with self.captureOnCommitCallbacks(execute=True):
            self.client.post("/installed/tokened/reinstall/")

        job = Job.objects.latest("created_at")
        self.assertEqual(job.state, Job.State.COMPLETED, job.error)
        self.assertEqual(job.external_uri, self.server.token_uri)
        self.assertEqual(self.server.tokens_seen(), 2)
        self.assertIn("secret", (self.backends / "tokened" / "run.sh").read_text())
        self.assertIn(
            '"alias": "tok"', (self.backends / "tokened" / "metadata.json").read_text()
        )

    def test_reinstall_of_a_backend_from_a_host_folder_needs_the_path_permission(
        self,
    ) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            self.api_post(
                "/api/backends/install-external", {"uri": str(self.sources / "cpu-bar")}
            )
        self.client.force_login(self.carol)

        r = self.client.post("/installed/cpu-bar/reinstall/")

        self.assertEqual(r.status_code, 403)
        self.assertEqual(Job.objects.filter(kind="install").count(), 1)
