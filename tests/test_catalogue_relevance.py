"""The catalogue's search ranking: the one rule that orders matches, in the database."""

from __future__ import annotations

from django.test import TestCase

from backends.models import Gallery, GalleryBackend
from backends.services.catalogue import CatalogueQuery, catalogue_entries


class RelevanceTestCase(TestCase):
    def test_it_ranks_name_then_alias_then_prefix_then_a_mention(self) -> None:
        gallery = Gallery.objects.create(name="g", url="file:///dev/null")
        # Created in the reverse of the expected order, and named so that the
        # alphabetical order would differ from the ranking.
        for position, (name, alias, description) in enumerate(
            [
                ("a-vad", "", "whisper"),
                ("b-faster-whisper", "", ""),
                ("whisperx", "", ""),
                ("a-cpu-whisper", "whisper", ""),
                ("whisper", "", ""),
            ]
        ):
            GalleryBackend.objects.create(
                gallery=gallery,
                position=position,
                name=name,
                alias=alias,
                description=description,
            )
        query = CatalogueQuery(
            capability="default", search="Whisper", other_hardware=True
        )
        names = list(catalogue_entries(query).values_list("name", flat=True))
        self.assertEqual(
            names, ["whisper", "a-cpu-whisper", "whisperx", "a-vad", "b-faster-whisper"]
        )
