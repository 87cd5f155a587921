"""The product's URLs plus the trivial JSON views the status endpoint is compared with.

Exists only in the benchmark deployment (``bench.polling_settings``), never in the
product. ``bench/trivial`` sits behind the same ``api_view`` token check as every API
route, so the comparison measures what the status endpoint adds on top of an
authenticated request (its job lookup and serialisation). ``bench/trivial-anonymous``
is the bare view, printed for information only.
"""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path

from backends import roles
from backends.api.http import api_view
from localai_admin import urls as product


def trivial_anonymous(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


trivial = api_view(("GET",), permission=roles.VIEW)(trivial_anonymous)

# The product's patterns themselves, not an include() of them: the product's routes
# resolve at the depth they have in the product, not one level deeper.
urlpatterns = [
    path("bench/trivial", trivial),
    path("bench/trivial-anonymous", trivial_anonymous),
    *product.urlpatterns,
]
handler404 = product.handler404
