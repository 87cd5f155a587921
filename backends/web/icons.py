"""Backend icons, served from the worker's cache (never hot-linked from the gallery)."""

from __future__ import annotations

from django.http import HttpResponse, HttpResponseRedirect
from django.templatetags.static import static
from django.views.decorators.http import require_safe

from backends import roles
from backends.services import icons
from backends.web.base import HtmxHttpRequest, requires

# The key is a hash of the icon's URL: a new URL is a new key, so a year is safe.
LONG_CACHE = "private, max-age=31536000, immutable"
# Not cached yet (or refused): ask again soon, the worker may have it by then.
SHORT_CACHE = "private, max-age=300"


@require_safe
@requires(roles.VIEW)
def icon(request: HtmxHttpRequest, key: str) -> HttpResponse:
    found = icons.cached(key)
    response: HttpResponse
    if found is None:
        response = HttpResponseRedirect(static("img/backend-placeholder.svg"))
        response["Cache-Control"] = SHORT_CACHE
        return response
    path, content_type = found
    # At most MAX_ICON_BYTES: read whole, no file handle left to the server to close.
    response = HttpResponse(path.read_bytes(), content_type=content_type)
    response["Cache-Control"] = LONG_CACHE
    # Only ever an image: never sniffed as something else, never a document of ours.
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Content-Disposition"] = "inline"
    return response
