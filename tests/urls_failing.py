"""The site's URL conf plus two routes that fail: what an unexpected bug answers."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from backends import roles
from backends.api.http import api_view
from localai_admin.urls import (  # noqa: F401 (the error handlers come along)
    handler400,
    handler403,
    handler404,
    handler500,
)
from localai_admin.urls import urlpatterns as site


class Bug(Exception):
    pass


@api_view(permission=roles.VIEW)
def failing_route(request: HttpRequest) -> HttpResponse:
    raise Bug("secret detail at /srv/private")


def failing_page(request: HttpRequest) -> HttpResponse:
    raise Bug("secret detail at /srv/private")


urlpatterns = [
    path("api/failing", failing_route),
    path("failing/", failing_page),
    *site,
]
