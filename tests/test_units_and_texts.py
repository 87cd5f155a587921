"""One convention for sizes (IEC: KiB, MiB, GiB) on the dashboard and in the API, and
texts that say each thing once, with the right article."""

from __future__ import annotations

import re

from backends.core.installed import human_size
from backends.core.text import with_article
from backends.models import Job, Node
from backends.services import jobs, pipeline
from backends.templatetags.backends_extras import size, speed
from tests.base import BaseTestCase, queued_tasks

MIB = 1024 * 1024

# What LocalAI's galleryop parseDisplayedBytes reads back from file_size and
# downloaded_size (core/services/galleryop/artifact_progress_coalescer.go): a number,
# one space, and an IEC unit.
LOCALAI_DISPLAYED_BYTES = re.compile(r"^(\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB|PiB|EiB)$")
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def localai_parse(value: str) -> int:
    match = LOCALAI_DISPLAYED_BYTES.match(value)
    assert match, f"LocalAI cannot parse {value!r}"
    return int(float(match[1]) * UNITS[match[2]])


def test_human_size_uses_iec_units() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1024) == "1.0 KiB"
    assert human_size(5 * MIB) == "5.0 MiB"
    assert human_size(3.5 * 1024**3) == "3.5 GiB"


def test_the_dashboard_filters_use_iec_units_on_one_line() -> None:
    assert size(25 * MIB) == "25.0\xa0MiB"
    assert size(None) == "0\xa0B"
    assert speed(5 * MIB) == "5.0\xa0MiB/s"


class OpStatusSizesTestCase(BaseTestCase):
    def test_the_job_status_sizes_are_what_localai_clients_parse(self) -> None:
        job = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="localai@whisper",
            state=Job.State.RUNNING,
            current_bytes=25 * MIB + 512,
            total_bytes=3 * 1024**3,
        )
        body = self.api_get(f"/backends/jobs/{job.pk}").json()
        self.assertEqual(body["file_size"], "3.0 GiB")
        self.assertEqual(body["downloaded_size"], "25.0 MiB")
        self.assertEqual(localai_parse(body["file_size"]), 3 * 1024**3)
        self.assertAlmostEqual(
            localai_parse(body["downloaded_size"]), 25 * MIB, delta=MIB // 10
        )


class JobTextsTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.bob)

    def test_a_failed_job_shows_its_error_once(self) -> None:
        job = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="localai@whisper",
            state=Job.State.FAILED,
            message="error: no space left on the backends disk",
            error="no space left on the backends disk",
        )
        r = self.client.get(f"/jobs/{job.pk}/")
        self.assertContains(r, "no space left on the backends disk", count=1)

    def test_a_running_job_shows_its_phase_and_file_once(self) -> None:
        job = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="localai@whisper",
            state=Job.State.RUNNING,
            phase="downloading",
            file_name="layer-one.tar.gz",
            message="downloading layer-one.tar.gz",
        )
        r = self.client.get(f"/jobs/{job.pk}/")
        self.assertContains(r, "<span>downloading</span>", count=1)
        self.assertNotContains(r, "downloading layer-one.tar.gz")

    def test_a_starting_job_says_starting_once(self) -> None:
        job = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="localai@whisper",
            state=Job.State.RUNNING,
            phase="starting",
            message="starting",
        )
        r = self.client.get(f"/jobs/{job.pk}/")
        self.assertContains(r, "starting", count=1)

    def test_a_conflict_names_an_upgrade_with_its_article(self) -> None:
        self.install_on_disk("cpu-whisper")
        pipeline.reconcile(Node.objects.local())
        with queued_tasks():
            jobs.upgrade("cpu-whisper")
            with self.assertRaisesMessage(
                jobs.Refused, "an upgrade of cpu-whisper is queued"
            ):
                jobs.delete("cpu-whisper")


def test_an_address_kind_takes_its_article() -> None:
    assert with_article("unspecified") == "an unspecified"
    assert with_article("loopback") == "a loopback"
