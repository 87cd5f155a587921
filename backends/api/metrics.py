"""GET /metrics for Prometheus: a dedicated token, an API token that may view, or an
address in the allowlist. Anyone else gets the JSON error envelope (401 or 403)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from backends import roles
from backends.api.http import forbidden, json_error
from backends.models import ApiToken
from backends.services import audit, metrics


def _same(presented: str, expected: str) -> bool:
    # Digests, so the comparison time tells nothing about the token's length.
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )


def address_allowed(address: str) -> bool:
    """Whether ``address`` is in LOCALAI_ADMIN_METRICS_ALLOW (CIDRs or addresses)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for allowed in settings.LOCALAI_ADMIN_METRICS_ALLOW:
        try:
            if ip in ipaddress.ip_network(allowed, strict=False):
                return True
        except ValueError:
            continue  # a bad entry stops the start (checks.metrics_allowlist)
    return False


@require_GET
def scrape(request: HttpRequest) -> HttpResponse:
    """Prometheus' text format, computed from the database now."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if header:
        dedicated = settings.LOCALAI_ADMIN_METRICS_TOKEN
        if scheme.lower() != "bearer" or not value:
            return json_error(401, "send a bearer token")
        if not (dedicated and _same(value, dedicated)):
            token = ApiToken.objects.authenticate(value)
            if token is None:
                return json_error(401, "invalid, expired or revoked token")
            if not token.user.has_perm(roles.VIEW):
                return forbidden(roles.VIEW)
    elif not address_allowed(audit.client_ip(request)):
        user = request.user
        if not user.is_authenticated:
            response = json_error(
                401,
                "metrics need a bearer token (LOCALAI_ADMIN_METRICS_TOKEN or an API "
                "token with the viewer role) or an allowed address "
                "(LOCALAI_ADMIN_METRICS_ALLOW)",
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        if not user.has_perm(roles.VIEW):
            return forbidden(roles.VIEW)
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


scrape.permission = roles.VIEW  # type: ignore[attr-defined]
