"""The catalogue filtered in the database: the same verdicts as the one rule, and a
gallery of 20,000 entries listed and searched correctly."""

from __future__ import annotations

import dataclasses

from backends.core import gallery as gallery_format
from backends.core import resolve
from backends.models import GalleryBackend, RunsHere
from backends.services import catalogue as read
from tests.base import REAL_GALLERY, BaseTestCase

# Every capability the real gallery's metas name, the ones only reached through a
# fallback chain, and some a forced capability may hold.
EXTRA_CAPABILITIES = (
    "default",
    "cpu",
    "nvidia-cuda-13",
    "nvidia-l4t-cuda-13",
    "darwin-x86",
    "disable",
    "riscv-something",
)


def scaled_entries(count: int) -> list[gallery_format.GalleryEntry]:
    """The real index repeated up to ``count`` entries, each copy's names (and the
    builds its metas point at) suffixed, so every copy resolves like the original."""
    parsed = gallery_format.parse_gallery(REAL_GALLERY.read_bytes(), "big").entries
    entries: list[gallery_format.GalleryEntry] = []
    copy = 0
    while len(entries) < count:
        for entry in parsed[: count - len(entries)]:
            suffix = f"-c{copy}" if copy else ""
            entries.append(
                dataclasses.replace(
                    entry,
                    name=entry.name + suffix,
                    capabilities={
                        key: build + suffix for key, build in entry.capabilities.items()
                    },
                )
            )
        copy += 1
    return entries


class RunsHereTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.url = REAL_GALLERY.as_uri()
        self.gallery.save()
        self.gallery.sync()

    def test_the_database_filter_equals_the_verdict_for_every_capability(self) -> None:
        entries = list(GalleryBackend.objects.enabled().select_related("gallery"))
        concretes = resolve.concretes_by_name(entries)
        capabilities = {key for e in entries for key in e.capabilities}
        capabilities.update(EXTRA_CAPABILITIES)
        for capability in sorted(capabilities):
            with self.subTest(capability=capability):
                read.runs_here_set(capability)
                in_database = set(
                    RunsHere.objects.filter(capability=capability).values_list(
                        "entry_id", flat=True
                    )
                )
                by_rule = {
                    e.pk
                    for e in entries
                    if resolve.verdict(e, concretes, capability).runs_here
                }
                self.assertEqual(in_database, by_rule)

    def test_the_available_answer_is_streamed_and_follows_the_verdict(self) -> None:
        r = self.api_get("/backends/available")
        self.assertTrue(r.streaming)
        entries = resolve.first_by_name(GalleryBackend.objects.enabled())
        concretes = resolve.concretes_by_name(entries)
        expected = [
            e.name
            for e in entries
            if resolve.verdict(e, concretes, "default").runs_here
        ]
        self.assertEqual([row["name"] for row in r.json()], expected)

    def test_the_known_backends_answer_is_streamed(self) -> None:
        r = self.api_get("/backends/known")
        self.assertTrue(r.streaming)
        self.assertIsInstance(r.json(), list)

    def test_a_sync_makes_the_runs_here_set_stale(self) -> None:
        before = read.runs_here_set("default")
        self.gallery.sync(force=True)
        after = read.runs_here_set("default")
        self.assertNotEqual(before.fingerprint, after.fingerprint)
        shown = RunsHere.objects.filter(capability="default")
        self.assertEqual(
            shown.filter(entry__in=GalleryBackend.objects.all()).count(), shown.count()
        )

    def test_a_sync_of_an_unchanged_source_keeps_the_runs_here_set(self) -> None:
        before = read.runs_here_set("default")
        self.assertIn("unchanged", self.gallery.sync())
        after = read.runs_here_set("default")
        self.assertEqual(
            (after.pk, after.fingerprint, after.computed_at),
            (before.pk, before.fingerprint, before.computed_at),
        )

    def test_a_set_written_twice_at_once_keeps_one_row_per_entry(self) -> None:
        read.runs_here_set("default")
        shown = RunsHere.objects.filter(capability="default")
        rows = list(shown.values_list(*RunsHere.ROW_FIELDS))
        # What a second first request, computing the same set, inserts.
        RunsHere.objects.insert_rows(rows)
        self.assertEqual(shown.count(), len(rows))
        self.assertEqual(sorted(shown.values_list(*RunsHere.ROW_FIELDS)), sorted(rows))

    def test_the_set_keeps_each_metas_resolution_by_the_verdict(self) -> None:
        read.runs_here_set("default")
        entries = list(GalleryBackend.objects.enabled())
        concretes = resolve.concretes_by_name(entries)
        kept = {
            run.entry_id: (run.concrete, run.explanation)
            for run in RunsHere.objects.filter(capability="default")
        }
        for entry in entries:
            resolution = resolve.verdict(entry, concretes, "default").resolution
            if entry.pk in kept:
                expected = (
                    (resolution.concrete, resolution.explanation)
                    if resolution
                    else ("", "")
                )
                self.assertEqual(kept[entry.pk], expected, entry.name)


class LargeCatalogueTestCase(BaseTestCase):
    """20,000 entries: the real gallery 20 times with renamed copies."""

    COUNT = 20_000

    def setUp(self) -> None:
        super().setUp()
        GalleryBackend.objects.insert_entries(self.gallery, scaled_entries(self.COUNT))
        self.gallery.entry_count = self.COUNT
        self.gallery.save()
        self.client.force_login(self.bob)

    def test_it_pages_a_20000_entry_catalogue_showing_what_runs_here(self) -> None:
        self.assertEqual(GalleryBackend.objects.count(), self.COUNT)
        r = self.client.get("/?page=3")
        self.assertEqual(r.status_code, 200)
        runnable = read.runs_here_set("default")
        self.assertEqual(runnable.total, self.COUNT)
        shown = RunsHere.objects.filter(capability="default").exclude(
            entry__name_key__endswith="-development"
        )
        self.assertContains(r, f"{shown.count()} of {self.COUNT} backends")
        self.assertEqual(len(r.context["page"].object_list), 50)
        self.assertTrue(all(row.runs_here for row in r.context["page"].object_list))
        names = [row.entry.name.lower() for row in r.context["page"].object_list]
        self.assertEqual(names, sorted(names))

    def test_it_searches_a_20000_entry_catalogue_best_match_first(self) -> None:
        r = self.client.get("/?q=whisper")
        rows = r.context["page"].object_list
        self.assertEqual(rows[0].entry.name, "whisper")
        self.assertEqual(rows[0].resolution.concrete, "cpu-whisper")
        # Each of the 20 copies of the whisper meta resolves to its own copy's build.
        r = self.client.get("/?q=whisper-c7")
        first = r.context["page"].object_list[0]
        self.assertEqual(first.entry.name, "whisper-c7")
        self.assertEqual(first.resolution.concrete, "cpu-whisper-c7")
