"""Offline kits on the dashboard: upload a kit, see what it holds and whether this
host's policies accept its signatures, then install from it (``import_backends``'s
two steps, with a look in between)."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST

from backends import roles
from backends.core.installed import human_size
from backends.core.kits import KitError, Layout
from backends.services import jobs, kits
from backends.web.base import HtmxHttpRequest, requires
from backends.web.forms import KitInstallForm, KitUploadForm

# The multipart envelope around the kit: boundaries, headers, the CSRF token.
_ENVELOPE_BYTES = 64 * 1024
# A refused upload's body is read and dropped up to this size (see drained_on_refusal).
_DRAIN_BYTES = 16 * 1024 * 1024


class KitUploadHandler(FileUploadHandler):
    """Writes the uploaded kit to a file beside the extracted kits (never in memory,
    nor in a /tmp that may be small), and stops reading past the size cap."""

    def __init__(self, request: HttpRequest, folder: Path, max_bytes: int) -> None:
        super().__init__(request)
        self.folder, self.max_bytes = folder, max_bytes
        self.too_large = False
        self.file: UploadedFile[bytes] | None = None

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.folder.mkdir(parents=True, exist_ok=True)
        # Deleted when closed: the request's end closes it.
        spool = tempfile.NamedTemporaryFile(dir=self.folder, prefix=".upload-")  # noqa: SIM115
        self.file = UploadedFile(
            spool, self.file_name, self.content_type, 0, self.charset
        )

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        assert self.file is not None
        if start + len(raw_data) > self.max_bytes:
            self.too_large = True
            self.file.close()
            raise StopUpload(connection_reset=True)
        self.file.write(raw_data)
        return None

    def file_complete(self, file_size: int) -> UploadedFile[bytes] | None:
        assert self.file is not None
        self.file.seek(0)
        self.file.size = file_size
        return self.file


def _too_large(max_bytes: int) -> str:
    return (
        f"The kit is larger than {human_size(max_bytes)}, the most this host accepts "
        "(LOCALAI_ADMIN_MAX_KIT_BYTES)."
    )


def drained_on_refusal(
    view: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    """Read and drop the body of a refused upload (not signed in, not allowed, too
    large) when it is small enough, before answering. The proxy streams uploads to the
    app (deploy/site.conf): a worker that answers and closes with the body unread
    resets the connection, and nginx then shows the client a 502, not the answer."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest) -> HttpResponse:
        response = view(request)
        try:
            announced = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            announced = 0
        unread = not getattr(request, "_read_started", False)
        if response.status_code >= 300 and unread and announced <= _DRAIN_BYTES:
            while request.read(64 * 1024):
                pass
        return response

    return wrapper


@csrf_exempt
@drained_on_refusal
@require_http_methods(["GET", "POST"])
@requires(roles.INSTALL_FROM_PATH)
def kit_upload(request: HtmxHttpRequest) -> HttpResponse:
    """The upload form. The CSRF check runs after the upload handler is in place
    (reading the body for the token would otherwise pick the default handlers)."""
    max_bytes = settings.LOCALAI_ADMIN_MAX_KIT_BYTES
    if request.method == "POST":
        try:
            announced = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            announced = 0  # read under the handler's own bound
        if announced > max_bytes + _ENVELOPE_BYTES:
            # Refused before a byte of the body is read.
            return _upload_page(request, KitUploadForm(), _too_large(max_bytes), 413)
        request.upload_handlers = [
            KitUploadHandler(request, kits.kits_folder(), max_bytes)
        ]
    response: HttpResponse = csrf_protect(_kit_upload)(request)
    return response


def _kit_upload(request: HtmxHttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _upload_page(request, KitUploadForm())
    form = KitUploadForm(request.POST, request.FILES)
    handler = request.upload_handlers[0]
    if isinstance(handler, KitUploadHandler) and handler.too_large:
        limit = settings.LOCALAI_ADMIN_MAX_KIT_BYTES
        return _upload_page(request, form, _too_large(limit), 413)
    if not form.is_valid():
        return _upload_page(request, form, status=400)
    upload = form.cleaned_data["kit"]
    try:
        with upload:
            layout = kits.receive_kit(upload.name or "kit", upload.file)
    except jobs.Refused as exc:
        return _upload_page(request, form, f"Not imported: {exc}.", 400)
    return redirect("backends:kit-preview", layout.root.name)


def _upload_page(
    request: HtmxHttpRequest,
    form: KitUploadForm,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    context = {
        "form": form,
        "error": error,
        "max_size": human_size(settings.LOCALAI_ADMIN_MAX_KIT_BYTES),
        "received": kits.received(),
    }
    return render(request, "backends/kit_upload.html", context, status=status)


def _kit_or_404(kit: str) -> Layout:
    layout = kits.find_kit(kit)
    if layout is None:
        raise Http404("No such kit: upload it again.")
    return layout


@require_http_methods(["GET", "POST"])
@requires(roles.INSTALL_FROM_PATH)
def kit_preview(request: HtmxHttpRequest, kit: str) -> HttpResponse:
    """What the kit holds and what this host's policies say of it; installs on
    confirmation."""
    layout = _kit_or_404(kit)
    try:
        preview = kits.preview(layout)
    except (KitError, OSError) as exc:
        return render(
            request,
            "backends/kit_preview.html",
            {"kit": kit, "error": f"The kit cannot be read: {exc}."},
            status=400,
        )
    form = KitInstallForm(
        request.POST or None,
        choices=preview.entries,
        initial={"names": preview.backends},
    )
    error = ""
    if request.method == "POST" and form.is_valid():
        try:
            _, started = kits.install_kit(
                layout,
                form.cleaned_data["names"],
                force=form.cleaned_data["force"],
                requested_by=request.user.get_username(),
            )
        except (jobs.Refused, KitError) as exc:
            error = f"Not started: {exc}."
        else:
            messages.success(
                request,
                f"Installing {len(started)} backend(s) from kit {kit}: the jobs tray "
                "shows their progress.",
            )
            if len(started) == 1:
                return redirect("backends:job-detail", started[0].pk)
            return redirect("backends:jobs")
    context = {"kit": kit, "preview": preview, "form": form, "error": error}
    return render(request, "backends/kit_preview.html", context)


@require_POST
@requires(roles.INSTALL_FROM_PATH)
def kit_discard(request: HtmxHttpRequest, kit: str) -> HttpResponse:
    kits.discard_kit(_kit_or_404(kit))
    messages.success(request, f"Kit {kit} removed.")
    return redirect("backends:kit-upload")
