"""The OpenAPI document is valid and every route answers as it describes (schemathesis)."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from django.contrib.auth.models import User
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from backends.api.openapi import openapi_document, routes
from backends.models import ApiToken

schema = schemathesis.openapi.from_dict(openapi_document("/"))
schema.config.generation.update(
    # Both valid and invalid data: an invalid request must get a documented 4xx.
    modes=list(GenerationMode),
    # The token is the test's own (headers= below), so dropping or mangling the
    # Authorization header would test nothing: tests/test_api_auth.py pins that.
    with_security_parameters=False,
    # Unknown query parameters are ignored on purpose (scripts add cache-busters).
    allow_extra_parameters=False,
)


@pytest.fixture
def api_token(transactional_db) -> str:
    user = User.objects.create_user("schemathesis", is_superuser=True)
    return ApiToken.objects.create_token(user, "schemathesis")[1]


@schema.parametrize()
# derandomize: the same cases on every run, so a green run stays green in CI.
@hypothesis.settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_route_answers_as_documented(
    case, live_server, api_token, settings
) -> None:
    # The agents' routes take the registration token, every other route an API token.
    settings.LOCALAI_ADMIN_REGISTRATION_TOKEN = "schemathesis-agents"
    token = "schemathesis-agents" if case.path.startswith("/api/node/") else api_token
    # What install-external accepts depends on the kind of uri (a name is required for
    # an OCI reference, refused for a gallery name): more than a schema can say, so
    # schema-valid bodies may get a 400 there. Invalid data is refused everywhere.
    excluded = (
        [positive_data_acceptance] if case.path.endswith("install-external") else []
    )
    case.call_and_validate(
        base_url=live_server.url,
        headers={"Authorization": f"Bearer {token}"},
        excluded_checks=excluded,
    )


def test_every_json_route_declares_its_shapes() -> None:
    # The document is made of the declared routes: a JSON view without a declaration
    # would be missing from it.
    api = get_resolver().url_patterns[-1]
    assert isinstance(api, URLResolver)
    views = {
        pattern.callback
        for pattern in api.url_patterns
        if isinstance(pattern, URLPattern)
        and pattern.callback.__module__.startswith("backends.api.")
    }
    declared = {route.name for route in routes()}
    assert len(views) > 20
    assert {view.__name__ for view in views if not hasattr(view, "contract")} == set()
    assert len(declared) == len(views)


def test_the_document_says_what_the_routes_answer() -> None:
    paths = openapi_document("/")["paths"]
    assert "202" in paths["/api/nodes/{node_id}/backends/install"]["post"]["responses"]
    assert (
        "200" not in paths["/api/nodes/{node_id}/backends/install"]["post"]["responses"]
    )
    assert "201" in paths["/api/node/register"]["post"]["responses"]
    assert "400" in paths["/backends/apply"]["post"]["responses"]
    assert "400" not in paths["/backends/known"]["get"]["responses"]


def test_it_is_served_to_authenticated_clients(admin_client) -> None:
    doc = admin_client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/backends/known" in doc["paths"]
