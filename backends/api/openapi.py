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
                "properties": {
                    "code": {"type": "integer"},
                    "message": STRING,
                    "type": STRING,
                },
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
        "properties": dict.fromkeys(
            (
                "name",
                "alias",
                "meta_backend_for",
                "gallery_url",
                "installed_at",
                "version",
                "uri",
                "digest",
            ),
            STRING,
        ),
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

SCHEMAS |= {
    "JobStarted": {
        "type": "object",
        "required": ["id", "status_url", "state"],
        "properties": {"id": STRING, "status_url": STRING, "state": STRING},
    },
    "ExternalJobStarted": {
        "type": "object",
        "required": ["id", "status_url", "jobID", "message"],
        "properties": {
            "id": STRING,
            "status_url": STRING,
            "jobID": STRING,
            "message": STRING,
        },
    },
    "OpStatus": {
        "type": "object",
        "required": [
            "deletion",
            "processed",
            "message",
            "progress",
            "cancelled",
            "cancellable",
        ],
        "properties": {
            "deletion": BOOL,
            "file_name": STRING,
            "error": STRING,
            "processed": BOOL,
            "message": STRING,
            "progress": {"type": "number"},
            "phase": STRING,
            "current_bytes": {"type": "integer"},
            "total_bytes": {"type": "integer"},
            "file_size": STRING,
            "downloaded_size": STRING,
            "gallery_element_name": STRING,
            "cancelled": BOOL,
            "cancellable": BOOL,
            "nodes": {"type": "array", "items": {"type": "object"}},
            "id": STRING,
            "kind": {"type": "string", "enum": ["install", "upgrade", "delete"]},
            "state": {
                "type": "string",
                "enum": ["queued", "running", "completed", "failed", "cancelled"],
            },
            "bytes_per_second": {"type": "number"},
            "created_at": STRING,
            "started_at": {"type": "string", "nullable": True},
            "finished_at": {"type": "string", "nullable": True},
        },
    },
    "UpgradeInfo": {
        "type": "object",
        "required": ["backend_name", "installed_version", "available_version"],
        "properties": {
            "backend_name": STRING,
            "installed_version": STRING,
            "available_version": STRING,
            "installed_digest": STRING,
            "available_digest": STRING,
            "node_drift": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Cancelled": {
        "type": "object",
        "required": ["success", "message"],
        "properties": {"success": BOOL, "message": STRING, "state": STRING},
    },
}

# validate_name's rule; the first character is not a dot.
NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]*$", "maxLength": 255}
BACKEND_ID = {
    "type": "string",
    "pattern": "^([A-Za-z0-9_-][A-Za-z0-9._-]*@)?[A-Za-z0-9_-][A-Za-z0-9._-]*$",
    "maxLength": 255,
    "description": "name or gallery@name",
}
SCHEMAS |= {
    "Node": {
        "type": "object",
        "required": ["id", "name", "status", "capability"],
        "properties": {
            "id": STRING,
            "name": STRING,
            "status": {"type": "string", "enum": ["online", "offline", "draining"]},
            "is_local": BOOL,
            "capability": STRING,
            "capability_explanation": STRING,
            "vendor": STRING,
            "vram_bytes": {"type": "integer"},
            "cuda_version": STRING,
            "driver_version": STRING,
            "os": STRING,
            "arch": STRING,
            "backends_path": STRING,
            "last_heartbeat": {"type": "string", "nullable": True},
            "probed_at": {"type": "string", "nullable": True},
        },
    },
    "NodeBackend": {
        "type": "object",
        "required": ["name", "is_system", "is_meta"],
        "properties": {
            "name": STRING,
            "alias": STRING,
            "is_system": BOOL,
            "is_meta": BOOL,
            "meta_backend_for": STRING,
            "installed_at": STRING,
            "gallery_url": STRING,
            "version": STRING,
            "uri": STRING,
            "digest": STRING,
        },
    },
    "NodeJobStarted": {
        "type": "object",
        "required": ["jobID", "statusUrl", "message"],
        "properties": {
            "jobID": STRING,
            "id": STRING,
            "status_url": STRING,
            "statusUrl": STRING,
            "message": STRING,
        },
    },
    "FanOutRefused": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {}, "code": STRING, "meta_alternative": STRING},
    },
}

NODE_PARAM = {
    "name": "node_id",
    "in": "path",
    "required": True,
    "description": "node id or name",
    "schema": STRING,
}
NODE_INSTALL_BODY = {
    "type": "object",
    "properties": {"backend": BACKEND_ID, "uri": STRING, "name": NAME, "alias": NAME},
}
NODE_BACKEND_BODY = {
    "type": "object",
    "required": ["backend"],
    "properties": {"backend": BACKEND_ID},
}
REGISTER_BODY = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": NAME,
        "hardware": {"type": "object"},
        "backends_path": STRING,
    },
}

NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "backend name, alias or gallery@name",
    "schema": BACKEND_ID,
}
JOB_PARAM = {"name": "job_id", "in": "path", "required": True, "schema": STRING}
UPGRADES = {"type": "object", "additionalProperties": ref("UpgradeInfo")}
APPLY_BODY = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": BACKEND_ID, "force": BOOL},
}
EXTERNAL_BODY = {
    "type": "object",
    "required": ["uri"],
    "properties": {
        "uri": {
            "type": "string",
            "minLength": 1,
            "description": "OCI reference (needs a name), http(s) URL of a tarball (needs a "
            "name), file:// URL or absolute path of a folder or tarball, or a gallery backend "
            "name (then name and alias must be empty)",
        },
        "name": NAME,
        "alias": NAME,
        "force": BOOL,
    },
}


