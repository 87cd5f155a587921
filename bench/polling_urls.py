"""The product's URLs plus the trivial JSON views the status endpoint is compared with.

Exists only in the benchmark deployment (``bench.polling_settings``), never in the
product. ``bench/trivial`` sits behind the same ``api_view`` token check as every API
route, so the comparison measures what the status endpoint adds on top of an
authenticated request (its job lookup and serialisation). ``bench/trivial-anonymous``
is the bare view, printed for information only.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from backends.http import api_view


def trivial_anonymous(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


trivial = api_view(("GET",))(trivial_anonymous)

urlpatterns = [
    path("bench/trivial", trivial),
    path("bench/trivial-anonymous", trivial_anonymous),
    path("", include("localai_admin.urls")),
]
