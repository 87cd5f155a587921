"""Template filters for the dashboard: sizes, speeds, durations, short digests, and
the per-node parts of a fanned-out job."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from django import template
from django.conf import settings
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import timezone
from django.utils.text import Truncator
from django.utils.timesince import timesince

from backends.core.installed import human_size
from backends.core.redact import redact_text, redact_uri
from backends.models import Job, Node, mean_progress
from backends.services import catalogue
from backends.web.base import dismissed_jobs

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
def size(value: float | None) -> str:
    """A size in IEC units (KiB, MiB, GiB), the convention of the API and LocalAI,
    where Django's ``filesizeformat`` prints powers of 1024 as "MB". A no-break space
    keeps the number and its unit on one line."""
    return human_size(value or 0).replace(" ", "\xa0")


@register.filter
def speed(bytes_per_second: float) -> str:
    if not bytes_per_second or bytes_per_second <= 0:
        return ""
    return f"{size(bytes_per_second)}/s"


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
def redact(value: object) -> object:
    """A URI, or a text quoting URIs, without the secrets they hold (core/redact.py)."""
    if not isinstance(value, str):
        return value
    return redact_text(redact_uri(value))


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


VENDORS = {"nvidia": "NVIDIA", "amd": "AMD", "intel": "Intel", "apple": "Apple"}


@register.filter
def hardware_summary(node: Node) -> str:
    """One line about a node's GPU: ``NVIDIA RTX 4090 · 24.0 GiB VRAM · CUDA 12.4``."""
    if not node.vendor:
        return "No GPU: CPU builds"
    gpus = node.hardware.get("gpus") or []
    names = sorted({gpu.get("name", "") for gpu in gpus if gpu.get("name")})
    facts = [", ".join(names) or VENDORS.get(node.vendor, node.vendor)]
    if node.vram_bytes:
        facts.append(f"{size(node.vram_bytes)} VRAM")
    if node.driver_version:
        facts.append(f"driver {node.driver_version}")
    if node.cuda_version:
        facts.append(f"CUDA {node.cuda_version}")
    return " · ".join(facts)


@register.filter
def took(job: object) -> str:
    """How long a finished job ran, to the second (``timesince`` stops at minutes)."""
    started = getattr(job, "started_at", None)
    finished = getattr(job, "finished_at", None)
    if started is None or finished is None:
        return ""
    return duration((finished - started).total_seconds())


# A node's part of a fanned-out job, in LocalAI's words, drawn with the job state colours.
PART_BADGES = {
    "queued": Job.State.QUEUED,
    "downloading": Job.State.RUNNING,
    "success": Job.State.COMPLETED,
    "error": Job.State.FAILED,
    "cancelled": Job.State.CANCELLED,
}


@dataclass(frozen=True)
class FanOut:
    """A parent job seen through its children: one part per node, and their average."""

    progress: float
    parts: list[dict[str, Any]]


@register.filter
def fan_out(job: Job) -> FanOut | None:
    """The per-node parts of a job fanned out to every node; None for any other job.

    Only a parent has no node of its own, so every other job costs no query here.
    """
    if job.node_id is not None:
        return None
    children = list(job.children.parts().order_by("node__name"))
    if not children:
        return None
    parts = []
    for child in children:
        part = child.node_progress()
        part["badge"] = PART_BADGES.get(part["status"], "")
        parts.append(part)
    return FanOut(mean_progress(children), parts)


@register.inclusion_tag("backends/partials/_job_tray.html", takes_context=True)
def job_tray(context: template.Context) -> dict[str, Any]:
    """The notification area, drawn with the page (one query) so that a page with
    nothing running makes no request for it."""
    request = context["request"]
    return {
        "tray": catalogue.job_tray(dismissed_jobs(request)),
        "request": request,
        "perms": context.get("perms"),
        "csrf_token": context.get("csrf_token"),
    }


# -- catalogue rows ----------------------------------------------------------------------
#
# A catalogue page of 50 rows reversed ~160 URLs with {% url %} (its slowest part after
# the queries at 100,000 entries): a row's links come from the route reversed once with
# marks in place of its arguments, the marks then replaced by the quoted values.


@lru_cache(maxsize=64)
def _route_parts(
    route: str, arguments: int, prefix: str, urlconf: str
) -> tuple[str, ...]:
    """``route`` reversed with marks, cut at them: ``("/catalogue/", "/", "/")``.
    ``prefix`` and ``urlconf`` key the cache (reverse reads them)."""
    marks = [f"argument{index}mark" for index in range(arguments)]
    parts = [reverse(route, args=marks)]
    for mark in marks:
        *done, rest = parts
        parts = [*done, *rest.split(mark, 1)]
    return tuple(parts)


def quick_reverse(route: str, *args: str) -> str:
    """``reverse(route, args=args)`` for arguments the route's converters accept."""
    urlconf = get_urlconf() or settings.ROOT_URLCONF
    parts = _route_parts(route, len(args), get_script_prefix(), str(urlconf))
    # reverse() quotes the path with these safe characters.
    quoted = [quote(arg, safe="!$&'()*+,;=/~:@") for arg in args]
    return "".join(p + q for p, q in zip(parts, [*quoted, ""], strict=True))


@register.filter
def entry_url(entry: catalogue.Entry, route: str = "catalogue-entry") -> str:
    """``{% url "backends:<route>" entry.gallery entry.name %}``, quicker."""
    return quick_reverse(f"backends:{route}", entry.gallery, entry.name)


@register.filter
def icon_url(entry: catalogue.Entry) -> str:
    return quick_reverse("backends:icon", entry.icon_key)


@register.filter(is_safe=True)
def clip(value: str, length: int) -> str:
    """``truncatechars``, without walking every character of a text that fits (most
    descriptions): the same answer, as Truncator returns a short text normalized."""
    text = unicodedata.normalize("NFC", str(value))
    return text if len(text) <= length else Truncator(text).chars(length)
