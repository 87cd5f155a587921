"""JSON views of distributed mode: agents' own routes (/api/node/...) and the admin's
node routes (/api/nodes/...)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from backends.api.backends import (
    BadRequest,
    _backend_id,
    _json_body,
    _string,
    refused,
)
from backends.api.http import api_view, json_error
from backends.core.gallery import validate_name
from backends.models import InstalledBackend, Job, Node, NodeRefused
from backends.services import jobs, nodes


def agent_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A POST route for agents, authenticated by the registration token."""

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


@agent_view
def register(request: HttpRequest) -> JsonResponse:
    try:
        data = _json_body(request)
        name = validate_name(_string(data, "name", required=True), "node name")
        hardware = data.get("hardware") or {}
        if not isinstance(hardware, dict):
            raise BadRequest("hardware must be an object")
        backends_path = _string(data, "backends_path")
    except (BadRequest, ValueError) as exc:
        return json_error(400, str(exc))
    try:
        node = nodes.register(name, hardware, backends_path)
    except (KeyError, TypeError, ValueError) as exc:
        return json_error(400, f"hardware report is not usable: {exc}")
    return JsonResponse(node_dict(node), status=201)


@agent_view
def heartbeat(request: HttpRequest, node_id: int) -> JsonResponse:
    node = Node.objects.filter(pk=node_id).first()
    if node is None:
        return json_error(404, f"no node {node_id}: register first")
    return JsonResponse({"status": nodes.heartbeat(node)})


# -- admin -----------------------------------------------------------------------------


@api_view()
def node_list(request: HttpRequest) -> JsonResponse:
    return JsonResponse([node_dict(node) for node in Node.objects.all()], safe=False)


@api_view()
def node_detail(request: HttpRequest, node_id: str) -> JsonResponse:
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    return JsonResponse(node_dict(node))


@api_view()
def node_backends(request: HttpRequest, node_id: str) -> JsonResponse:
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
            "gallery_url": row.gallery_url,
            "version": row.version,
            "uri": row.uri,
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


@api_view(("POST",))
def node_install(request: HttpRequest, node_id: str) -> JsonResponse:
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    try:
        data = _json_body(request)
        backend = _string(data, "backend")
        uri, name, alias = (
            _string(data, "uri"),
            _string(data, "name"),
            _string(data, "alias"),
        )
        force = data.get("force", False) is True
        if not backend and not uri:
            raise BadRequest("backend name or uri required")
        if backend:
            _backend_id(backend)
        if name:
            validate_name(name)
        if alias:
            validate_name(alias, "alias")
    except (BadRequest, ValueError) as exc:
        return json_error(400, str(exc))
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


def _backend_from_body(request: HttpRequest) -> str:
    backend = _string(_json_body(request), "backend")
    if not backend:
        raise BadRequest("backend name required")
    return _backend_id(backend).rpartition("@")[2]


@api_view(("POST",))
def node_upgrade(request: HttpRequest, node_id: str) -> JsonResponse:
    return _installed_backend_job(request, node_id, Job.Kind.UPGRADE)


@api_view(("POST",))
def node_delete(request: HttpRequest, node_id: str) -> JsonResponse:
    return _installed_backend_job(request, node_id, Job.Kind.DELETE)


def _installed_backend_job(
    request: HttpRequest, node_id: str, kind: str
) -> JsonResponse:
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    try:
        backend = _backend_from_body(request)
    except BadRequest as exc:
        return json_error(400, str(exc))
    start = jobs.delete if kind == Job.Kind.DELETE else jobs.upgrade
    try:
        job = start(backend, requested_by=request.user.get_username(), node=node)
    except jobs.Refused as exc:
        return refused(exc)
    return _node_started(request, job)


@api_view(("POST",))
def node_drain(request: HttpRequest, node_id: str) -> JsonResponse:
    return _change_status(node_id, Node.drain)


@api_view(("POST",))
def node_resume(request: HttpRequest, node_id: str) -> JsonResponse:
    return _change_status(node_id, Node.resume)


def _change_status(node_id: str, change: Callable[[Node], None]) -> JsonResponse:
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    try:
        change(node)
    except NodeRefused as exc:
        return json_error(409, str(exc))
    return JsonResponse(node_dict(node))
