"""Gallery limits: too many entries fails the sync, an oversized field skips the entry."""

from __future__ import annotations

import re
from unittest import mock

import pytest
from django.db import connection
from django.test import override_settings

from backends.core import gallery
from backends.core.gallery import (
    DEFAULT_LIMITS,
    GalleryError,
    GalleryFetchError,
    GalleryLimits,
    GalleryReading,
    fetch_gallery,
    parse_gallery,
)
from backends.models import GalleryBackend
from tests.base import REAL_GALLERY, BaseTestCase

SMALL = GalleryLimits(entries=3)


@pytest.fixture(params=["whole", "entry by entry"])
def reading(request, monkeypatch) -> str:
    """Run a test with small documents loaded whole and with large ones read by entry."""
    if request.param == "entry by entry":
        monkeypatch.setattr(gallery, "LOAD_WHOLE_VALUES", 0)
    return str(request.param)


def entries(count: int) -> str:
    return "".join(
        f"- name: b{number}\n  uri: quay.io/a/b:{number}\n" for number in range(count)
    )


def test_the_defaults_are_the_documented_ones() -> None:
    assert DEFAULT_LIMITS.entries == 20_000
    assert (DEFAULT_LIMITS.uri, DEFAULT_LIMITS.icon) == (2000, 2000)
    assert DEFAULT_LIMITS.description == 64 * 1024


def test_a_gallery_at_the_entry_limit_parses() -> None:
    assert len(parse_gallery(entries(3), "test", SMALL).entries) == 3


def test_a_gallery_over_the_entry_limit_fails_whole() -> None:
    message = (
        "gallery test: more than 3 entries, the limit per gallery "
        "(LOCALAI_ADMIN_GALLERY_MAX_ENTRIES)"
    )
    with pytest.raises(GalleryError, match=re.escape(message)):
        parse_gallery(entries(4), "test", SMALL)


def test_a_source_over_the_entry_limit_fails_and_the_mirror_is_tried(tmp_path) -> None:
    big, small = tmp_path / "big.yaml", tmp_path / "small.yaml"
    big.write_text(entries(10))
    small.write_text(entries(2))

    result = fetch_gallery(big.as_uri(), [small.as_uri()], limits=SMALL)

    assert result.source == small.as_uri()
    assert result.errors == (
        f"{big.as_uri()}: more than 3 entries, the limit per gallery (LOCALAI_ADMIN_GALLERY_MAX_ENTRIES)",
    )
    with pytest.raises(GalleryFetchError, match="more than 3 entries"):
        fetch_gallery(big.as_uri(), limits=SMALL)


@pytest.mark.parametrize(
    "field, problem",
    [
        (f"description: {'d' * (64 * 1024 + 1)}", "description is longer than 65536"),
        (f"icon: https://x/{'i' * 2000}", "icon is longer than 2000"),
        ("tags: [" + ",".join(["t"] * 101) + "]", "tags has more than 100 items"),
        (f"tags: [{'t' * 101}]", "tags has an item longer than 100"),
        (f"urls: [https://x/{'u' * 2000}]", "urls has an item longer than 2000"),
        ("mirrors: [" + ",".join(["m"] * 33) + "]", "mirrors has more than 32 items"),
        (
            "capabilities: {" + ", ".join(f"c{n}: b" for n in range(101)) + "}",
            "capabilities has more than 100 keys",
        ),
        (f"capabilities: {{{'c' * 101}: b}}", "capabilities has a key longer than 100"),
        ("junk: [" + ",".join(["j"] * 2000) + "]", "has more than 2000 values"),
    ],
)
def test_an_oversized_field_skips_only_that_entry(
    field: str, problem: str, reading: str
) -> None:
    result = parse_gallery(
        f"- name: first\n- name: big\n  {field}\n- name: last\n", "test"
    )

    assert [entry.name for entry in result.entries] == ["first", "last"]
    (message,) = result.problems
    assert message.startswith("gallery test, entry ")
    assert problem in message


