"""The health check in install jobs: wired from the settings, on the concrete build of a
meta, its failure shown as the job's error, and the switch that turns it off."""

from __future__ import annotations

from pathlib import Path

from django.test import override_settings

from backends.core.trees import remove_tree
from tests.base import PipelineTestCase
from tests.healthbackends import grpc_backend
from tests.test_settings import check


def replace_source(folder: Path, kind: str) -> None:
    remove_tree(folder)
    grpc_backend(folder, kind)


class HealthCheckJobTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        # On here (tests/conftest.py turns it off for the suite's plain shell builds).
        self.enterContext(
            override_settings(
                LOCALAI_ADMIN_HEALTH_CHECK=True, LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS=5
            )
        )

    def test_a_healthy_build_completes_the_install(self) -> None:
        replace_source(self.sources / "cpu-bar", "healthy")

        status = self.status(self.apply("cpu-bar"))

        self.assertEqual(status["state"], "completed", status)
        self.assertTrue((self.backends / "cpu-bar" / "server.py").exists())

    def test_a_failed_check_fails_the_job_with_the_output_and_keeps_the_install(
        self,
    ) -> None:
        with self.settings(LOCALAI_ADMIN_HEALTH_CHECK=False):
            self.status(self.apply("cpu-bar"))
        replace_source(self.sources / "cpu-bar", "exits")

        status = self.status(self.apply("cpu-bar", force=True))

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("health check failed", status["error"])
        self.assertIn("libcuda.so.1", status["error"])
        self.assertNotIn("hunter2secret", status["error"])
        self.assertIn("echo v1", (self.backends / "cpu-bar" / "run.sh").read_text())
        self.assertEqual(sorted(p.name for p in self.backends.iterdir()), ["cpu-bar"])

    def test_a_meta_install_checks_its_concrete_build(self) -> None:
        replace_source(self.sources / "cpu-foo", "exits")

        status = self.status(self.apply("foo"))

        self.assertEqual(status["state"], "failed", status)
        self.assertIn("exited with code 3", status["error"])
        self.assertEqual(list(self.backends.iterdir()), [])

    def test_with_the_check_off_a_broken_build_installs(self) -> None:
        replace_source(self.sources / "cpu-bar", "exits")

        with self.settings(LOCALAI_ADMIN_HEALTH_CHECK=False):
            status = self.status(self.apply("cpu-bar"))

        self.assertEqual(status["state"], "completed", status)


def test_the_health_check_switch_accepts_only_on_or_off(tmp_path: Path) -> None:
    result = check(tmp_path, LOCALAI_ADMIN_HEALTH_CHECK="maybe")
    assert result.returncode != 0
    assert "LOCALAI_ADMIN_HEALTH_CHECK must be on or off" in result.stderr


def test_the_health_timeout_must_be_positive(tmp_path: Path) -> None:
    result = check(tmp_path, LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS="0")
    assert result.returncode != 0
    assert "LOCALAI_ADMIN_HEALTH_TIMEOUT_SECONDS must be at least 1" in result.stderr
