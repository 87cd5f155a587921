from __future__ import annotations

import gc
import io
import json
import shutil
from typing import Any
from unittest import mock

from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from backends import models, tasks
from backends.core import gallery as gallery_format
from backends.models import Gallery, GalleryBackend, Node, RunsHereSet
from backends.services import catalogue
from tests.base import REAL_GALLERY, BaseTestCase


class GallerySyncTestCase(BaseTestCase):
    def use_real_gallery(self) -> None:
        shutil.copy(REAL_GALLERY, self.gallery_file)

    def test_it_loads_the_real_gallery(self) -> None:
        self.use_real_gallery()
        summary = self.gallery.sync()
        self.assertIn("1028 entries", summary)
        entries = GalleryBackend.objects.filter(gallery=self.gallery)
        self.assertEqual(entries.count(), 1028)
        self.assertEqual(entries.filter(is_meta=True).count(), 140)
        self.assertEqual(entries.filter(is_meta=False).count(), 888)
        self.gallery.refresh_from_db()
        self.assertEqual(self.gallery.entry_count, 1028)
        self.assertEqual(self.gallery.last_error, "")
        self.assertEqual(len(self.gallery.problems), 5)
        self.assertTrue(all("occurs again" in p for p in self.gallery.problems))

    def test_it_does_not_reparse_an_unchanged_source(self) -> None:
        self.gallery.sync()
        first_ids = set(GalleryBackend.objects.values_list("pk", flat=True))
        summary = self.gallery.sync()
        self.assertIn("unchanged", summary)
        self.assertEqual(
            set(GalleryBackend.objects.values_list("pk", flat=True)), first_ids
        )

    def test_it_reparses_when_forced(self) -> None:
        self.gallery.sync()
        first_ids = set(GalleryBackend.objects.values_list("pk", flat=True))
        self.gallery.sync(force=True)
        self.assertFalse(
            first_ids & set(GalleryBackend.objects.values_list("pk", flat=True))
        )

    def test_a_broken_source_keeps_the_last_good_entries(self) -> None:
        self.gallery.sync()
        self.gallery_file.write_text("- name: [unclosed\n")
        summary = self.gallery.sync()
        self.assertIn("failed", summary)
        self.gallery.refresh_from_db()
        self.assertIn("localai", self.gallery.last_error)
        self.assertEqual(GalleryBackend.objects.count(), 6)
        self.assertEqual(self.gallery.entry_count, 6)

    def test_a_document_that_is_not_a_list_keeps_the_last_good_entries(self) -> None:
        self.gallery.sync()
        self.gallery_file.write_text("name: not-a-list\n")
        self.gallery.sync()
        self.gallery.refresh_from_db()
        self.assertNotEqual(self.gallery.last_error, "")
        self.assertEqual(GalleryBackend.objects.count(), 6)

    def test_a_missing_file_is_recorded_as_an_error(self) -> None:
        self.gallery_file.unlink()
        self.gallery.sync()
        self.gallery.refresh_from_db()
        self.assertIn("gallery.yaml", self.gallery.last_error)
        self.assertIsNone(self.gallery.last_synced_at)

    def test_bad_entries_are_reported_and_valid_ones_still_load(self) -> None:
        self.gallery_file.write_text(
            "- name: good\n  uri: quay.io/x/y:1\n"
            "- name: ../evil\n  uri: quay.io/x/y:2\n"
            "- uri: quay.io/x/y:3\n"
            "- name: badtags\n  tags: not-a-list\n"
        )
        self.gallery.sync()
        self.gallery.refresh_from_db()
        self.assertEqual(
            list(GalleryBackend.objects.values_list("name", flat=True)), ["good"]
        )
        self.assertEqual(len(self.gallery.problems), 3)
        self.assertTrue(all("localai" in p for p in self.gallery.problems))
        self.assertTrue(any("../evil" in p for p in self.gallery.problems))
        self.assertTrue(any("badtags" in p for p in self.gallery.problems))

    def test_a_mirror_is_used_when_the_primary_fails(self) -> None:
        self.gallery.url = (self.gallery_file.parent / "missing.yaml").as_uri()
        self.gallery.mirrors = [self.gallery_file.as_uri()]
        self.gallery.save()
        self.gallery.sync()
        self.gallery.refresh_from_db()
        self.assertEqual(self.gallery.source, self.gallery_file.as_uri())
        self.assertEqual(self.gallery.entry_count, 6)

    def test_on_sqlite_a_sync_writes_through_the_page_cache_then_maps_reads_again(
        self,
    ) -> None:
        if connection.vendor != "sqlite":
            self.skipTest("SQLite only: PostgreSQL maps nothing into this process")
        self.use_real_gallery()
        statements: list[str] = []

        def record(execute: Any, sql: str, *args: Any) -> Any:
            statements.append(sql)
            return execute(sql, *args)

        with connection.execute_wrapper(record):
            self.gallery.sync()
        maps = [i for i, sql in enumerate(statements) if sql.startswith("PRAGMA mmap")]
        writes = [i for i, sql in enumerate(statements) if sql.startswith("INSERT")]
        self.assertEqual(statements[maps[1]], "PRAGMA mmap_size=0")
        self.assertTrue(maps[1] < writes[0] and writes[-1] < maps[2], statements[:5])
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA mmap_size")
            self.assertEqual(cursor.fetchone()[0], 1073741824)

    def test_it_keeps_json_columns_as_the_orm_writes_them(self) -> None:
        self.gallery_file.write_text(
            "- name: odd\n"
            "  uri: quay.io/a/b:1\n"
            '  tags: [\'say "hi"\', "back\\\\slash", "caf\u00e9 \U0001f600"]\n'
            "- name: meta\n"
            '  capabilities: {default: odd, "n\u00e9": odd}\n'
        )
        self.gallery.sync(force=True)

        odd = GalleryBackend.objects.get(name="odd")
        self.assertEqual(odd.tags, ['say "hi"', "back\\slash", "caf\u00e9 \U0001f600"])
        self.assertEqual((odd.urls, odd.mirrors, odd.capabilities), ([], [], {}))
        meta = GalleryBackend.objects.get(name="meta")
        self.assertEqual(meta.capabilities, {"default": "odd", "n\u00e9": "odd"})
        self.assertEqual(meta.tags, [])
        if connection.vendor == "sqlite":  # PostgreSQL's jsonb keeps no text
            # The text JSONField writes (json.dumps), so both ways of writing agree.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT tags, capabilities FROM backends_gallerybackend "
                    "WHERE id IN (%s, %s) ORDER BY id",
                    [odd.pk, meta.pk],
                )
                stored = cursor.fetchall()
            self.assertEqual(
                stored,
                [
                    (json.dumps(odd.tags), "{}"),
                    ("[]", json.dumps(meta.capabilities)),
                ],
            )

    def test_rows_staged_in_several_chunks_come_back_in_order(self) -> None:
        rows = [[n, f"name-{n}", {"k": n}.get("k")] for n in range(5)]
        with mock.patch.object(models, "INSERT_CHUNK", 2), io.BytesIO() as staged:
            self.assertEqual(models.stage_rows(iter(rows), staged), 5)
            self.assertEqual(list(models.staged_rows(staged)), rows)

    def test_a_sync_leaves_the_cycle_collector_as_it_found_it(self) -> None:
        seen: list[bool] = []
        read = gallery_format.GalleryReading.__iter__

        def reading(self: gallery_format.GalleryReading) -> Any:
            seen.append(gc.isenabled())
            return read(self)

        self.assertTrue(gc.isenabled())
        with mock.patch.object(gallery_format.GalleryReading, "__iter__", reading):
            self.gallery.sync(force=True)
            self.gallery_file.write_text("- name: [unclosed\n")
            self.gallery.sync(force=True)
        self.assertEqual(seen, [False])  # paused while the entries were read
        self.assertTrue(gc.isenabled())  # and running again, after a failure too
        gc.disable()
        try:
            self.gallery.sync(force=True)
            self.assertFalse(gc.isenabled())  # stopped by someone else: left stopped
        finally:
            gc.enable()

    def test_on_postgresql_a_sync_of_about_the_same_size_keeps_the_statistics(
        self,
    ) -> None:
        if connection.vendor != "postgresql":
            self.skipTest("PostgreSQL only: SQLite keeps no statistics unasked")
        self.use_real_gallery()
        self.gallery.sync(force=True)  # the statistics now describe 1,028 rows

        with CaptureQueriesContext(connection) as again:
            self.gallery.sync(force=True)
        self.gallery_file.write_text("- name: a\n- name: b\n")
        with CaptureQueriesContext(connection) as smaller:
            self.gallery.sync(force=True)

        def analyzed(queries: CaptureQueriesContext) -> bool:
            return any(q["sql"].startswith("ANALYZE") for q in queries)

        self.assertFalse(analyzed(again))
        self.assertTrue(analyzed(smaller))


