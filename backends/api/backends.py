"""JSON views compatible with LocalAI's ``/backends/*`` routes (README, "API")."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from backends import tasks
from backends.api.http import api_view, json_error
from backends.api.openapi import openapi_document
from backends.core.gallery import validate_backend_id
from backends.fixedsql import FixedSelect
from backends.models import Job, Node
from backends.services import catalogue, jobs, upgrades

MAX_BODY = 64 * 1024
JOB_LIST_LIMIT = 200


class BadRequest(Exception):
    pass


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise BadRequest("request body too large")
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _string(data: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    if required and not value.strip():
        raise BadRequest(f"{key} is required")
    return value.strip()


def _backend_id(value: str) -> str:
    """Check a ``name`` or ``gallery@name`` reference; the names must be safe."""
    try:
        return validate_backend_id(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _started(request: HttpRequest, job: Job) -> JsonResponse:
    status_url = request.build_absolute_uri(f"/backends/jobs/{job.pk}")
    return JsonResponse(
        {"id": str(job.pk), "status_url": status_url, "state": job.state}
    )


def refused(exc: jobs.Refused) -> JsonResponse:
    """A service's refusal as JSON: the error envelope, plus its code and details.

    The fan-out guard keeps LocalAI's own shape (``error`` is the message itself).
    """
    if exc.code == "concrete_backend_requires_target":
        return JsonResponse(
            {"error": str(exc), "code": exc.code, **exc.extra}, status=exc.status
        )
    extra = {"code": exc.code} if exc.code else {}
    return json_error(exc.status, str(exc), **extra, **exc.extra)


# -- read ---------------------------------------------------------------------------


@api_view()
def installed_list(request: HttpRequest) -> JsonResponse:
    if settings.DISTRIBUTED:
        return JsonResponse(catalogue.cluster_installed(), safe=False)
    rows = catalogue.local_disk().values()
    return JsonResponse([row.to_localai() for row in rows], safe=False)


@api_view()
def available_list(request: HttpRequest) -> JsonResponse:
    if settings.DISTRIBUTED:
        return JsonResponse(catalogue.cluster_available(), safe=False)
    capability = Node.objects.local().current_capability()
    return JsonResponse(catalogue.available(capability), safe=False)


@api_view()
def known_list(request: HttpRequest) -> JsonResponse:
    names = set(catalogue.local_disk().keys())
    return JsonResponse(catalogue.known_backends(names), safe=False)


@api_view()
def gallery_list(request: HttpRequest) -> JsonResponse:
    return JsonResponse(catalogue.galleries(), safe=False)


@api_view()
def openapi(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_document(request.build_absolute_uri("/")))


# -- jobs ---------------------------------------------------------------------------


@api_view()
def job_list(request: HttpRequest) -> JsonResponse:
    jobs = Job.objects.all()
    if "state" in request.GET:
        state = request.GET["state"]
        if state not in Job.State.values:
            return json_error(
                400, f"unknown state {state!r}: one of {', '.join(Job.State.values)}"
            )
        jobs = jobs.filter(state=state)
    return JsonResponse(
        {str(job.pk): job.to_opstatus() for job in jobs[:JOB_LIST_LIMIT]}
    )


def _get_job(job_id: str) -> Job | None:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return None
    # The status route is what scripts and the dashboard poll: one fixed SELECT, without
    # the ORM building the query on every request (docs/performance.md).
    found = JOB_BY_ID.first([Job._meta.pk.get_db_prep_value(key, connection)])
    return found[0] if found else None  # type: ignore[return-value]


JOB_BY_ID = FixedSelect([(Job, "j")], f"FROM {Job._meta.db_table} j WHERE j.id = %s")


@api_view()
def job_detail(request: HttpRequest, job_id: str) -> JsonResponse:
    job = _get_job(job_id)
    if job is None:
        return json_error(404, f"could not find any job with id {job_id}")
    return JsonResponse(job.to_opstatus())


@api_view(("POST",))
def job_cancel(request: HttpRequest, job_id: str) -> JsonResponse:
    job = _get_job(job_id)
    if job is None:
        return json_error(404, f"could not find any job with id {job_id}")
    if not jobs.cancel(job):
        return json_error(
            409, f"job {job_id} is {job.state} and cannot be cancelled now"
        )
    return JsonResponse(
        {"success": True, "message": "Operation cancelled", "state": job.state}
    )


# -- mutations ----------------------------------------------------------------------


@api_view(("POST",))
def apply(request: HttpRequest) -> JsonResponse:
    try:
        data = _json_body(request)
        target = _backend_id(_string(data, "id", required=True))
        force = data.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest("force must be true or false")
    except BadRequest as exc:
        return json_error(400, str(exc))
    try:
        job = jobs.install(
            target, force=force, requested_by=request.user.get_username()
        )
    except jobs.Refused as exc:
        return refused(exc)
    return _started(request, job)


@api_view(("POST",))
def delete(request: HttpRequest, name: str) -> JsonResponse:
    return _installed_job(request, name, Job.Kind.DELETE)


@api_view(("POST",))
def upgrade(request: HttpRequest, name: str) -> JsonResponse:
    return _installed_job(request, name, Job.Kind.UPGRADE)


def _installed_job(request: HttpRequest, name: str, kind: str) -> JsonResponse:
    """A delete or an upgrade: the backend must be installed here, and not a system one."""
    start = jobs.delete if kind == Job.Kind.DELETE else jobs.upgrade
    try:
        job = start(name, requested_by=request.user.get_username())
    except jobs.Refused as exc:
        return refused(exc)
    return _started(request, job)


@api_view(("POST",))
def install_external(request: HttpRequest) -> JsonResponse:
    try:
        data = _json_body(request)
        uri = _string(data, "uri", required=True)
        name = _string(data, "name")
        alias = _string(data, "alias")
        force = bool(data.get("force", False))
    except BadRequest as exc:
        return json_error(400, str(exc))
    try:
        job = jobs.install_external(
            uri,
            name=name,
            alias=alias,
            force=force,
            requested_by=request.user.get_username(),
        )
    except jobs.Refused as exc:
        return refused(exc)
    return _external_answer(_started(request, job))


def _external_answer(response: JsonResponse) -> JsonResponse:
    """LocalAI's install-external answer adds ``jobID`` and ``message``."""
    if response.status_code != 200:
        return response
    body = json.loads(response.content)
    body |= {"jobID": body["id"], "message": "External backend installation started"}
    return JsonResponse(body)


# -- upgrades -----------------------------------------------------------------------


@api_view()
def upgrade_list(request: HttpRequest) -> JsonResponse:
    return JsonResponse(upgrades.upgrade_info())


@api_view(("POST",))
def upgrade_check(request: HttpRequest) -> JsonResponse:
    # LocalAI answers with the cached result while the check runs in the background.
    info = upgrades.upgrade_info()
    tasks.check_upgrades()
    return JsonResponse(info)
