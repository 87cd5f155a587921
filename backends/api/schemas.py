"""Every shape the JSON API reads or answers, as JSON Schema (draft 2020-12) data.

The same dicts validate requests (``api_view(body=...)``, through ``jsonschema``) and make
the OpenAPI 3.1 document (``backends.api.openapi``), so what is checked and what is
documented cannot drift apart. Named response shapes live in ``COMPONENTS`` and are
referenced with ``ref()``; request shapes stay inline (no ``$ref``) so that they validate
on their own.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Field, Model
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance

from backends.core import models_usage
from backends.core.gallery import MAX_NAME_LENGTH
from backends.models import AuditEvent, Job, Node

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
STRINGS: Schema = {"type": "array", "items": STRING}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}
# No NUL and no lone surrogate ("\ud800" escapes): no database column can hold them.
NO_NUL = r"^[^\x00\ud800-\udfff]*$"
TEXT: Schema = {"type": "string", "pattern": NO_NUL}


def column(model: type[Model], name: str, **extra: Any) -> Schema:
    """A string stored in ``model.name``: as long as the column allows, and without NUL,
    which PostgreSQL refuses in text (a 500 instead of a 400)."""
    field = model._meta.get_field(name)
    assert isinstance(field, Field), f"{model.__name__}.{name} is a relation"
    length = field.max_length
    return {
        "type": "string",
        "pattern": NO_NUL,
        **({"maxLength": length} if length else {}),
        **extra,
    }


def ref(name: str) -> Schema:
    assert name in COMPONENTS, name
    return {"$ref": f"#/components/schemas/{name}"}


def array_of(name: str) -> Schema:
    return {"type": "array", "items": ref(name)}


# -- request pieces ---------------------------------------------------------------------

# validate_name's rule (backends.core.gallery), which stays the final word in the views:
# a single safe path component that does not start with a dot.
# The length is in the pattern too: in gallery@name each part may be a whole name.
_NAME = rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_NAME_LENGTH - 1}}}"
NAME_RULE = "letters, digits, '.', '_' and '-', not starting with '.'"
NAME: Schema = {
    "type": "string",
    # minLength before pattern: an empty value is reported as missing, not as malformed.
    "minLength": 1,
    "pattern": f"^{_NAME}$",
    "maxLength": MAX_NAME_LENGTH,
    "description": f"a name: {NAME_RULE}",
}
# LocalAI's clients send every field of their request struct, unused ones as "" (or
# null): an empty optional name means "none".
OPTIONAL_NAME: Schema = {
    "type": ["string", "null"],
    "pattern": f"^({_NAME})?$",
    "maxLength": MAX_NAME_LENGTH,
    "description": f"empty, or a name: {NAME_RULE}",
}
BACKEND_ID: Schema = {
    "type": "string",
    "minLength": 1,
    "pattern": f"^(({_NAME})?@)?{_NAME}$",
    "maxLength": 2 * MAX_NAME_LENGTH + 1,
    "description": f"a backend name or gallery@name, each of {NAME_RULE}",
}
OPTIONAL_BACKEND_ID: Schema = {
    **BACKEND_ID,
    "type": ["string", "null"],
    "minLength": 0,
    "pattern": f"^((({_NAME})?@)?{_NAME})?$",
    "description": f"empty, or a backend name or gallery@name, each of {NAME_RULE}",
}
STORED_URI = column(Job, "external_uri")
URI: Schema = {
    **STORED_URI,
    "minLength": 1,
    # Not only blanks (the column's own pattern already refuses NUL).
    "allOf": [{"pattern": r"\S"}],
    "description": "OCI reference (needs a name), http(s) URL of a tarball (needs a "
    "name), file:// URL or absolute path of a folder or tarball, or a gallery backend "
    "name (then name and alias must be empty)",
}
# What an agent reports (backends.core.hardware.HardwareReport.to_dict); the strings the
# node keeps in columns fit them.
HARDWARE: Schema = {
    "type": ["object", "null"],
    "description": "the agent's hardware report",
    # Stored as JSON: only what a report holds reaches the database.
    "additionalProperties": False,
    "properties": {
        **{
            key: column(Node, key)
            for key in ("os", "arch", "vendor", "driver_version", "cuda_version")
        },
        "capability": column(Node, "capability"),
        "capability_source": TEXT,
        "explanation": TEXT,
        "vram_bytes": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        "gpus": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["vendor", "name", "vram_bytes"],
                "additionalProperties": False,
                "properties": {
                    "vendor": TEXT,
                    "name": TEXT,
                    "vram_bytes": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": 2**63 - 1,
                    },
                },
            },
        },
        "cuda_toolkits": {"type": "array", "items": INTEGER},
        "jetson": BOOL,
    },
}

# -- request bodies, one per route that reads one ---------------------------------------

APPLY_BODY: Schema = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": BACKEND_ID, "force": BOOL},
}
EXTERNAL_BODY: Schema = {
    "type": "object",
    "required": ["uri"],
    "properties": {
        "uri": URI,
        "name": OPTIONAL_NAME,
        "alias": OPTIONAL_NAME,
        "force": BOOL,
    },
}
NODE_INSTALL_BODY: Schema = {
    "type": "object",
    "properties": {
        "backend": OPTIONAL_BACKEND_ID,
        "uri": {
            **STORED_URI,
            "type": ["string", "null"],
            "description": "OCI reference, http(s) URL, file:// URL or absolute path "
            "(then name is required)",
        },
        "name": {**OPTIONAL_NAME, "description": "required with a uri"},
        "alias": OPTIONAL_NAME,
        "force": BOOL,
    },
    # In allOf so that the failure carries its own message (see ``problem``).
    "allOf": [
        {
            "anyOf": [
                {"required": ["backend"], "properties": {"backend": {"minLength": 1}}},
                {"required": ["uri"], "properties": {"uri": {"pattern": r"\S"}}},
            ],
            "x-message": "backend name or uri required",
        }
    ],
}
PLAN_BODY: Schema = {
    "type": "object",
    "required": ["action", "id"],
    "properties": {
        "action": {
            "type": "string",
            "enum": ["install", "upgrade", "delete", "rollback"],
        },
        "id": {
            **BACKEND_ID,
            "description": "install: gallery backend name or gallery@name; upgrade, "
            "delete, rollback: installed backend name or alias",
        },
        "force": BOOL,
        "version": {
            "type": ["string", "null"],
            "maxLength": 255,
            "pattern": NO_NUL,
            "description": "rollback: a kept version's id, or its version; empty: "
            "the newest kept",
        },
    },
}
DELETE_BODY: Schema = {
    "type": "object",
    "properties": {
        "force": {
            **BOOL,
            "description": "delete even though models of LocalAI use it",
        }
    },
}
UPGRADE_BODY: Schema = {
    "type": "object",
    "properties": {
        "force": {**BOOL, "description": "upgrade even if the backend is pinned"}
    },
}
ROLLBACK_BODY: Schema = {
    "type": "object",
    "required": ["version"],
    "properties": {
        "version": {
            **STRING,
            "minLength": 1,
            "maxLength": 255,
            "pattern": NO_NUL,
            "description": "a kept version's id, or its version (the newest kept "
            "with it)",
        }
    },
}
NODE_BACKEND_BODY: Schema = {
    "type": "object",
    "required": ["backend"],
    "properties": {"backend": BACKEND_ID},
}
NODE_DELETE_BODY: Schema = {
    "type": "object",
    "required": ["backend"],
    "properties": {
        "backend": BACKEND_ID,
        "force": {
            **BOOL,
            "description": "delete even though models of LocalAI on that node use it",
        },
    },
}
# What an agent reads in its own models folder (LOCALAI_MODELS_PATH on its host): the
# controller refuses a delete on that node of a backend one of these uses.
_TEXT_MAX = models_usage.REPORT_MAX_TEXT
MODELS_REPORT: Schema = {
    "type": "array",
    "maxItems": models_usage.REPORT_MAX_MODELS,
    "description": "LocalAI's models on the agent's host (replaces the last report)",
    "items": {
        "type": "object",
        "required": ["model", "backend"],
        # Stored as JSON: nothing but these three keys reaches the database.
        "additionalProperties": False,
        "properties": {
            "model": {**TEXT, "minLength": 1, "maxLength": _TEXT_MAX},
            "backend": {
                **TEXT,
                "minLength": 1,
                "maxLength": _TEXT_MAX,
                "description": "the backend: field of the model's config",
            },
            "folders": {
                "type": "array",
                "maxItems": models_usage.REPORT_MAX_FOLDERS,
                "items": NAME,
                "description": "the backend folders that name lands on there",
            },
        },
    },
}
REGISTER_BODY: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": NAME,
        "hardware": HARDWARE,
        "backends_path": {**column(Node, "backends_path"), "type": ["string", "null"]},
        "models": MODELS_REPORT,
    },
}

# -- query and path parameters ----------------------------------------------------------

JOBS_QUERY: Schema = {"state": {"type": "string", "enum": list(Job.State.values)}}
# A date, or a date and time (ISO 8601, UTC unless an offset is given); empty: any.
_WHEN: Schema = {
    "anyOf": [
        {"type": "string", "maxLength": 0},
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
    ]
}
AUDIT_QUERY: Schema = {
    "who": {**column(AuditEvent, "username"), "description": "user or token name"},
    "action": {"type": "string", "pattern": r"^[a-z_]{1,64}$"},
    "target": {**TEXT, "maxLength": 255, "description": "part of the target"},
    "outcome": {"type": "string", "enum": list(AuditEvent.Outcome.values)},
    "channel": {"type": "string", "enum": list(AuditEvent.Channel.values)},
    "since": {**_WHEN, "description": "from this date or time (UTC), included"},
    "until": {**_WHEN, "description": "to this date (included) or time (excluded)"},
    "page": {"type": "string", "pattern": "^[1-9][0-9]{0,5}$"},
}
BACKEND_PATH: Schema = {
    "name": {**BACKEND_ID, "description": "backend name, alias or gallery@name"}
}
JOB_PATH: Schema = {"job_id": {**STRING, "description": "the job's id (a UUID)"}}
NODE_PATH: Schema = {"node_id": {**STRING, "description": "node id or name"}}
HEARTBEAT_BODY: Schema = {
    "type": "object",
    "properties": {
        "disk": {
            "type": "object",
            "description": "the agent's backends disk, in bytes",
            "required": ["total", "free"],
            "properties": {
                "total": {"type": "integer", "minimum": 1, "maximum": 2**62},
                "free": {"type": "integer", "minimum": 0, "maximum": 2**62},
            },
        },
        "models": MODELS_REPORT,
    },
}
AGENT_NODE_PATH: Schema = {"node_id": {**INTEGER, "description": "the node's id"}}

# -- response shapes --------------------------------------------------------------------

COMPONENTS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "type"],
                "properties": {"code": INTEGER, "message": STRING, "type": STRING},
            },
            "job_id": {**STRING, "description": "a conflict: the job already active"},
            "permission": {
                **STRING,
                "description": "a 403: the permission the user lacks",
            },
            "code": {
                **STRING,
                "description": "why, for scripts: node_takes_no_work, "
                "not_runnable_here, no_online_node, source_refused, backend_in_use, "
                "pinned, version_not_found",
            },
            "models": {
                **STRINGS,
                "description": "backend_in_use: the models of LocalAI that use it",
            },
        },
    },
    "Plan": {
        "type": "object",
        "description": "what the job would do; nothing is changed",
        "required": [
            "action",
            "target",
            "backend",
            "build",
            "explanation",
            "changes",
            "folders",
            "download",
            "disk",
            "models",
            "warnings",
        ],
        "properties": {
            "action": STRING,
            "target": STRING,
            "backend": {**STRING, "description": "the backend the job works on"},
            "build": {**STRING, "description": "the concrete build installed"},
            "explanation": {**STRING, "description": "why that build"},
            "changes": {
                **BOOL,
                "description": "false: the job would be refused or do nothing",
            },
            "folders": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["action", "name", "path", "note"],
                    "properties": {
                        "action": {
                            "type": "string",
                            "enum": ["create", "replace", "remove", "keep"],
                        },
                        "name": STRING,
                        "path": STRING,
                        "note": STRING,
                    },
                },
            },
            "download": {
                "type": "object",
                "required": ["bytes", "sources"],
                "properties": {
                    "bytes": {
                        "type": ["integer", "null"],
                        "description": "null: unknown",
                    },
                    "sources": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["uri", "bytes", "how"],
                            "properties": {
                                "uri": STRING,
                                "bytes": {"type": ["integer", "null"]},
                                "how": STRING,
                            },
                        },
                    },
                },
            },
            "disk": {
                "type": "object",
                "required": ["needed", "free", "reserve", "enough"],
                "properties": {
                    "needed": {"type": ["integer", "null"]},
                    "free": INTEGER,
                    "reserve": INTEGER,
                    "enough": {"type": ["boolean", "null"]},
                },
            },
            "models": STRINGS,
            "warnings": STRINGS,
        },
    },
    "FanOutRefused": {
        "type": "object",
        "required": ["error"],
        "description": "LocalAI's refusal of a distributed install",
        "properties": {"error": STRING, "code": STRING, "meta_alternative": STRING},
    },
    "Gallery": {
        "type": "object",
        "required": ["name", "url", "mirrors"],
        "properties": {
            "name": STRING,
            "url": STRING,
            "mirrors": STRINGS,
            "verification": {
                "type": "object",
                "description": "signature policy its images must satisfy (absent: none)",
                "properties": dict.fromkeys(
                    (
                        "public_key",
                        "issuer",
                        "issuer_regex",
                        "identity",
                        "identity_regex",
                        "not_before",
                    ),
                    STRING,
                ),
            },
        },
    },
    "Metadata": {
        "type": ["object", "null"],
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
                "verified_by",
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
            "Metadata": {"$ref": "#/components/schemas/Metadata"},
            "nodes": {
                "type": "array",
                "items": {"type": "object"},
                "description": "distributed mode: the nodes that have it",
            },
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
            "gallery": {"$ref": "#/components/schemas/Gallery"},
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
    "KeptVersion": {
        "type": "object",
        "required": ["id", "version", "digest", "installed_at", "kept_at", "size"],
        "properties": {
            "id": {**STRING, "description": "what a rollback names"},
            "version": STRING,
            "digest": STRING,
            "installed_at": STRING,
            "kept_at": {**STRING, "description": "when it was replaced"},
            "size": {**INTEGER, "description": "bytes on disk"},
        },
    },
    "Versions": {
        "type": "object",
        "required": ["name", "build", "pinned", "keep_versions", "versions"],
        "properties": {
            "name": STRING,
            "build": {**STRING, "description": "the build folder (a meta's target)"},
            "pinned": BOOL,
            "keep_versions": {**INTEGER, "description": "LOCALAI_ADMIN_KEEP_VERSIONS"},
            "versions": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/KeptVersion"},
                "description": "newest first",
            },
        },
    },
    "Pin": {
        "type": "object",
        "required": ["name", "pinned"],
        "properties": {"name": STRING, "pinned": BOOL},
    },
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
            "state": STRING,
            "jobID": STRING,
            "message": STRING,
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
    "AuditEvent": {
        "type": "object",
        "description": "one change asked of the product, and how it went",
        "required": ["id", "at", "user", "channel", "action", "target", "outcome"],
        "properties": {
            "id": INTEGER,
            "at": {"type": "string", "format": "date-time"},
            "user": STRING,
            "token": {**STRING, "description": "the API token's name, if one was used"},
            "channel": {"type": "string", "enum": list(AuditEvent.Channel.values)},
            "ip": STRING,
            "action": STRING,
            "target": STRING,
            "node": STRING,
            "outcome": {"type": "string", "enum": list(AuditEvent.Outcome.values)},
            "reason": STRING,
            "job_id": NULLABLE_STRING,
            "job_state": NULLABLE_STRING,
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
            "current_bytes": INTEGER,
            "total_bytes": INTEGER,
            "file_size": STRING,
            "downloaded_size": STRING,
            "gallery_element_name": STRING,
            "cancelled": BOOL,
            "cancellable": BOOL,
            "outcome": {
                **STRING,
                "description": "a completed job: what it did (message is LocalAI's "
                "'completed')",
            },
            "nodes": {"type": "array", "items": {"type": "object"}},
            "id": STRING,
            "kind": {"type": "string", "enum": list(Job.Kind.values)},
            "state": {"type": "string", "enum": list(Job.State.values)},
            "bytes_per_second": {"type": "number"},
            "created_at": STRING,
            "started_at": NULLABLE_STRING,
            "finished_at": NULLABLE_STRING,
        },
    },
    "Cancelled": {
        "type": "object",
        "required": ["success", "message"],
        "properties": {"success": BOOL, "message": STRING, "state": STRING},
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
    "Node": {
        "type": "object",
        "required": ["id", "name", "status", "capability"],
        "properties": {
            "id": STRING,
            "name": STRING,
            "status": {"type": "string", "enum": list(Node.Status.values)},
            "is_local": BOOL,
            "capability": STRING,
            "capability_explanation": STRING,
            "vendor": STRING,
            "vram_bytes": {"type": ["integer", "null"]},
            "cuda_version": STRING,
            "driver_version": STRING,
            "os": STRING,
            "arch": STRING,
            "backends_path": STRING,
            "last_heartbeat": NULLABLE_STRING,
            "probed_at": NULLABLE_STRING,
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
    "Heartbeat": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": list(Node.Status.values)}},
    },
}

UPGRADES: Schema = {"type": "object", "additionalProperties": ref("UpgradeInfo")}
JOBS: Schema = {"type": "object", "additionalProperties": ref("OpStatus")}
AUDIT: Schema = {
    "type": "object",
    "required": ["count", "page", "pages", "events"],
    "properties": {
        "count": INTEGER,
        "page": INTEGER,
        "pages": INTEGER,
        "events": array_of("AuditEvent"),
    },
}

# -- validation -------------------------------------------------------------------------

_KINDS = {
    "string": "a string",
    "boolean": "true or false",
    "object": "an object",
    "array": "a list",
    "integer": "an integer",
    "number": "a number",
    "null": "null",
}


class Invalid(ValueError):
    """A request part that does not match its schema; the message names the field."""


def check(schema: Schema, instance: Any, what: str = "request body") -> None:
    """Raise Invalid, naming the field, unless ``instance`` matches ``schema``."""
    errors = list(Draft202012Validator(schema).iter_errors(instance))
    if errors:
        # As jsonschema's best_match: the shallowest error, then the deepest inside it.
        raise Invalid(problem(max(errors, key=relevance), what))


def problem(error: ValidationError, what: str = "request body") -> str:
    """One sentence for a client: which field, and what it must be."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    # A rule that spans fields says itself what is missing (NODE_INSTALL_BODY).
    if "x-message" in schema:
        return str(schema["x-message"])
    if error.context:
        # anyOf/oneOf: the branch that came closest says more than "matches none".
        return problem(min(error.context, key=relevance), what)
    field = ".".join(str(part) for part in error.absolute_path)
    # Set on every error a validator raises (unset only on hand-made errors).
    value: Any = error.validator_value
    rule = error.validator
    if rule == "required" and isinstance(error.instance, dict):
        missing = next(name for name in value if name not in error.instance)
        return f"{field + '.' if field else ''}{missing} is required"
    if not field:
        if rule == "type":
            return f"{what} must be a JSON object"
        return f"{what}: {error.message}"
    if rule == "type":
        kinds = [value] if isinstance(value, str) else value
        return f"{field} must be {' or '.join(_KINDS.get(k, k) for k in kinds)}"
    if rule == "minLength" or (rule == "pattern" and value == r"\S"):
        return f"{field} is required"
    if rule == "pattern" and value == NO_NUL:
        return f"{field} may not contain NUL characters"
    if rule == "maxLength":
        return f"{field} is longer than {value} characters"
    if rule == "enum":
        return (
            f"unknown {field} {error.instance!r}: one of {', '.join(map(str, value))}"
        )
    if rule == "pattern":
        shape = schema.get("description", f"matching {value}")
        return f"{field} {error.instance!r} is not {shape}"
    return f"{field}: {error.message}"
