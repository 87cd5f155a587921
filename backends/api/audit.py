"""GET /api/audit: the audit log, filtered, newest first, a page at a time."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, JsonResponse

from backends import roles
from backends.api import schemas
from backends.api.http import api_view, json_error
from backends.services import audit

PAGE_SIZE = 100


@api_view(
    permission=roles.VIEW_AUDIT,
    responses={200: schemas.AUDIT},
    query=schemas.AUDIT_QUERY,
)
def audit_list(request: HttpRequest) -> JsonResponse:
    """The audit log: who changed what, from where, and the outcome"""
    query = request.GET
    try:
        filters = audit.Filters(
            who=query.get("who", "").strip(),
            action=query.get("action", ""),
            target=query.get("target", "").strip(),
            outcome=query.get("outcome", ""),
            channel=query.get("channel", ""),
            since=audit.parse_when(query.get("since", "")),
            until=audit.parse_when(query.get("until", ""), end=True),
        )
    except ValueError as exc:
        return json_error(400, str(exc))
    pages = Paginator(audit.events(filters), PAGE_SIZE)
    page = pages.get_page(query.get("page", 1))
    return JsonResponse(
        {
            "count": pages.count,
            "page": page.number,
            "pages": pages.num_pages,
            "events": [audit.to_dict(event) for event in page],
        }
    )
