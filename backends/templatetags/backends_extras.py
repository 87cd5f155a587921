"""Template filters for the dashboard: sizes, speeds, durations and short digests."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.timesince import timesince

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


@register.filter
def ago(when: datetime | None) -> str:
    """``just now`` under a minute, else Django's ``timesince`` with "ago"."""
    if when is None:
        return ""
    if (timezone.now() - when).total_seconds() < 60:
        return "just now"
    return f"{timesince(when)} ago"


@register.filter
def took(job: object) -> str:
    """How long a finished job ran, to the second (``timesince`` stops at minutes)."""
    started = getattr(job, "started_at", None)
    finished = getattr(job, "finished_at", None)
    if started is None or finished is None:
        return ""
    return duration((finished - started).total_seconds())
