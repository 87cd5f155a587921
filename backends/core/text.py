"""Small rules for the sentences the product writes."""

from __future__ import annotations


def with_article(noun: str) -> str:
    """``an install``, ``an upgrade``, ``a delete``, ``an unspecified``: by the first
    letter, which is right for every word these messages put there."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