class GallerySeedTestCase(BaseTestCase):
    def test_the_command_seeds_configured_galleries_and_syncs_them(self) -> None:
        Gallery.objects.all().delete()
        configured = [
            {"name": "mine", "url": self.gallery_file.as_uri(), "mirrors": []}
        ]
        with override_settings(LOCALAI_BACKEND_GALLERIES=configured):
            call_command("sync_galleries", stdout=io.StringIO())
        gallery = Gallery.objects.get()
        self.assertEqual(gallery.name, "mine")
        self.assertEqual(gallery.entry_count, 6)

    def test_seeding_leaves_edited_galleries_alone(self) -> None:
        configured = [
            {"name": "localai", "url": "https://example.invalid/x", "mirrors": []}
        ]
        Gallery.objects.seed(configured)
        self.assertEqual(Gallery.objects.get().url, self.gallery_file.as_uri())

    def test_an_unreachable_default_gallery_is_reported_not_raised(self) -> None:
        self.gallery.url = "http://127.0.0.1:9/backends"
        self.gallery.save()
        summaries = tasks.sync_all()
        self.assertIn("sync failed", summaries[0])
        self.gallery.refresh_from_db()
        self.assertIn("127.0.0.1:9", self.gallery.last_error)


class RunsHereAfterSyncTestCase(BaseTestCase):
    def test_the_sync_command_computes_this_hosts_runs_here_set(self) -> None:
        RunsHereSet.objects.all().delete()

        call_command("sync_galleries", "--force", stdout=io.StringIO())

        found = RunsHereSet.objects.get()
        self.assertEqual(found.capability, Node.objects.local().current_capability())
        self.assertEqual(found.fingerprint, catalogue.galleries_fingerprint())
        self.assertEqual(found.total, 6)

    def test_a_failed_sync_computes_no_runs_here_set(self) -> None:
        RunsHereSet.objects.all().delete()
        self.gallery_file.write_text("- name: [unclosed\n")

        tasks.sync_gallery.call_local(self.gallery.pk, force=True)

        self.assertFalse(RunsHereSet.objects.exists())
