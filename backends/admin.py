from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from backends.models import (
    ApiToken,
    Gallery,
    GalleryBackend,
    InstalledBackend,
    Job,
    KnownBackend,
    Node,
)


@admin.register(Gallery)
class GalleryAdmin(admin.ModelAdmin[Gallery]):
    list_display = (
        "name",
        "url",
        "enabled",
        "position",
        "entry_count",
        "last_synced_at",
        "last_error",
    )
    list_editable = ("enabled", "position")
    list_filter = ("enabled",)
    search_fields = ("name", "url")
    readonly_fields = (
        "last_synced_at",
        "last_attempt_at",
        "last_error",
        "problems",
        "source",
        "content_hash",
        "etag",
        "entry_count",
    )
    actions = ("sync_now",)

    @admin.action(description="Sync now")
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Gallery]) -> None:
        for gallery in queryset:
            summary = gallery.sync(force=True)
            level = messages.ERROR if gallery.last_error else messages.SUCCESS
            self.message_user(request, summary, level)


@admin.register(GalleryBackend)
class GalleryBackendAdmin(admin.ModelAdmin[GalleryBackend]):
    """Synced entries are read-only: edit the gallery source, then sync."""

    list_display = ("name", "gallery", "is_meta", "alias", "uri", "version")
    list_filter = ("gallery", "is_meta")
    search_fields = ("name", "alias", "description", "uri")
    list_select_related = ("gallery",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin[Node]):
    list_display = (
        "name",
        "is_local",
        "status",
        "capability",
        "vendor",
        "last_heartbeat",
    )
    list_filter = ("status", "is_local", "capability")
    search_fields = ("name",)
    readonly_fields = ("hardware", "probed_at", "last_heartbeat", "created_at")


@admin.register(InstalledBackend)
class InstalledBackendAdmin(admin.ModelAdmin[InstalledBackend]):
    list_display = (
        "name",
        "node",
        "version",
        "is_meta",
        "is_system",
        "upgrade_available",
        "installed_at",
    )
    list_filter = ("node", "is_meta", "is_system", "upgrade_available")
    search_fields = ("name", "alias", "uri")
    list_select_related = ("node",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Rows mirror the disk; they are written by installs and reconciliation only.
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin[Job]):
    list_display = ("id", "kind", "target", "node", "state", "progress", "created_at")
    list_filter = ("state", "kind", "node")
    search_fields = ("id", "target", "error")
    date_hierarchy = "created_at"
    list_select_related = ("node",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(KnownBackend)
class KnownBackendAdmin(admin.ModelAdmin[KnownBackend]):
    list_display = ("name", "modality", "auto_detect", "source")
    list_filter = ("modality", "source", "auto_detect")
    search_fields = ("name", "description")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = (
        "name",
        "prefix",
        "user",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    fields = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")

    def save_model(
        self, request: HttpRequest, obj: ApiToken, form: Any, change: bool
    ) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token, value = ApiToken.objects.create_token(obj.user, obj.name)
        obj.pk, obj.prefix, obj.token_hash = token.pk, token.prefix, token.token_hash
        self.message_user(
            request,
            f"Token created. Copy it now, it is not shown again: {value}",
            messages.WARNING,
        )
