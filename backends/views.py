from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from backends import tasks
from backends.http import HtmxHttpRequest
from backends.models import Gallery, GalleryBackend, Node

PAGE_SIZE = 50


@login_required
def catalogue(request: HtmxHttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    entries = GalleryBackend.objects.enabled().select_related("gallery")
    if query:
        entries = entries.filter(
            Q(name__icontains=query) | Q(description__icontains=query) | Q(tags__icontains=query)
        )
    page = Paginator(entries, PAGE_SIZE).get_page(request.GET.get("page"))
    template_name = "backends/catalogue.html"
    if request.htmx:
        template_name += "#catalogue-rows"
    context = {"page": page, "query": query, "node": Node.objects.local()}
    return render(request, template_name, context)


@login_required
def gallery_list(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, "backends/galleries.html", {"galleries": Gallery.objects.all()})


@require_POST
@staff_member_required
def gallery_sync(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    gallery = get_object_or_404(Gallery, pk=pk)
    tasks.sync_gallery(gallery.pk, force=True)
    messages.info(request, f"Sync of {gallery.name} queued.")
    return redirect("backends:galleries")
