"""The catalogue's search ranking: the one rule that orders matches."""

from __future__ import annotations

from django.test import SimpleTestCase

from backends.services.catalogue import Entry
from backends.web.catalogue import relevance


def entry(name: str, alias: str = "", description: str = "") -> Entry:
    return Entry("g", name, alias, description, "", [], False, {})


class RelevanceTestCase(SimpleTestCase):
    def test_it_ranks_name_then_alias_then_prefix_then_a_mention(self) -> None:
        ranks = [
            relevance(entry("whisper"), "Whisper"),
            relevance(entry("cpu-whisper", alias="whisper"), "whisper"),
            relevance(entry("whisperx"), "whisper"),
            relevance(entry("faster-whisper"), "whisper"),
            relevance(entry("vad", description="whisper"), "whisper"),
        ]
        self.assertEqual(ranks, [0, 1, 2, 3, 3])
