from __future__ import annotations

import json

from backends.models import Job
from tests.base import PipelineTestCase, make_build, queued_tasks
from tests.slowserver import tarball


class ApplyTestCase(PipelineTestCase):
    def test_it_installs_a_meta_as_the_build_for_this_node(self) -> None:
        r = self.apply("foo")
        self.assertEqual(r.status_code, 200)
        self.assertTrue(
            r.json()["status_url"].endswith(f"/backends/jobs/{r.json()['id']}")
        )
        status = self.status(r)
        self.assertTrue(status["processed"], status)
        self.assertNotIn("error", status)
        self.assertEqual(status["progress"], 100)
        self.assertTrue((self.backends / "cpu-foo" / "run.sh").exists())
        meta = json.loads((self.backends / "foo" / "metadata.json").read_text())
        self.assertEqual(meta["meta_backend_for"], "cpu-foo")
        self.assertEqual(meta["name"], "foo")
        concrete = json.loads((self.backends / "cpu-foo" / "metadata.json").read_text())
        self.assertEqual(concrete["alias"], "foo")
        self.assertEqual(concrete["uri"], str(self.sources / "cpu-foo"))
        self.assertIn("installed_at", concrete)

    # LocalAI installs the meta under the requested "gallery@name" (backends 7).
    def test_gallery_at_name_installs_the_meta_under_its_own_name(self) -> None:
        self.status(self.apply("localai@foo"))
        self.assertEqual(
            sorted(p.name for p in self.backends.iterdir()), ["cpu-foo", "foo"]
        )

    def test_the_installed_table_keeps_a_meta_and_its_aliased_build_apart(self) -> None:
        from backends.models import InstalledBackend

        self.status(self.apply("foo"))
        meta = InstalledBackend.objects.get(name="foo")
        self.assertTrue(meta.is_meta)
        self.assertEqual(meta.meta_backend_for, "cpu-foo")
        build = InstalledBackend.objects.get(name="cpu-foo")
        self.assertEqual(build.alias, "foo")
        self.assertGreater(build.size_bytes, 0)

    def test_a_job_measures_the_folders_it_installed_and_no_other(self) -> None:
        from backends.models import InstalledBackend
        from backends.services import pipeline

        self.status(self.apply("cpu-bar"))
        measured = InstalledBackend.objects.get(name="cpu-bar").size_bytes
        # Measuring walks every file of a folder: a job leaves the others as measured.
        (self.backends / "cpu-bar" / "extra.bin").write_bytes(b"x" * 4096)
        self.status(self.apply("foo"))
        self.assertEqual(
            InstalledBackend.objects.get(name="cpu-bar").size_bytes, measured
        )
        self.assertGreater(InstalledBackend.objects.get(name="cpu-foo").size_bytes, 0)
        # A full reconcile (an agent's start, an upgrade check) measures them all again.
        pipeline.reconcile(None)
        self.assertEqual(
            InstalledBackend.objects.get(name="cpu-bar").size_bytes, measured + 4096
        )

    def test_it_records_the_install_as_installed(self) -> None:
        self.status(self.apply("cpu-bar"))
        names = {row["Name"] for row in self.api_get("/backends").json()}
        self.assertIn("cpu-bar", names)

    def test_without_force_a_runnable_backend_is_left_alone(self) -> None:
        self.status(self.apply("cpu-bar"))
        (self.backends / "cpu-bar" / "run.sh").write_text("#!/bin/sh\necho local\n")
        status = self.status(self.apply("cpu-bar"))
        self.assertIn("already installed", status["outcome"])
        self.assertIn("local", (self.backends / "cpu-bar" / "run.sh").read_text())

    def test_force_reinstalls_and_drops_stale_files(self) -> None:
        self.status(self.apply("cpu-bar"))
        (self.backends / "cpu-bar" / "stale-lib.so").write_text("old")
        status = self.status(self.apply("cpu-bar", force=True))
        self.assertEqual(status["state"], "completed", status)
        self.assertFalse((self.backends / "cpu-bar" / "stale-lib.so").exists())

    # LocalAI deletes the working install when a forced reinstall fails (backends 9).
    def test_a_failed_forced_reinstall_keeps_the_working_install(self) -> None:
        self.status(self.apply("cpu-bar"))
        (self.sources / "cpu-bar" / "run.sh").unlink()
        status = self.status(self.apply("cpu-bar", force=True))
        self.assertEqual(status["state"], "failed")
        self.assertIn("run.sh", status["error"])
        self.assertTrue((self.backends / "cpu-bar" / "run.sh").exists())
        self.assertEqual(sorted(p.name for p in self.backends.iterdir()), ["cpu-bar"])

    def test_a_build_this_node_cannot_run_is_refused_with_the_reason(self) -> None:
        status = self.status(self.apply("cuda12-foo"))
        self.assertEqual(status["state"], "failed")
        self.assertIn("cannot run on this node", status["error"])
        self.assertFalse((self.backends / "cuda12-foo").exists())

    def test_an_unknown_backend_is_404_and_queues_nothing(self) -> None:
        r = self.apply("nope")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(
            r.json()["error"]["message"], 'no backend found with name "nope"'
        )
        self.assertFalse(Job.objects.exists())

    def test_malformed_json_is_400(self) -> None:
        r = self.client.post(
            "/backends/apply",
            "{nope",
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.token_value}"},
        )
        self.assertEqual(r.status_code, 400)
        self.assertIn("JSON", r.json()["error"]["message"])

    def test_a_missing_or_mistyped_id_is_400(self) -> None:
        self.assertEqual(self.apply("").status_code, 400)
        r = self.api_post("/backends/apply", {"id": 3})
        self.assertEqual(r.status_code, 400)
        r = self.api_post("/backends/apply", {"id": "cpu-bar", "force": "yes"})
        self.assertEqual(r.status_code, 400)

    def test_an_unsafe_name_is_400(self) -> None:
        for bad in ("../etc", "a/b", "x y", "localai@../x"):
            r = self.apply(bad)
            self.assertEqual(r.status_code, 400, bad)
        self.assertFalse(Job.objects.exists())

    def test_a_gallery_source_that_is_missing_fails_the_job_clearly(self) -> None:
        status = self.status(self.apply("broken"))
        self.assertEqual(status["state"], "failed")
        self.assertIn("missing", status["error"])
        self.assertEqual(list(self.backends.iterdir()), [])

    # LocalAI has no admission dedup: it queues and runs both (ops-api 1.7).
    def test_a_second_install_request_returns_the_active_job(self) -> None:
        with queued_tasks():
            first = self.apply("cpu-bar").json()["id"]
            second = self.apply("localai@cpu-bar").json()["id"]
        self.assertEqual(first, second)
        self.assertEqual(Job.objects.count(), 1)

    # LocalAI ignores a gallery sha256 for tarballs, which never extract (backends 4.4).
    def test_a_tarball_that_does_not_match_the_gallery_sha256_installs_nothing(
        self,
    ) -> None:
        archive = self.sources / "t.tar.gz"
        archive.write_bytes(tarball({"run.sh": b"#!/bin/sh\n"}))
        self.gallery_file.write_text(
            f"- name: cpu-t\n  uri: {archive.as_uri()}\n  sha256: {'0' * 64}\n"
        )
        self.gallery.sync(force=True)
        status = self.status(self.apply("cpu-t"))
        self.assertEqual(status["state"], "failed")
        self.assertIn("sha256 mismatch", status["error"])
        self.assertEqual(list(self.backends.iterdir()), [])

    def test_a_meta_shares_an_installed_build(self) -> None:
        make_build(self.sources / "cpu-foo", "v1")
        self.status(self.apply("foo"))
        self.status(self.apply("foo-twin"))
        meta = json.loads((self.backends / "foo-twin" / "metadata.json").read_text())
        self.assertEqual(meta["meta_backend_for"], "cpu-foo")
