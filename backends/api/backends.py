"""JSON views compatible with LocalAI's ``/backends/*`` routes (README, "API")."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase

from backends import roles, tasks
from backends.api import schemas
from backends.api.http import (
    ApiRequest,
    JsonArrayStream,
    api_view,
    forbidden,
    json_error,
)
from backends.api.openapi import openapi_document
from backends.api.schemas import array_of, ref
from backends.core.gallery import validate_backend_id
from backends.fixedsql import FixedSelect
from backends.models import Job, Node
from backends.services import audit, catalogue, jobs, plans, upgrades, versions

JOB_LIST_LIMIT = 200


class BadRequest(Exception):
    """A request its schema accepts but a rule across its fields refuses: 400."""


def _text(data: dict[str, Any], key: str) -> str:
    """An optional string field of a validated body; absent or null reads as ""."""
    return str(data.get(key) or "").strip()


def _backend_id(value: str) -> str:
    """Check a ``name`` or ``gallery@name`` reference; the names must be safe.

    The schemas say the same, but validate_name stays the rule the core trusts."""
    try:
        return validate_backend_id(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def host_path_refused(request: HttpRequest, uri: str) -> JsonResponse | None:
    """A 403 when ``uri`` names a file or folder on this host and the user may not
    install from one (``roles.to_install_from``)."""
    needed = roles.to_install_from(uri)
    return None if audit.permitted(request, needed) else forbidden(needed)


def _started_body(request: HttpRequest, job: Job) -> dict[str, str]:
    status_url = request.build_absolute_uri(f"/backends/jobs/{job.pk}")
    return {"id": str(job.pk), "status_url": status_url, "state": job.state}


def _started(request: HttpRequest, job: Job) -> JsonResponse:
    return JsonResponse(_started_body(request, job))


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


@api_view(permission=roles.VIEW, responses={200: array_of("SystemBackend")})
def installed_list(request: HttpRequest) -> JsonResponse:
    """Installed backends (LocalAI SystemBackend)"""
    return _installed()


@api_view(permission=roles.VIEW, responses={200: array_of("SystemBackend")})
def installed_list_slash(request: HttpRequest) -> JsonResponse:
    """Installed backends: ``/backends/`` answers as ``/backends`` (as LocalAI's router)"""
    return _installed()


def _installed() -> JsonResponse:
    if settings.DISTRIBUTED:
        return JsonResponse(catalogue.cluster_installed(), safe=False)
    rows = catalogue.local_disk().values()
    return JsonResponse([row.to_localai() for row in rows], safe=False)


@api_view(permission=roles.VIEW, responses={200: array_of("GalleryBackend")})
def available_list(request: HttpRequest) -> HttpResponseBase:
    """Gallery backends this node can run (distributed: that some online node can run)"""
    # Streamed: a gallery can hold 200,000 entries.
    if settings.DISTRIBUTED:
        return JsonArrayStream(catalogue.cluster_available(), encoded=True)
    capability = Node.objects.local().current_capability()
    return JsonArrayStream(catalogue.available(capability), encoded=True)


@api_view(permission=roles.VIEW, responses={200: array_of("KnownBackend")})
def known_list(request: HttpRequest) -> HttpResponseBase:
    """Known backends, by modality then name"""
    names = set(catalogue.local_disk().keys())
    return JsonArrayStream(catalogue.known_backends(names))


@api_view(permission=roles.VIEW, responses={200: array_of("Gallery")})
def gallery_list(request: HttpRequest) -> JsonResponse:
    """Configured backend galleries"""
    return JsonResponse(catalogue.galleries(), safe=False)


@api_view(permission=roles.VIEW, responses={200: {"type": "object"}})
def openapi(request: HttpRequest) -> JsonResponse:
    """This document"""
    return JsonResponse(openapi_document(request.build_absolute_uri("/")))


# -- jobs ---------------------------------------------------------------------------


@api_view(
    permission=roles.VIEW, responses={200: schemas.JOBS}, query=schemas.JOBS_QUERY
)
def job_list(request: HttpRequest) -> JsonResponse:
    """Jobs, newest first (job id -> OpStatus)"""
    jobs = Job.objects.all()
    if "state" in request.GET:
        jobs = jobs.filter(state=request.GET["state"])
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


@api_view(
    permission=roles.VIEW,
    responses={200: ref("OpStatus")},
    errors=(404,),
    path=schemas.JOB_PATH,
)
def job_detail(request: HttpRequest, job_id: str) -> JsonResponse:
    """One job's status"""
    job = _get_job(job_id)
    if job is None:
        return json_error(404, f"could not find any job with id {job_id}")
    return JsonResponse(job.to_opstatus())


@api_view(
    ("POST",),
    permission=roles.CANCEL_JOB,
    responses={200: ref("Cancelled")},
    errors=(404, 409),
    path=schemas.JOB_PATH,
)
def job_cancel(request: HttpRequest, job_id: str) -> JsonResponse:
    """Cancel a queued or running job"""
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


@api_view(
    ("POST",),
    permission=roles.INSTALL,
    responses={
        200: ref("JobStarted"),
        # In distributed mode the 409 may be LocalAI's fan-out refusal instead.
        409: {"anyOf": [ref("Error"), ref("FanOutRefused")]},
    },
    errors=(404,),
    body=schemas.APPLY_BODY,
)
def apply(request: ApiRequest) -> JsonResponse:
    """Install a backend from the galleries (a job)"""
    try:
        target = _backend_id(request.json["id"])
    except BadRequest as exc:
        return json_error(400, str(exc))
    force = request.json.get("force", False)
    try:
        job = jobs.install(
            target, force=force, requested_by=request.user.get_username()
        )
    except jobs.Refused as exc:
        return refused(exc)
    return _started(request, job)


# Delete and upgrade read and answer the same shapes.
installed_job_view = partial(
    api_view,
    ("POST",),
    responses={200: ref("JobStarted")},
    errors=(404, 409),
    path=schemas.BACKEND_PATH,
)


@installed_job_view(permission=roles.DELETE, body=schemas.DELETE_BODY)
def delete(request: ApiRequest, name: str) -> JsonResponse:
    """Delete an installed backend (a job)

    Refused with 409 ``backend_in_use`` and the models' names while models of LocalAI
    (``LOCALAI_MODELS_PATH``) use it, unless the body says ``{"force": true}``.
    """
    try:
        job = jobs.delete(
            name,
            requested_by=request.user.get_username(),
            force=request.json.get("force", False),
        )
    except jobs.Refused as exc:
        return refused(exc)
    return _started(request, job)


@installed_job_view(permission=roles.UPGRADE, body=schemas.UPGRADE_BODY)
def upgrade(request: ApiRequest, name: str) -> JsonResponse:
    """Upgrade an installed backend (a job); a pinned one needs force"""
    try:
        job = jobs.upgrade(
            name,
            force=request.json.get("force", False),
            requested_by=request.user.get_username(),
        )
    except jobs.Refused as exc:
        return refused(exc)
    return _started(request, job)


# -- kept versions and pins ---------------------------------------------------------


@api_view(
    permission=roles.VIEW,
    responses={200: ref("Versions")},
    errors=(404, 409),
    path=schemas.BACKEND_PATH,
)
def backend_versions(request: HttpRequest, name: str) -> JsonResponse:
    """The versions an upgrade or a reinstall kept for a rollback, newest first"""
    try:
        return JsonResponse(versions.versions(name).to_json())
    except jobs.Refused as exc:
        return refused(exc)


@installed_job_view(permission=roles.UPGRADE, body=schemas.ROLLBACK_BODY)
def backend_rollback(request: ApiRequest, name: str) -> JsonResponse:
    """Put a kept version back in place (a job); the current build is kept"""
    try:
        job = versions.rollback(
            name, request.json["version"], requested_by=request.user.get_username()
        )
    except jobs.Refused as exc:
        return refused(exc)
    return _started(request, job)


pin_view = partial(
    api_view,
    ("POST",),
    permission=roles.UPGRADE,
    responses={200: ref("Pin")},
    errors=(404, 409),
    path=schemas.BACKEND_PATH,
)


@pin_view()
def backend_pin(request: HttpRequest, name: str) -> JsonResponse:
    """Pin a backend: left out of upgrade all, upgraded only with force"""
    return _pin(name, True)


@pin_view()
def backend_unpin(request: HttpRequest, name: str) -> JsonResponse:
    """Unpin a backend"""
    return _pin(name, False)


def _pin(name: str, pinned: bool) -> JsonResponse:
    try:
        record = versions.set_pinned(name, pinned)
    except jobs.Refused as exc:
        return refused(exc)
    return JsonResponse({"name": record.name, "pinned": record.pinned})


@api_view(
    ("POST",),
    permission=roles.INSTALL,
    responses={200: ref("ExternalJobStarted")},
    errors=(404, 409),
    body=schemas.EXTERNAL_BODY,
)
def install_external(request: ApiRequest) -> JsonResponse:
    """Install from an OCI image, a URL or a folder (a job)

    What else the body needs depends on the kind of uri (a name for an OCI reference or a
    URL, none for a gallery name): those refusals are 400s too.
    """
    data = request.json
    uri, name, alias = _text(data, "uri"), _text(data, "name"), _text(data, "alias")
    force = data.get("force", False)
    if refusal := host_path_refused(request, uri):
        return refusal
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
    # LocalAI's install-external answer adds ``jobID`` and ``message``.
    body = _started_body(request, job)
    body |= {"jobID": body["id"], "message": "External backend installation started"}
    return JsonResponse(body)


# -- upgrades -----------------------------------------------------------------------


@api_view(permission=roles.VIEW, responses={200: schemas.UPGRADES})
def upgrade_list(request: HttpRequest) -> JsonResponse:
    """Cached upgrade information"""
    return JsonResponse(upgrades.upgrade_info())


@api_view(("POST",), permission=roles.UPGRADE, responses={200: schemas.UPGRADES})
def upgrade_check(request: HttpRequest) -> JsonResponse:
    """Start an upgrade check; answers the cached result"""
    # LocalAI answers with the cached result while the check runs in the background.
    info = upgrades.upgrade_info()
    tasks.check_upgrades()
    return JsonResponse(info)


# -- plans ---------------------------------------------------------------------------


@api_view(
    ("POST",),
    # A plan changes nothing: whoever may look may ask.
    permission=roles.VIEW,
    responses={200: ref("Plan")},
    errors=(404, 409),
    body=schemas.PLAN_BODY,
)
def plan(request: ApiRequest) -> JsonResponse:
    """What an install, upgrade, delete or rollback would do, without doing it"""
    data = request.json
    try:
        answer = plans.make_plan(
            data["action"],
            data["id"],
            force=data.get("force", False),
            version=data.get("version") or "",
        )
    except jobs.Refused as exc:
        return refused(exc)
    return JsonResponse(answer.to_json())
