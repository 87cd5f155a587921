"""Template filters for the dashboard: sizes, speeds, durations and short digests."""

from __future__ import annotations

from django import template
from django.template.defaultfilters import filesizeformat

register = template.Library()


@register.filter
def short_digest(digest: str, length: int = 12) -> str:
    """``sha256:0123456789abcdef…`` cut to ``length`` hex digits (the full value goes in a title)."""
    if not digest:
        return ""
    algorithm, sep, value = digest.partition(":")
    if not sep:
        algorithm, value = "", digest
    short = value[:length] + ("…" if len(value) > length else "")
    return f"{algorithm}:{short}" if algorithm else short


@register.filter
def speed(bytes_per_second: float) -> str:
    if not bytes_per_second or bytes_per_second <= 0:
        return ""
    return f"{filesizeformat(bytes_per_second)}/s"


@register.filter
def duration(seconds: float | None) -> str:
    """A short human duration: ``45s``, ``3m 05s``, ``2h 10m``."""
    if seconds is None or seconds < 0:
        return ""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


@register.filter
def is_web_url(url: str) -> bool:
    """Only http(s) links from a gallery become clickable (never ``javascript:``)."""
    return isinstance(url, str) and url.lower().startswith(("https://", "http://"))
