"""The OpenAPI 3 document describing every JSON route, served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

STRING = {"type": "string"}
BOOL = {"type": "boolean"}
STRINGS = {"type": "array", "items": STRING}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def array_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": ref(name)}


SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "type"],
                "properties": {"code": {"type": "integer"}, "message": STRING, "type": STRING},
            }
        },
    },
    "Gallery": {
        "type": "object",
        "required": ["name", "url", "mirrors"],
        "properties": {"name": STRING, "url": STRING, "mirrors": STRINGS},
    },
    "Metadata": {
        "type": "object",
        "nullable": True,
        "properties": {
            key: STRING
            for key in (
                "name",
                "alias",
                "meta_backend_for",
                "gallery_url",
                "installed_at",
                "version",
                "uri",
                "digest",
            )
        },
    },
    "SystemBackend": {
        "type": "object",
        "required": ["Name", "RunFile", "IsMeta", "IsSystem", "Metadata"],
        "properties": {
            "Name": STRING,
            "RunFile": STRING,
            "IsMeta": BOOL,
            "IsSystem": BOOL,
            "Metadata": ref("Metadata"),
        },
    },
    "GalleryBackend": {
        "type": "object",
        "required": ["id", "name", "uri", "gallery", "installed", "is_meta"],
        "properties": {
            "id": {**STRING, "description": "gallery@name"},
            "name": STRING,
            "alias": STRING,
            "uri": STRING,
            "mirrors": STRINGS,
            "capabilities": {
                "type": "object",
                "nullable": True,
                "additionalProperties": STRING,
                "description": "capability -> concrete backend name (meta backends)",
            },
            "description": STRING,
            "license": STRING,
            "icon": STRING,
            "urls": STRINGS,
            "tags": STRINGS,
            "version": STRING,
            "sha256": STRING,
            "gallery": ref("Gallery"),
            "installed": BOOL,
            "is_meta": BOOL,
            "resolution": {
                "type": "object",
                "description": "meta backends: the build this node would install, and why",
                "properties": {"concrete": STRING, "explanation": STRING},
            },
        },
    },
    "KnownBackend": {
        "type": "object",
        "required": ["name", "modality", "auto_detect", "installed"],
        "properties": {
            "name": STRING,
            "modality": STRING,
            "auto_detect": BOOL,
            "description": STRING,
            "installed": BOOL,
        },
    },
}

# (method, path, summary, response schema, extra operation fields)
ROUTES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("get", "/backends", "Installed backends (LocalAI SystemBackend)", array_of("SystemBackend"), {}),
    (
        "get",
        "/backends/available",
        "Gallery backends this node can run",
        array_of("GalleryBackend"),
        {},
    ),
    ("get", "/backends/known", "Known backends, by modality then name", array_of("KnownBackend"), {}),
    ("get", "/backends/galleries", "Configured backend galleries", array_of("Gallery"), {}),
    ("get", "/api/openapi.json", "This document", {"type": "object"}, {}),
]


def _error_responses() -> dict[str, Any]:
    content = {"application/json": {"schema": ref("Error")}}
    return {
        "401": {"description": "No or invalid credentials", "content": content},
        "403": {"description": "Not staff", "content": content},
    }


def openapi_document(server_url: str = "/") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, schema, extra in ROUTES:
        operation = {
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('.', '_')}",
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
                **_error_responses(),
            },
            **extra,
        }
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "localai-admin",
            "version": "1",
            "description": "Manage LocalAI inference backends; compatible with LocalAI's "
            "/backends routes.",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
        "paths": paths,
    }