def test_fields_at_their_limits_are_kept() -> None:
    limits = GalleryLimits(tags=2, tag=3, capabilities=1, description=5)
    (entry,) = parse_gallery(
        "- name: a\n  description: abcde\n  tags: [abc, de]\n  capabilities: {x: b}\n",
        "test",
        limits,
    ).entries
    assert (entry.description, entry.tags) == ("abcde", ("abc", "de"))


def test_anchors_may_not_hold_more_than_their_share(monkeypatch) -> None:
    # Only a large document is read entry by entry and keeps anchored values around.
    monkeypatch.setattr(gallery, "LOAD_WHOLE_VALUES", 0)
    document = "- &a\n  name: a\n  tags: [" + ",".join(["t"] * 50) + "]\n"
    with pytest.raises(GalleryError, match="more than 10 values under YAML anchors"):
        parse_gallery(document, "test", GalleryLimits(anchored_values=10))


def test_both_ways_of_reading_give_the_same_result_for_the_real_index(
    monkeypatch,
) -> None:
    body = REAL_GALLERY.read_bytes()
    whole = parse_gallery(body, "localai")
    monkeypatch.setattr(gallery, "LOAD_WHOLE_VALUES", 0)
    assert parse_gallery(body, "localai") == whole


def test_a_gallery_too_large_to_load_whole_is_read_entry_by_entry(
    monkeypatch,
) -> None:
    monkeypatch.setattr(gallery, "_load_yaml", None)  # whole loading would fail
    monkeypatch.setattr(gallery, "LOAD_WHOLE_VALUES", 5)
    assert len(parse_gallery(entries(3), "test").entries) == 3


def test_merged_entries_still_share_their_anchor(reading: str) -> None:
    result = parse_gallery(
        "- &meta\n  name: m\n  capabilities: {default: cpu-m}\n"
        + "".join(f"- <<: *meta\n  name: cpu-m{n}\n  uri: q/a:{n}\n" for n in range(3)),
        "test",
    )
    maps = {id(entry.capabilities) for entry in result.entries}
    assert len(result.entries) == 4
    assert len(maps) == 1  # converted once, as before entries were read one at a time


def test_a_large_gallery_yields_its_first_entry_before_the_rest_is_read(
    tmp_path,
) -> None:
    # 50,000 entries of five YAML values: past LOAD_WHOLE_VALUES, so read by entry.
    path = tmp_path / "large.yaml"
    path.write_text(entries(50_000))
    with path.open("rb") as body:
        first = next(iter(GalleryReading(body, "test", GalleryLimits(entries=50_000))))
        read = body.tell()

    assert first.name == "b0"
    assert read < path.stat().st_size / 10


def test_problems_past_the_limit_are_counted_in_one_last_message() -> None:
    unnamed = "".join(f"- uri: quay.io/a/b:{n}\n" for n in range(4))
    reading = GalleryReading(
        unnamed + entries(1) * 3, "test", GalleryLimits(problems=2)
    )

    assert [entry.name for entry in reading] == ["b0"]
    messages = reading.messages()
    assert len(messages) == 3
    assert all("has no name" in message for message in messages[:2])
    assert messages[2] == "gallery test: 3 more problem(s) not listed"


