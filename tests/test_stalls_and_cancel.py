"""Deadlines and cancel against sources that trickle or stall (issue 12, item 1).

A stalled source fails the job within a few stall periods with a message that names it;
a cancel ends the job within 2 s in every phase. Either way the previous install stays
and nothing is left behind in the backends folder.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import TransactionTestCase, override_settings

from backends.core import transfer
from backends.core.gallery import GalleryFetchError, fetch_gallery
from backends.core.install import Installer, Source
from backends.core.installed import Metadata
from backends.models import Gallery, Job
from backends.services import jobs, pipeline
from tests.base import make_build
from tests.hostileserver import HostileRegistry
from tests.imagebuild import LAYER_TYPES, Blob, bomb, file, make_layer
from tests.slowserver import tarball

CANCEL_DEADLINE = 2.0
STALL = 1


def small_layer() -> Blob:
    return make_layer([file("run.sh", "#!/bin/sh\necho new\n", 0o755)])


class HostileSourceTestCase(TransactionTestCase):
    def setUp(self) -> None:
        User.objects.create_user("alice", is_staff=True)
        self.backends = Path(settings.LOCALAI_BACKENDS_PATH)
        make_build(self.backends / "cpu-slow", "old")

    def start(self, uri: str) -> tuple[Job, threading.Thread]:
        gallery = Gallery.objects.create(name="localai", url="file:///dev/null")
        gallery.entries.create(name="cpu-slow", uri=uri)
        job = Job.objects.open("install", "cpu-slow", force=True)[0]
        thread = threading.Thread(target=pipeline.run_job, args=(str(job.pk),))
        thread.start()
        self.addCleanup(thread.join, 30)
        return job, thread

    def wait_until(self, condition: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        self.fail("the job never reached the phase under test")

    def assert_untouched(self) -> None:
        self.assertIn("old", (self.backends / "cpu-slow" / "run.sh").read_text())
        # No staging folder, backup or download file is left.
        self.assertEqual(sorted(p.name for p in self.backends.iterdir()), ["cpu-slow"])

    def assert_stalls(self, uri: str, source: str) -> None:
        started = time.monotonic()
        job, thread = self.start(uri)
        thread.join(30)
        elapsed = time.monotonic() - started
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn(f"{source} stalled", job.error)
        self.assertIn("LOCALAI_ADMIN_STALL_SECONDS", job.error)
        # Two attempts at most, each a stall period and a bit.
        self.assertLess(elapsed, 5 * STALL + 2)
        self.assert_untouched()

    def assert_cancels(self, uri: str, in_phase: Callable[[], bool]) -> None:
        job, thread = self.start(uri)
        self.wait_until(
            lambda: in_phase() and Job.objects.get(pk=job.pk).state == "running"
        )
        time.sleep(0.3)  # well inside the blocked read
        asked = time.monotonic()
        self.assertTrue(jobs.cancel(job))
        self.wait_until(
            lambda: Job.objects.get(pk=job.pk).state != "running",
            timeout=CANCEL_DEADLINE + 5,
        )
        took = time.monotonic() - asked
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.CANCELLED, job.error)
        self.assertLess(took, CANCEL_DEADLINE)
        thread.join(10)
        self.assertFalse(thread.is_alive())
        self.assert_untouched()


@override_settings(LOCALAI_ADMIN_STALL_SECONDS=STALL)
class StalledSourcesFailTheJobTestCase(HostileSourceTestCase):
    def test_a_manifest_trickling_a_byte_a_second_fails_as_stalled(self) -> None:
        with HostileRegistry(small_layer()) as server:
            server.misbehave("/manifests/", "trickle")
            self.assert_stalls(
                server.ref, f"{server.host}/v2/hostile/backend/manifests/v1"
            )

    def test_a_blob_trickling_a_byte_a_second_fails_as_stalled(self) -> None:
        layer = small_layer()
        with HostileRegistry(layer) as server:
            server.misbehave(layer.digest, "trickle")
            self.assert_stalls(server.ref, f"/blobs/{layer.digest}")

    def test_a_blob_that_stops_midway_fails_as_stalled_after_one_resume(self) -> None:
        layer = small_layer()
        with HostileRegistry(layer) as server:
            server.misbehave(layer.digest, "stall")
            self.assert_stalls(
                server.ref, f"{server.host}/v2/hostile/backend/blobs/{layer.digest}"
            )
            self.assertEqual(server.hits(layer.digest), transfer.STALL_ATTEMPTS)

    def test_a_token_service_that_never_answers_fails_as_stalled(self) -> None:
        with HostileRegistry(small_layer(), token=True) as server:
            server.misbehave("/token", "silent")
            self.assert_stalls(server.ref, f"{server.host}/token")
            self.assertEqual(server.hits("/token"), transfer.STALL_ATTEMPTS)

    def test_a_tarball_trickling_a_byte_a_second_fails_as_stalled(self) -> None:
        body = tarball({"run.sh": b"#!/bin/sh\necho new\n"})
        with HostileRegistry(small_layer(), body) as server:
            server.misbehave("/backend.tar.gz", "trickle")
            # The query may hold a credential: the stall message leaves it out.
            uri = server.url("/backend.tar.gz?token=s3cret")
            self.assert_stalls(uri, f"{server.host}/backend.tar.gz")


@override_settings(LOCALAI_ADMIN_STALL_SECONDS=60)
class CancelBitesInEveryPhaseTestCase(HostileSourceTestCase):
    def test_cancel_while_the_token_service_is_silent(self) -> None:
        with HostileRegistry(small_layer(), token=True) as server:
            server.misbehave("/token", "silent")
            self.assert_cancels(server.ref, lambda: server.hits("/token") > 0)

    def test_cancel_while_the_manifest_trickles(self) -> None:
        with HostileRegistry(small_layer()) as server:
            server.misbehave("/manifests/", "trickle")
            self.assert_cancels(server.ref, lambda: server.hits("/manifests/") > 0)

    def test_cancel_while_a_blob_trickles(self) -> None:
        layer = small_layer()
        with HostileRegistry(layer) as server:
            server.misbehave(layer.digest, "trickle")
            self.assert_cancels(server.ref, lambda: server.hits(layer.digest) > 0)

    def test_cancel_while_a_blob_is_stalled_midway(self) -> None:
        layer = small_layer()
        with HostileRegistry(layer) as server:
            server.misbehave(layer.digest, "stall")
            self.assert_cancels(server.ref, lambda: server.hits(layer.digest) > 0)

    def test_cancel_while_a_tarball_trickles(self) -> None:
        body = tarball({"run.sh": b"#!/bin/sh\necho new\n"})
        with HostileRegistry(small_layer(), body) as server:
            server.misbehave("/backend.tar.gz", "trickle")
            self.assert_cancels(
                server.url("/backend.tar.gz"),
                lambda: server.hits("/backend.tar.gz") > 0,
            )

    def test_cancel_while_a_large_layer_is_extracted(self) -> None:
        # 4 GiB of zeros in 200 KiB of zstd: downloaded at once, extracted for seconds.
        layer = Blob(LAYER_TYPES["zstd"], b"".join(bomb("zstd", 4096)))
        staging = self.backends / "cpu-slow.install-tmp" / "zeros.bin"
        with HostileRegistry(layer) as server:
            self.assert_cancels(
                server.ref,
                lambda: staging.exists() and staging.stat().st_size > 0,
            )


def test_cancel_stops_a_folder_copy_within_two_seconds(tmp_path: Path) -> None:
    folder = make_build(tmp_path / "source", "new")
    # Sparse: costs no disk to make, and reads at memory speed for seconds.
    with open(folder / "weights.bin", "wb") as big:
        big.truncate(8 << 30)
    backends = tmp_path / "backends"
    make_build(backends / "big", "old")
    asked_at = time.monotonic() + 0.3
    installer = Installer(backends, should_cancel=lambda: time.monotonic() > asked_at)

    with pytest.raises(transfer.Cancelled):
        installer.install("big", Source(str(folder)), Metadata(name="big"))

    assert time.monotonic() - asked_at < CANCEL_DEADLINE
    assert "old" in (backends / "big" / "run.sh").read_text()
    assert sorted(os.listdir(backends)) == ["big"]


def test_a_gallery_trickling_a_byte_a_second_fails_the_sync_as_stalled() -> None:
    with HostileRegistry(small_layer(), b"- name: cpu-slow\n  uri: x/y:z\n") as server:
        server.misbehave("/backend.tar.gz", "trickle")
        started = time.monotonic()
        with pytest.raises(
            GalleryFetchError, match=f"{server.host}/backend.tar.gz stalled"
        ):
            fetch_gallery(server.url("/backend.tar.gz"), stall_seconds=STALL)
    assert time.monotonic() - started < 3 * STALL + 1
