"""The smaller pages: known backends, galleries, and this host's hardware."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HTMX_STOP_POLLING

from backends import roles, tasks
from backends.models import Gallery, Node
from backends.services import audit
from backends.services import catalogue as read
from backends.web.base import (
    HtmxHttpRequest,
    render_page,
    requires,
    since_param,
    wants_fragment,
    watch_since,
)
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
    """The galleries; after "Sync now" (``?syncing=<pk>&since=<t>``) that gallery's row
    polls until its sync has run, then stops (286) showing the result."""
    galleries = list(Gallery.objects.all())
    since = watch_since(request)
    syncing = request.GET.get("syncing", "")
    watched = next((g for g in galleries if str(g.pk) == syncing), None)
    pending = watched is not None and since is not None and watched.sync_pending(since)
    # Past the watch window with no attempt since the request: no worker took it.
    stalled = (
        watched is not None
        and since is not None
        and not pending
        and (watched.last_attempt_at is None or watched.last_attempt_at < since)
    )
    context = {
        "galleries": galleries,
        "watching": watched.pk if pending and watched else None,
        "stalled": watched.pk if stalled and watched else None,
        "since": request.GET.get("since", ""),
    }
    if watched is not None and wants_fragment(request):
        return render_page(
            request,
            "backends/galleries.html",
            context | {"gallery": watched},
            fragment="backends/galleries.html#gallery-row",
            fragment_status=200 if pending else HTMX_STOP_POLLING,
        )
    return render(request, "backends/galleries.html", context)


@require_POST
@requires(roles.SYNC_GALLERY)
def gallery_sync(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    gallery = get_object_or_404(Gallery, pk=pk)
    since = since_param()
    tasks.sync_gallery(gallery.pk, force=True)
    audit.record(None, "gallery_sync", gallery.name, "started")
    messages.info(
        request, f"Sync of {gallery.name} queued: its row updates when it is done."
    )
    query = urlencode({"syncing": gallery.pk, "since": since})
    return redirect(f"{reverse('backends:galleries')}?{query}")


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
