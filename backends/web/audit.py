"""The Audit page: who changed what, from where, and how it went."""

from __future__ import annotations

import datetime

from django.core.paginator import Paginator
from django.http import HttpResponse

from backends import roles
from backends.models import AuditEvent
from backends.services import audit
from backends.web.base import HtmxHttpRequest, render_page, requires
from backends.web.forms import AuditFilterForm

PAGE_SIZE = 50


def _start_of(
    day: datetime.date | None, *, after: bool = False
) -> datetime.datetime | None:
    if day is None:
        return None
    if after:
        # "Until" a day includes that whole day.
        day += datetime.timedelta(days=1)
    return datetime.datetime.combine(day, datetime.time(), datetime.UTC)


@requires(roles.VIEW_AUDIT)
def audit_list(request: HtmxHttpRequest) -> HttpResponse:
    # The recorded actions too: other branches add theirs without touching this page.
    recorded = AuditEvent.objects.values_list("action", flat=True).distinct()
    actions = sorted({*audit.ACTIONS, *recorded})
    form = AuditFilterForm(request.GET, actions=actions)
    filters = audit.Filters(
        who=str(form.value("who", "")).strip(),
        action=form.value("action", ""),
        target=str(form.value("target", "")).strip(),
        outcome=form.value("outcome", ""),
        since=_start_of(form.value("since")),
        until=_start_of(form.value("until"), after=True),
    )
    events = Paginator(audit.events(filters), PAGE_SIZE).get_page(form.value("page", 1))
    return render_page(
        request,
        "backends/audit.html",
        {"form": form, "events": events},
        fragment="backends/audit.html#audit-events",
    )
