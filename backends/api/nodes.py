"""JSON views of distributed mode: agents' own routes (/api/node/...) and the admin's
node routes (/api/nodes/...)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial, wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from backends import roles
from backends.api import schemas
from backends.api.backends import (
    BadRequest,
    _backend_id,
    _text,
    host_path_refused,
    refused,
)
from backends.api.http import ApiRequest, Contract, api_view, declared, json_error
from backends.api.schemas import array_of, ref
from backends.core.gallery import validate_name
from backends.core.redact import redact_uri
from backends.models import InstalledBackend, Job, Node, NodeRefused
from backends.services import audit, jobs, nodes


def agent_view(
    *,
    responses: Mapping[int, schemas.Schema],
    errors: tuple[int, ...] = (),
    body: schemas.Schema | None = None,
    path: schemas.Schema | None = None,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """A POST route for agents, authenticated by the registration token; its shapes are
    declared as for ``api_view``."""
    contract = Contract(
        ("POST",), responses, errors, body, path=path or {}, auth="agent"
    )
    return lambda view: _agent_view(declared(contract)(view))


def _agent_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @csrf_exempt
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method != "POST":
            response = json_error(405, f"{request.method} is not allowed here")
            response["Allow"] = "POST"
            return response
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return json_error(401, "missing or invalid Authorization header")
        if not nodes.token_is_valid(value.strip()):
            return json_error(401, "invalid registration token")
        return view(request, *args, **kwargs)

    wrapper.permission = roles.AGENT  # type: ignore[attr-defined]
    return wrapper


def node_dict(node: Node) -> dict[str, Any]:
    return {
        "id": str(node.pk),
        "name": node.name,
        "status": node.current_status,
        "is_local": node.is_local,
        "capability": node.capability,
        "capability_explanation": node.capability_explanation,
        "vendor": node.vendor,
        "vram_bytes": node.vram_bytes,
        "cuda_version": node.cuda_version,
        "driver_version": node.driver_version,
        "os": node.os,
        "arch": node.arch,
        "backends_path": node.backends_path,
        "last_heartbeat": node.last_heartbeat.isoformat()
        if node.last_heartbeat
        else None,
        "probed_at": node.probed_at.isoformat() if node.probed_at else None,
    }


def _get_node(node_id: str) -> Node | None:
    if node_id.isdigit():
        return Node.objects.filter(pk=int(node_id)).first()
    return Node.objects.filter(name=node_id).first()


# -- agents ----------------------------------------------------------------------------


@agent_view(responses={201: ref("Node")}, body=schemas.REGISTER_BODY)
def register(request: ApiRequest) -> JsonResponse:
    """Agents: register a node (registration token)"""
    try:
        name = validate_name(request.json["name"], "node name")
    except ValueError as exc:
        return json_error(400, str(exc))
    hardware = request.json.get("hardware") or {}
    backends_path = _text(request.json, "backends_path")
    try:
        node = nodes.register(
            name, hardware, backends_path, models=request.json.get("models")
        )
    except (KeyError, TypeError, ValueError) as exc:
        return json_error(400, f"hardware report is not usable: {exc}")
    # A (re)registration may bring a node back online: the log says which host did.
    agent = audit.Actor.agent(name, audit.client_ip(request))
    audit.record(agent, "node_register", name, "done", node=node)
    return JsonResponse(node_dict(node), status=201)


@agent_view(
    responses={200: ref("Heartbeat")},
    errors=(404,),
    path=schemas.AGENT_NODE_PATH,
    body=schemas.HEARTBEAT_BODY,
)
def heartbeat(request: ApiRequest, node_id: int) -> JsonResponse:
    """Agents: heartbeat, with the disk's space and LocalAI's models (registration token)"""
    # Every agent, every few seconds: its status is all a heartbeat reads (not its
    # hardware and models reports).
    node = Node.objects.filter(pk=node_id).only("status").first()
    if node is None:
        return json_error(404, f"no node {node_id}: register first")
    disk = request.json.get("disk")
    if disk is not None and disk["free"] > disk["total"]:
        return json_error(400, "disk: free is larger than total")
    space = (disk["total"], disk["free"]) if disk else None
    models = request.json.get("models")
    return JsonResponse({"status": nodes.heartbeat(node, disk=space, models=models)})


# -- admin -----------------------------------------------------------------------------


@api_view(permission=roles.VIEW, responses={200: array_of("Node")})
def node_list(request: HttpRequest) -> JsonResponse:
    """Nodes (distributed mode)"""
    return JsonResponse([node_dict(node) for node in Node.objects.all()], safe=False)


@api_view(
    permission=roles.VIEW,
    responses={200: ref("Node")},
    errors=(404,),
    path=schemas.NODE_PATH,
)
def node_detail(request: HttpRequest, node_id: str) -> JsonResponse:
    """One node"""
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    return JsonResponse(node_dict(node))


@api_view(
    permission=roles.VIEW,
    responses={200: array_of("NodeBackend")},
    errors=(404,),
    path=schemas.NODE_PATH,
)
def node_backends(request: HttpRequest, node_id: str) -> JsonResponse:
    """Backends installed on a node"""
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    rows = [
        {
            "name": row.name,
            "alias": row.alias,
            "is_system": row.is_system,
            "is_meta": row.is_meta,
            "meta_backend_for": row.meta_backend_for,
            "installed_at": row.installed_at.isoformat() if row.installed_at else "",
            "gallery_url": redact_uri(row.gallery_url),
            "version": row.version,
            "uri": redact_uri(row.uri),
            "digest": row.digest,
        }
        for row in InstalledBackend.objects.filter(node=node)
    ]
    return JsonResponse(rows, safe=False)


def _node_started(request: HttpRequest, job: Job) -> JsonResponse:
    status_url = request.build_absolute_uri(f"/backends/jobs/{job.pk}")
    kind = "installation" if job.kind == Job.Kind.INSTALL else job.kind
    return JsonResponse(
        {
            "jobID": str(job.pk),
            "id": str(job.pk),
            "status_url": status_url,
            "statusUrl": status_url,
            "message": f"backend {kind} started",
        },
        status=202,
    )


# A job on one node is accepted, not done: 202, as LocalAI's node routes answer.
node_job_view = partial(
    api_view,
    ("POST",),
    responses={202: ref("NodeJobStarted")},
    errors=(404, 409),
    path=schemas.NODE_PATH,
)


@node_job_view(permission=roles.INSTALL, body=schemas.NODE_INSTALL_BODY)
def node_install(request: ApiRequest, node_id: str) -> JsonResponse:
    """Install a backend on one node (a job)"""
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    data = request.json
    backend, uri = _text(data, "backend"), _text(data, "uri")
    name, alias = _text(data, "name"), _text(data, "alias")
    force = data.get("force", False)
    try:
        if backend:
            _backend_id(backend)
        if name:
            validate_name(name)
        if alias:
            validate_name(alias, "alias")
    except (BadRequest, ValueError) as exc:
        return json_error(400, str(exc))
    if not backend and (refusal := host_path_refused(request, uri)):
        return refusal
    username = request.user.get_username()
    try:
        if backend:
            job = jobs.install(backend, force=force, requested_by=username, node=node)
        else:
            job = jobs.install_external(
                uri,
                name=name,
                alias=alias,
                force=force,
                requested_by=username,
                node=node,
            )
    except jobs.Refused as exc:
        return refused(exc)
    return _node_started(request, job)


def _backend_from_body(request: ApiRequest) -> str:
    return _backend_id(request.json["backend"]).rpartition("@")[2]


@node_job_view(permission=roles.UPGRADE, body=schemas.NODE_BACKEND_BODY)
def node_upgrade(request: ApiRequest, node_id: str) -> JsonResponse:
    """Upgrade a backend on one node (a job)"""
    return _installed_backend_job(request, node_id, Job.Kind.UPGRADE)


@node_job_view(permission=roles.DELETE, body=schemas.NODE_DELETE_BODY)
def node_delete(request: ApiRequest, node_id: str) -> JsonResponse:
    """Delete a backend from one node (a job); 409 backend_in_use unless force"""
    return _installed_backend_job(request, node_id, Job.Kind.DELETE)


def _installed_backend_job(
    request: ApiRequest, node_id: str, kind: str
) -> JsonResponse:
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    try:
        backend = _backend_from_body(request)
    except BadRequest as exc:
        return json_error(400, str(exc))
    username = request.user.get_username()
    try:
        if kind == Job.Kind.DELETE:
            force = bool(request.json.get("force", False))
            job = jobs.delete(backend, requested_by=username, node=node, force=force)
        else:
            job = jobs.upgrade(backend, requested_by=username, node=node)
    except jobs.Refused as exc:
        return refused(exc)
    return _node_started(request, job)


node_status_view = partial(
    api_view,
    ("POST",),
    responses={200: ref("Node")},
    errors=(404, 409),
    path=schemas.NODE_PATH,
)


@node_status_view(permission=roles.MANAGE_NODES)
def node_drain(request: HttpRequest, node_id: str) -> JsonResponse:
    """Drain a node: it takes no new work"""
    return _change_status(node_id, nodes.drain)


@node_status_view(permission=roles.MANAGE_NODES)
def node_resume(request: HttpRequest, node_id: str) -> JsonResponse:
    """Resume a drained node"""
    return _change_status(node_id, nodes.resume)


def _change_status(node_id: str, change: Callable[[Node], None]) -> JsonResponse:
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    try:
        change(node)
    except NodeRefused as exc:
        return json_error(409, str(exc))
    return JsonResponse(node_dict(node))
