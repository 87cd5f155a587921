"""JSON views of distributed mode: agents' own routes (/api/node/...) and the admin's
node routes (/api/nodes/...)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from backends.api.backends import BadRequest, _backend_id, _json_body, _string
from backends.api.http import api_view, json_error
from backends.core.gallery import validate_name
from backends.models import GalleryBackend, InstalledBackend, Job, JobConflict, Node
from backends.services import nodes


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
        "status": node.status,
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
    nodes.heartbeat(node)
    return JsonResponse({"status": Node.objects.get(pk=node_id).status})


# -- admin -----------------------------------------------------------------------------


@api_view()
def node_list(request: HttpRequest) -> JsonResponse:
    nodes.mark_offline_nodes()
    return JsonResponse([node_dict(node) for node in Node.objects.all()], safe=False)


@api_view()
def node_detail(request: HttpRequest, node_id: str) -> JsonResponse:
    nodes.mark_offline_nodes()
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


def _node_job(
    request: HttpRequest, node: Node, kind: str, target: str, **fields: Any
) -> JsonResponse:
    if node.status != Node.Status.ONLINE:
        return json_error(
            409, f"node {node.name} is {node.status}: it takes no new work"
        )
    try:
        job = Job.objects.start(
            kind, target, node=node, requested_by=request.user.get_username(), **fields
        )
    except JobConflict as exc:
        return json_error(409, str(exc), job_id=str(exc.active.pk))
    status_url = request.build_absolute_uri(f"/backends/jobs/{job.pk}")
    return JsonResponse(
        {
            "jobID": str(job.pk),
            "id": str(job.pk),
            "status_url": status_url,
            "statusUrl": status_url,
            "message": f"backend {'installation' if kind == 'install' else kind} started",
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
    if backend:
        entry = GalleryBackend.objects.find(backend)
        if entry is None:
            return json_error(404, f'no backend found with name "{backend}"')
        return _node_job(
            request, node, Job.Kind.INSTALL, backend, force=force, dedup_key=entry.name
        )
    if not name:
        return json_error(
            400, "specifying a name is required for a uri install on a node"
        )
    return _node_job(
        request,
        node,
        Job.Kind.INSTALL,
        name,
        force=force,
        dedup_key=name,
        external_uri=uri,
        external_name=name,
        external_alias=alias,
    )


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
    if not InstalledBackend.objects.filter(node=node, name=backend).exists() and not (
        InstalledBackend.objects.filter(node=node, alias=backend).exists()
    ):
        return json_error(
            404, f"backend {backend!r} is not installed on node {node.name}"
        )
    return _node_job(request, node, kind, backend)


@api_view(("POST",))
def node_drain(request: HttpRequest, node_id: str) -> JsonResponse:
    return _set_status(node_id, Node.Status.DRAINING)


@api_view(("POST",))
def node_resume(request: HttpRequest, node_id: str) -> JsonResponse:
    return _set_status(node_id, Node.Status.ONLINE)


def _set_status(node_id: str, status: str) -> JsonResponse:
    node = _get_node(node_id)
    if node is None:
        return json_error(404, f"no node {node_id}")
    node.status = status
    node.save(update_fields=("status",))
    return JsonResponse(node_dict(node))
