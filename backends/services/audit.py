"""The audit log: who asked for which change, from where, and how it went.

Every mutation ends in one call, ``record(actor, action, target, outcome, ...)``. The
``Actor`` is built once per request (``Actor.from_request``) or once per command
(``Actor.cli``); entry points that do not pass one still get it right, because the
middleware and the commands set the acting one for the duration of their work
(``acting_as``), and ``record`` falls back to it.
"""

from __future__ import annotations

import contextvars
import getpass
import ipaddress
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from backends import roles
from backends.core.redact import redact_message, redact_uri
from backends.models import AuditEvent, Job, Node

log = logging.getLogger(__name__)

Channel = AuditEvent.Channel
Outcome = AuditEvent.Outcome

# What the pages and GET /api/audit offer as filters (free text is refused).
ACTIONS = (
    "install",
    "install_external",
    "upgrade",
    "reinstall",
    "delete",
    "rollback",
    "pin",
    "unpin",
    "cancel",
    "retry",
    "gallery_add",
    "gallery_change",
    "gallery_delete",
    "gallery_sync",
    "kit_upload",
    "token_create",
    "token_change",
    "token_revoke",
    "token_delete",
    "node_drain",
    "node_resume",
    "node_register",
    "denied",
)


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or behind a trusted proxy the last
    X-Forwarded-For entry (the one the proxy appended; earlier ones are the client's
    own claims, never read). Also django-axes' idea of the address (backends.accounts).
    """
    remote = str(request.META.get("REMOTE_ADDR", ""))
    if not settings.LOCALAI_ADMIN_TRUST_X_FORWARDED_FOR:
        return remote
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.rpartition(",")[2].strip() or remote


@dataclass(frozen=True)
class Actor:
    """Who acts: a user (and the API token they used), through which channel, from
    which address."""

    username: str = ""
    channel: str = Channel.SYSTEM
    token_name: str = ""
    ip: str = ""

    @classmethod
    def from_request(cls, request: HttpRequest) -> Actor:
        user = getattr(request, "user", None)
        username = user.get_username() if user and user.is_authenticated else ""
        # Set by the API's authentication when a token, not a session, was presented.
        token = getattr(request, "api_token", None)
        if token is not None:
            channel, token_name = Channel.API, str(token.name)
        elif request.path.startswith("/admin/"):
            channel, token_name = Channel.ADMIN, ""
        else:
            channel, token_name = Channel.DASHBOARD, ""
        return cls(username, channel, token_name, client_ip(request))

    @classmethod
    def cli(cls) -> Actor:
        """A management command: the operating-system account that ran it."""
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = ""
        return cls(who, Channel.CLI)

    @classmethod
    def agent(cls, node_name: str, ip: str = "") -> Actor:
        return cls(node_name, Channel.AGENT, "", ip)


# The request or command being served: what ``record`` uses when no actor is passed.
# A request is kept (not its Actor) because the API authenticates inside the view.
_acting: contextvars.ContextVar[Actor | HttpRequest | None] = contextvars.ContextVar(
    "audit_acting", default=None
)


@contextmanager
def acting_as(actor: Actor | HttpRequest) -> Iterator[None]:
    token = _acting.set(actor)
    try:
        yield
    finally:
        _acting.reset(token)


def current_actor(requested_by: str = "") -> Actor:
    acting = _acting.get()
    if isinstance(acting, Actor):
        return acting
    if acting is not None:
        return Actor.from_request(acting)
    return Actor(requested_by, Channel.SYSTEM)


class RequestActorMiddleware:
    """Makes the request the acting one while its view runs (settings.MIDDLEWARE)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with acting_as(request):
            response: HttpResponse = self.get_response(request)
        return response