class GalleryEntryLimitSyncTestCase(BaseTestCase):
    @override_settings(LOCALAI_ADMIN_GALLERY_MAX_ENTRIES=3)
    def test_an_oversized_gallery_fails_and_keeps_the_last_good_entries(self) -> None:
        self.gallery_file.write_text(entries(3))
        self.gallery.sync(force=True)
        self.assertEqual(self.gallery.entry_count, 3)

        self.gallery_file.write_text(entries(4))
        summary = self.gallery.sync(force=True)

        self.assertIn("sync failed", summary)
        self.assertIn("more than 3 entries", self.gallery.last_error)
        self.assertIn("LOCALAI_ADMIN_GALLERY_MAX_ENTRIES", self.gallery.last_error)
        self.assertEqual(GalleryBackend.objects.count(), 3)
        self.gallery.refresh_from_db()
        self.assertEqual(self.gallery.entry_count, 3)

    def test_a_gallery_failing_part_way_through_keeps_the_last_good_entries(
        self,
    ) -> None:
        self.gallery_file.write_text(entries(3))
        self.gallery.sync(force=True)
        # Good entries first, then more anchored values than a document may hold: the
        # reading fails after the good ones were read and staged.
        tags = "[" + ",".join(["t"] * 95) + "]"
        anchored = "".join(
            f"- &a{n}\n  name: x{n}\n  tags: {tags}\n" for n in range(1100)
        )
        self.gallery_file.write_text(entries(5) + anchored)

        with mock.patch.object(gallery, "LOAD_WHOLE_VALUES", 0):  # read by entry
            summary = self.gallery.sync(force=True)

        self.assertIn("sync failed", summary)
        self.assertIn("values under YAML anchors", self.gallery.last_error)
        self.gallery.refresh_from_db()
        self.assertEqual(self.gallery.entry_count, 3)
        self.assertEqual(
            sorted(GalleryBackend.objects.values_list("name", flat=True)),
            ["b0", "b1", "b2"],
        )

    def test_a_sync_on_postgresql_leaves_the_planner_statistics_of_its_rows(
        self,
    ) -> None:
        if connection.vendor != "postgresql":
            self.skipTest("PostgreSQL only: SQLite keeps no statistics unasked")
        self.gallery_file.write_text(entries(7))

        self.gallery.sync(force=True)

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples FROM pg_class WHERE relname = %s",
                [GalleryBackend._meta.db_table],
            )
            (rows,) = cursor.fetchone()
        self.assertEqual(rows, 7)


@pytest.mark.parametrize(
    "document",
    [
        "",
        "---\n",
        "null",
        "just text",
        "{a: 1}",
        "[]",
        "- a\n---\n- b\n",
        "--- a\n--- b\n",
        "- &x [1, 2, 3]\n- *x\n- {k: *x, j: [*x, *x]}\n",
        "- &r [*r]\n",
        "- *undefined\n",
        "- &m {name: m, tags: [a, b]}\n- <<: *m\n  name: n\n",
        entries(4),
        "- name: a\n  junk: [" + ",".join(["j"] * 1997) + "]\n"
        "- name: b\n  junk: [" + ",".join(["j"] * 1995) + "]\n",
        "- [unclosed\n",
    ],
)
def test_a_small_document_is_measured_as_its_events_measure_it(
    document: str, monkeypatch
) -> None:
    """A document loaded whole is measured on its composed nodes, once: what that says
    is what the pass over its events (large documents) says."""

    def shape(document: str) -> object:
        try:
            found = gallery.document_shape(document, SMALL)
        except Exception as exc:
            return type(exc)
        return (found.problem, found.values, found.oversized)

    composed = shape(document)
    monkeypatch.setattr(gallery, "LOAD_WHOLE_VALUES", 0)  # measured on events
    if document == "--- a\n--- b\n":
        # The event pass loaded the lone scalar whole, and libyaml refused the second
        # document; the composed pass says what is wrong with the first.
        assert composed == (
            "the document is a string, not a list of backends",
            0,
            set(),
        )
        return
    assert composed == shape(document)


def test_a_small_document_is_parsed_once(monkeypatch) -> None:
    monkeypatch.setattr(gallery, "_load_yaml", None)  # a second parse would fail
    body = REAL_GALLERY.read_bytes()
    shape = gallery.document_shape(body, DEFAULT_LIMITS)

    assert len(list(GalleryReading(body, "localai", shape=shape))) == 1028
