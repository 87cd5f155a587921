"""JSON views compatible with LocalAI's ``/backends/*`` routes (README, "API")."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from backends import catalogue
from backends.http import api_view
from backends.models import Node
from backends.openapi import openapi_document


@api_view()
def installed_list(request: HttpRequest) -> JsonResponse:
    rows = catalogue.local_disk().values()
    return JsonResponse([row.to_localai() for row in rows], safe=False)


@api_view()
def available_list(request: HttpRequest) -> JsonResponse:
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