def _valid_ip(value: str) -> str | None:
    # A trusted proxy's header is still text from the network: store only an address.
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def record(
    actor: Actor | None,
    action: str,
    target: str,
    outcome: str,
    *,
    reason: str = "",
    job: Job | None = None,
    node: Node | str | None = None,
) -> AuditEvent:
    """Write one audit event. ``actor`` None: the request or command being served."""
    actor = actor or current_actor()
    node_name = node.name if isinstance(node, Node) else (node or "")
    if not node_name and job is not None and job.node_id is not None:
        node_name = job.node.name if job.node else ""
    event = AuditEvent.objects.create(
        username=actor.username[:150],
        token_name=actor.token_name[:100],
        channel=actor.channel,
        ip=_valid_ip(actor.ip),
        action=action[:64],
        # A target may be a URI with credentials in it; a reason may quote one.
        target=redact_uri(target)[:2000],
        node_name=node_name[:255],
        outcome=outcome,
        reason=redact_message(reason),
        job=job,
    )
    log.info(
        "audit: %s via %s %s %s: %s",
        event.who,
        actor.channel,
        action,
        event.target,
        outcome,
    )
    return event


def permitted(request: HttpRequest, permission: str) -> bool:
    """Whether the request's user holds ``permission`` (``backends.roles``).

    The one permission check of the pages and the API (their decorators and the checks
    that depend on what is asked, such as an install from a host path): a change
    refused here is recorded as ``denied``, whichever page or route refused it.
    """
    if request.user.has_perm(permission):
        return True
    _denied(request, roles.refusal(permission))
    return False


def _denied(request: HttpRequest, refusal: str) -> None:
    # Who tried a change they may not make is worth knowing; reads (GET, HEAD,
    # OPTIONS) change nothing and are not recorded.
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    record(
        Actor.from_request(request),
        "denied",
        f"{request.method} {request.path}",
        Outcome.REFUSED,
        reason=refusal,
    )


# -- reading and pruning ---------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The Audit page's and GET /api/audit's filters; empty means any."""

    who: str = ""
    action: str = ""
    target: str = ""
    outcome: str = ""
    channel: str = ""
    since: datetime | None = None
    until: datetime | None = None


def events(filters: Filters) -> QuerySet[AuditEvent]:
    found = AuditEvent.objects.select_related("job")
    if filters.who:
        found = found.filter(username__iexact=filters.who) | found.filter(
            token_name__iexact=filters.who
        )
    if filters.action:
        found = found.filter(action=filters.action)
    if filters.target:
        found = found.filter(target__icontains=filters.target)
    if filters.outcome:
        found = found.filter(outcome=filters.outcome)
    if filters.channel:
        found = found.filter(channel=filters.channel)
    if filters.since is not None:
        found = found.filter(created_at__gte=filters.since)
    if filters.until is not None:
        found = found.filter(created_at__lt=filters.until)
    return found.order_by("-created_at", "-id")


def prune(now: datetime | None = None) -> int:
    """Delete events older than LOCALAI_ADMIN_AUDIT_RETENTION_DAYS (0 keeps all)."""
    days = settings.LOCALAI_ADMIN_AUDIT_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = AuditEvent.objects.filter(created_at__lt=cutoff).delete()
    return deleted


def to_dict(event: AuditEvent) -> dict[str, Any]:
    """One event as GET /api/audit answers it (schemas.AUDIT_EVENT)."""
    return {
        "id": event.pk,
        "at": event.created_at.isoformat(),
        "user": event.username,
        "token": event.token_name,
        "channel": event.channel,
        "ip": event.ip or "",
        "action": event.action,
        "target": event.target,
        "node": event.node_name,
        "outcome": event.outcome,
        "reason": event.reason,
        "job_id": str(event.job_id) if event.job_id else None,
        "job_state": event.job.state if event.job else None,
    }


def parse_when(text: str, *, end: bool = False) -> datetime | None:
    """A filter's date or date and time (UTC when no offset is given). A bare date as
    the end of a range means the whole of that day."""
    text = text.strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date (YYYY-MM-DD) or date and time"
        ) from None
    if timezone.is_naive(when):
        when = timezone.make_aware(when, UTC)
    if end and len(text) == 10:
        when += timedelta(days=1)
    return when
