"""LocalAI quirks (reference: localai-ops-api.md section 8, localai-backends.md section 9)
that touch the install pipeline, each pinned by a test showing what we do instead."""

from __future__ import annotations

import json
import uuid

from huey.contrib.djhuey import HUEY
from huey.storage import MemoryStorage

from backends.core import oci, resolve
from backends.models import Job
from tests.base import PipelineTestCase, make_build


class QueuedJobsTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        HUEY.immediate = False
        self.real_storage, HUEY.storage = HUEY.storage, MemoryStorage("quirks")

    def tearDown(self) -> None:
        HUEY.storage, HUEY.immediate = self.real_storage, True
        super().tearDown()

    def test_quirk_no_admission_dedup(self) -> None:
        # LocalAI queues a second install of the same backend and runs both.
        first = self.api_post("/backends/apply", {"id": "cpu-bar"}).json()["id"]
        second = self.api_post("/backends/apply", {"id": "localai@cpu-bar"}).json()[
            "id"
        ]
        self.assertEqual(first, second)
        self.assertEqual(Job.objects.count(), 1)

    def test_quirk_rest_apply_jobs_cannot_be_cancelled_while_queued(self) -> None:
        job_id = self.api_post("/backends/apply", {"id": "cpu-bar"}).json()["id"]
        status = self.api_get(f"/backends/jobs/{job_id}").json()
        self.assertTrue(status["cancellable"])
        self.assertEqual(
            self.api_post(f"/backends/jobs/{job_id}/cancel").status_code, 200
        )
        self.assertTrue(self.api_get(f"/backends/jobs/{job_id}").json()["cancelled"])

    def test_quirk_jobs_list_documented_but_not_routed(self) -> None:
        job_id = self.api_post("/backends/apply", {"id": "cpu-bar"}).json()["id"]
        self.assertIn(job_id, self.api_get("/backends/jobs").json())


class PipelineQuirksTestCase(PipelineTestCase):
    def test_quirk_unknown_job_id_answers_500(self) -> None:
        r = self.api_get(f"/backends/jobs/{uuid.uuid4()}")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json()["error"]["type"], "not_found")

    def test_quirk_failed_forced_reinstall_deletes_the_working_install(self) -> None:
        self.status(self.apply("cpu-bar"))
        (self.sources / "cpu-bar" / "run.sh").unlink()
        self.assertEqual(
            self.status(self.apply("cpu-bar", force=True))["state"], "failed"
        )
        self.assertTrue((self.backends / "cpu-bar" / "run.sh").exists())

    def test_quirk_meta_installed_under_the_requested_gallery_id(self) -> None:
        self.status(self.apply("localai@foo"))
        self.assertEqual(
            sorted(p.name for p in self.backends.iterdir()), ["cpu-foo", "foo"]
        )

    def test_quirk_no_name_validation_for_backends(self) -> None:
        self.gallery_file.write_text(
            f"- name: ok\n  capabilities: {{default: '../../escape'}}\n"
            f"- name: cpu-ok\n  uri: {self.sources / 'cpu-bar'}\n"
        )
        self.gallery.sync(force=True)
        self.assertEqual(
            self.apply("ok").status_code, 404
        )  # the unsafe meta was refused
        r = self.api_post(
            "/api/backends/install-external", {"uri": "/tmp", "name": "../x"}
        )
        self.assertEqual(r.status_code, 400)

    def test_quirk_meta_delete_follows_metadata_outside_the_root(self) -> None:
        victim = make_build(self.gallery_file.parent / "victim")
        (self.backends / "evil").mkdir()
        (self.backends / "evil" / "metadata.json").write_text(
            json.dumps({"name": "evil", "meta_backend_for": "../victim"})
        )
        with self.captureOnCommitCallbacks(execute=True):
            self.api_post("/backends/delete/evil")
        self.assertTrue((victim / "run.sh").exists())

    def test_quirk_tarball_backends_never_extract(self) -> None:
        from tests.slowserver import tarball

        archive = self.sources / "tar.tar.gz"
        archive.write_bytes(tarball({"run.sh": b"#!/bin/sh\necho tar\n"}))
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post(
                "/api/backends/install-external",
                {"uri": archive.as_uri(), "name": "tarred"},
            )
        self.assertEqual(self.status(r)["state"], "completed")
        self.assertTrue((self.backends / "tarred" / "run.sh").exists())

    def test_quirk_gallery_sha256_is_ignored_for_tarballs(self) -> None:
        from tests.slowserver import tarball

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

    def test_quirk_docker_hub_short_mirror_refs_are_unreachable(self) -> None:
        ref = oci.parse_reference("localai/localai-backends:latest-cpu-llama-cpp")
        self.assertEqual(ref.registry, "registry-1.docker.io")
        self.assertEqual(ref.repository, "localai/localai-backends")

    def test_quirk_gpu_host_silently_gets_the_cpu_build(self) -> None:
        meta = resolve_meta_entry({"default": "cpu-x", "nvidia-cuda-12": "cuda12-x"})
        self.assertEqual(
            resolve.resolve_meta(meta, "nvidia-cuda-13").concrete, "cuda12-x"
        )


def resolve_meta_entry(capabilities: dict[str, str]):  # type: ignore[no-untyped-def]
    from backends.core.gallery import GalleryEntry

    return GalleryEntry(name="x", capabilities=capabilities)
