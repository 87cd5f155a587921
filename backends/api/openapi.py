"""The OpenAPI 3.1 document describing every JSON route, served at ``/api/openapi.json``.

Nothing here is written by hand per route: the paths come from the URL conf, and each
operation from the ``Contract`` its view declared (``api_view``/``agent_view``), the very
data that checks the requests. The summary is the first line of the view's docstring.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver
from jsonschema import Draft202012Validator

from backends.api import schemas
from backends.api.http import Contract

# Django's path converters, as OpenAPI path parameter schemas.
CONVERTERS = {"int": schemas.INTEGER, "uuid": {"type": "string", "format": "uuid"}}
PARAMETER = re.compile(r"<(?:(\w+):)?(\w+)>")


@dataclass(frozen=True)
class Route:
    path: str  # OpenAPI form: /backends/jobs/{job_id}
    name: str  # the URL pattern's name
    converters: dict[str, str]  # parameter -> Django converter
    contract: Contract
    doc: str


def routes(resolver: URLResolver | None = None, prefix: str = "/") -> Iterator[Route]:
    """Every URL pattern whose view declared a contract, in URL conf order."""
    for pattern in (resolver or get_resolver()).url_patterns:
        text = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from routes(pattern, text)
        elif isinstance(pattern, URLPattern):
            contract = getattr(pattern.callback, "contract", None)
            if contract is not None:
                yield Route(
                    path=PARAMETER.sub(r"{\2}", text),
                    name=pattern.name or "",
                    converters={
                        name: converter or "str"
                        for converter, name in PARAMETER.findall(text)
                    },
                    contract=contract,
                    doc=inspect.getdoc(pattern.callback) or "",
                )


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters = []
    for name, converter in route.converters.items():
        schema = {**CONVERTERS.get(converter, schemas.STRING)}
        schema |= route.contract.path.get(name, {})
        described = (
            {"description": schema.pop("description")}
            if "description" in schema
            else {}
        )
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                **described,
                "schema": schema,
            }
        )
    for name, schema in route.contract.query.items():
        parameters.append(
            {"name": name, "in": "query", "required": False, "schema": schema}
        )
    return parameters


def _operation(route: Route, method: str) -> dict[str, Any]:
    contract = route.contract
    summary, _, description = route.doc.partition("\n")
    operation: dict[str, Any] = {
        "summary": summary.strip(),
        "operationId": route.name.replace("-", "_")
        + ("" if len(contract.methods) == 1 else f"_{method}"),
        "responses": {
            str(status): {
                "description": HTTPStatus(status).phrase,
                "content": {"application/json": {"schema": schema}},
            }
            for status, schema in sorted(contract.answers().items())
        },
    }
    if description.strip():
        operation["description"] = description.strip()
    if parameters := _parameters(route):
        operation["parameters"] = parameters
    if contract.body is not None:
        operation["requestBody"] = {
            # A missing body reads as {}: required exactly when {} is not enough.
            "required": not Draft202012Validator(contract.body).is_valid({}),
            "content": {"application/json": {"schema": contract.body}},
        }
    if contract.auth == "agent":
        operation["security"] = [{"registration": []}]
    else:
        # The permission the token's user needs (README, "Roles").
        operation["x-permission"] = contract.permission
    return operation


def openapi_document(server_url: str = "/") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in routes():
        for method in route.contract.methods:
            paths.setdefault(route.path, {})[method.lower()] = _operation(route, method)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "localai-admin",
            "version": "1",
            "description": "Manage LocalAI inference backends; compatible with LocalAI's "
            "/backends routes.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token: it acts with its user's permissions",
                },
                "registration": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the agents' registration token",
                },
            },
            "schemas": schemas.COMPONENTS,
        },
        "paths": paths,
    }
