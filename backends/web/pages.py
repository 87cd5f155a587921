"""The smaller pages: known backends, galleries, and this host's hardware."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from backends import roles, tasks
from backends.models import Gallery, Node
from backends.services import audit
from backends.services import catalogue as read
from backends.web.base import HtmxHttpRequest, render_page, requires
from backends.web.forms import KnownFilterForm


@requires(roles.VIEW)
def known_list(request: HtmxHttpRequest) -> HttpResponse:
    rows = read.known_backends(set(read.local_disk().keys()))
    modalities = sorted({row["modality"] for row in rows if row["modality"]})
    form = KnownFilterForm(request.GET, modalities=modalities)
    if modality := form.value("modality"):
        rows = [row for row in rows if row["modality"] == modality]
    context = {"rows": rows, "form": form}
    return render_page(
        request,
        "backends/known.html",
        context,
        fragment="backends/known.html#known-table",
    )


@requires(roles.VIEW)
def gallery_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(
        request, "backends/galleries.html", {"galleries": Gallery.objects.all()}
    )


@require_POST
@requires(roles.SYNC_GALLERY)
def gallery_sync(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    gallery = get_object_or_404(Gallery, pk=pk)
    tasks.sync_gallery(gallery.pk, force=True)
    audit.record(None, "gallery_sync", gallery.name, "started")
    messages.info(request, f"Sync of {gallery.name} queued.")
    return redirect("backends:galleries")


@requires(roles.VIEW)
def hardware(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    node.current_capability()  # probes a node that was never probed
    return render(
        request, "backends/hardware.html", {"node": node, "report": node.hardware}
    )


@require_POST
@requires(roles.MANAGE_NODES)
def hardware_probe(request: HtmxHttpRequest) -> HttpResponse:
    node = Node.objects.local()
    node.probe_local_hardware()
    messages.success(request, f"Hardware probed again: capability {node.capability}.")
    return redirect("backends:hardware")
