from __future__ import annotations

import io

from django.core.management import CommandError, call_command

from backends.models import Job
from tests.base import PipelineTestCase


class JobCommandsTestCase(PipelineTestCase):
    def call(self, *args: str) -> str:
        out = io.StringIO()
        call_command(*args, stdout=out, stderr=io.StringIO())
        return out.getvalue()

    def test_install_upgrade_and_delete_run_in_the_foreground(self) -> None:
        self.assertIn("installed foo as cpu-foo", self.call("install_backend", "foo"))
        self.assertTrue((self.backends / "cpu-foo" / "run.sh").exists())
        self.assertIn("upgraded cpu-foo", self.call("upgrade_backend", "foo"))
        self.assertIn("deleted", self.call("delete_backend", "foo"))
        self.assertEqual(list(self.backends.iterdir()), [])
        self.assertEqual(Job.objects.filter(requested_by="cli").count(), 3)

    def test_a_failure_is_a_command_error_with_the_reason(self) -> None:
        with self.assertRaisesMessage(CommandError, "no backend found"):
            self.call("install_backend", "nope")

    def test_install_from_a_uri(self) -> None:
        self.call("install_backend", "mine", "--uri", str(self.sources / "cpu-bar"))
        self.assertTrue((self.backends / "mine" / "run.sh").exists())
