from __future__ import annotations

from django.urls import path

from backends import api, views

app_name = "backends"

urlpatterns = [
    # Dashboard pages
    path("", views.catalogue, name="catalogue"),
    path("galleries/", views.gallery_list, name="galleries"),
    path("galleries/<int:pk>/sync/", views.gallery_sync, name="gallery-sync"),
    # LocalAI-compatible JSON API: /backends/...
    path("backends", api.installed_list, name="api-installed"),
    path("backends/available", api.available_list, name="api-available"),
    path("backends/known", api.known_list, name="api-known"),
    path("backends/galleries", api.gallery_list, name="api-galleries"),
    # Our own JSON API: /api/...
    path("api/openapi.json", api.openapi, name="api-openapi"),
]