def route(
    method: str,
    path: str,
    summary: str,
    schema: dict[str, Any],
    *,
    errors: tuple[int, ...] = (),
    params: tuple[dict[str, Any], ...] = (),
    body: dict[str, Any] | None = None,
    query: tuple[dict[str, Any], ...] = (),
    status: int = 200,
    conflict: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "conflict": conflict,
        "method": method,
        "path": path,
        "summary": summary,
        "schema": schema,
        "errors": errors,
        "parameters": [*params, *query],
        "body": body,
    }


ROUTES: list[dict[str, Any]] = [
    route(
        "get",
        "/backends",
        "Installed backends (LocalAI SystemBackend)",
        array_of("SystemBackend"),
    ),
    route(
        "get",
        "/backends/available",
        "Gallery backends this node can run",
        array_of("GalleryBackend"),
    ),
    route(
        "get",
        "/backends/known",
        "Known backends, by modality then name",
        array_of("KnownBackend"),
    ),
    route(
        "get",
        "/backends/galleries",
        "Configured backend galleries",
        array_of("Gallery"),
    ),
    route(
        "post",
        "/backends/apply",
        "Install a backend from the galleries (a job)",
        ref("JobStarted"),
        errors=(400, 404, 409),
        body=APPLY_BODY,
        # In distributed mode the 409 may be LocalAI's fan-out refusal instead.
        conflict=ref("FanOutRefused"),
    ),
    route(
        "post",
        "/backends/delete/{name}",
        "Delete an installed backend (a job)",
        ref("JobStarted"),
        errors=(400, 404, 409),
        params=(NAME_PARAM,),
    ),
    route(
        "post",
        "/backends/upgrade/{name}",
        "Upgrade an installed backend (a job)",
        ref("JobStarted"),
        errors=(400, 404, 409),
        params=(NAME_PARAM,),
    ),
    route("get", "/backends/upgrades", "Cached upgrade information", UPGRADES),
    route(
        "post",
        "/backends/upgrades/check",
        "Start an upgrade check; answers the cached result",
        UPGRADES,
    ),
    route(
        "get",
        "/backends/jobs",
        "Jobs, newest first (job id -> OpStatus)",
        {"type": "object", "additionalProperties": ref("OpStatus")},
        errors=(400,),
        query=(
            {
                "name": "state",
                "in": "query",
                "required": False,
                "schema": {
                    "type": "string",
                    "enum": ["queued", "running", "completed", "failed", "cancelled"],
                },
            },
        ),
    ),
    route(
        "get",
        "/backends/jobs/{job_id}",
        "One job's status",
        ref("OpStatus"),
        errors=(404,),
        params=(JOB_PARAM,),
    ),
    route(
        "post",
        "/backends/jobs/{job_id}/cancel",
        "Cancel a queued or running job",
        ref("Cancelled"),
        errors=(404, 409),
        params=(JOB_PARAM,),
    ),
    route(
        "post",
        "/api/backends/install-external",
        "Install from an OCI image, a URL or a folder (a job)",
        ref("ExternalJobStarted"),
        errors=(400, 404, 409),
        body=EXTERNAL_BODY,
    ),
    route("get", "/api/nodes", "Nodes (distributed mode)", array_of("Node")),
    route(
        "get",
        "/api/nodes/{node_id}",
        "One node",
        ref("Node"),
        errors=(404,),
        params=(NODE_PARAM,),
    ),
    route(
        "get",
        "/api/nodes/{node_id}/backends",
        "Backends installed on a node",
        array_of("NodeBackend"),
        errors=(404,),
        params=(NODE_PARAM,),
    ),
    *(
        route(
            "post",
            f"/api/nodes/{{node_id}}/backends/{action}",
            f"{action.capitalize()} a backend on one node (a job)",
            ref("NodeJobStarted"),
            errors=(400, 404, 409),
            params=(NODE_PARAM,),
            body=NODE_INSTALL_BODY if action == "install" else NODE_BACKEND_BODY,
            status=202,
        )
        for action in ("install", "upgrade", "delete")
    ),
    *(
        route(
            "post",
            f"/api/nodes/{{node_id}}/{action}",
            f"{action.capitalize()} a node",
            ref("Node"),
            errors=(404,),
            params=(NODE_PARAM,),
        )
        for action in ("drain", "resume")
    ),
    route(
        "post",
        "/api/node/register",
        "Agents: register a node (registration token)",
        ref("Node"),
        errors=(400,),
        body=REGISTER_BODY,
        status=201,
    ),
    route(
        "post",
        "/api/node/{node_id}/heartbeat",
        "Agents: heartbeat (registration token)",
        {"type": "object", "properties": {"status": STRING}},
        errors=(404,),
        params=({**NODE_PARAM, "schema": {"type": "integer"}},),
    ),
    route("get", "/api/openapi.json", "This document", {"type": "object"}),
]

ERROR_DESCRIPTIONS = {
    400: "Malformed request",
    401: "No or invalid credentials",
    403: "Not staff",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflicts with the current state",
}


def _operation(item: dict[str, Any]) -> dict[str, Any]:
    error = {"application/json": {"schema": ref("Error")}}
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": item["schema"]}},
        }
    }
    for code in (*item["errors"], 401, 403):
        responses[str(code)] = {
            "description": ERROR_DESCRIPTIONS[code],
            "content": error,
        }
    operation: dict[str, Any] = {
        "summary": item["summary"],
        "operationId": item["method"]
        + "_"
        + "".join(c if c.isalnum() else "_" for c in item["path"].strip("/")),
        "responses": responses,
    }
    if item["parameters"]:
        operation["parameters"] = item["parameters"]
    if item["body"]:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": item["body"]}},
        }
    return operation


def openapi_document(server_url: str = "/") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for item in ROUTES:
        paths.setdefault(item["path"], {})[item["method"]] = _operation(item)
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
