from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from backends.core.redact import redact_uri
from backends.models import (
    ApiToken,
    AuditEvent,
    Gallery,
    GalleryBackend,
    InstalledBackend,
    Job,
    KnownBackend,
    Node,
)
from backends.services import audit


def _shown(field: str) -> Callable[[Any, Model], str]:
    @admin.display(description=field.replace("_", " "))
    def shown(self: Any, obj: Model) -> str:
        value = getattr(obj, field)
        if isinstance(value, list):
            return ", ".join(redact_uri(str(item)) for item in value)
        return redact_uri(value)

    return shown


class RedactingAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """An admin whose ``secret_fields`` (URIs that may hold credentials) are shown
    redacted, as ``shown_<field>``, in the list and on the detail page. With
    ``editable_secrets``, a user who may change the row edits the real value."""

    secret_fields: tuple[str, ...] = ()
    editable_secrets = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for field in cls.secret_fields:
            setattr(cls, f"shown_{field}", _shown(field))

    def get_readonly_fields(
        self, request: HttpRequest, obj: Model | None = None
    ) -> list[str]:
        shown = [f"shown_{field}" for field in self.secret_fields]
        return [*super().get_readonly_fields(request, obj), *shown]

    def get_fields(self, request: HttpRequest, obj: Model | None = None) -> list[Any]:
        fields = list(super().get_fields(request, obj))
        if self.editable_secrets and self.has_change_permission(request, obj):
            drop = {f"shown_{field}" for field in self.secret_fields}
            return [field for field in fields if field not in drop]
        shown = [
            f"shown_{field}" if field in self.secret_fields else field
            for field in fields
        ]
        return list(dict.fromkeys(shown))


@admin.register(Gallery)
class GalleryAdmin(RedactingAdmin):
    secret_fields = ("url", "mirrors")
    editable_secrets = True
    list_display = (
        "name",
        "shown_url",
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
        actor = audit.Actor.from_request(request)
        for gallery in queryset:
            summary = gallery.sync(force=True)
            level = messages.ERROR if gallery.last_error else messages.SUCCESS
            self.message_user(request, summary, level)
            outcome = "failed" if gallery.last_error else "done"
            audit.record(
                actor, "gallery_sync", gallery.name, outcome, reason=gallery.last_error
            )

    # Gallery changes decide what the worker downloads and runs: each is audited.
    def save_model(
        self, request: HttpRequest, obj: Gallery, form: Any, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        action = "gallery_change" if change else "gallery_add"
        fields = ", ".join(form.changed_data) if change else ""
        audit.record(
            audit.Actor.from_request(request),
            action,
            obj.name,
            "done",
            reason=f"changed: {fields}" if fields else "",
        )

    def delete_model(self, request: HttpRequest, obj: Gallery) -> None:
        name = obj.name
        super().delete_model(request, obj)
        audit.record(audit.Actor.from_request(request), "gallery_delete", name, "done")

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[Gallery]
    ) -> None:
        names = list(queryset.values_list("name", flat=True))
        super().delete_queryset(request, queryset)
        actor = audit.Actor.from_request(request)
        for name in names:
            audit.record(actor, "gallery_delete", name, "done")


@admin.register(GalleryBackend)
class GalleryBackendAdmin(RedactingAdmin):
    """Synced entries are read-only: edit the gallery source, then sync."""

    secret_fields = ("uri", "mirrors")
    list_display = ("name", "gallery", "is_meta", "alias", "shown_uri", "version")
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
class InstalledBackendAdmin(RedactingAdmin):
    secret_fields = ("uri", "gallery_url")
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
class JobAdmin(RedactingAdmin):
    secret_fields = ("target", "external_uri")
    list_display = (
        "id",
        "kind",
        "shown_target",
        "node",
        "state",
        "progress",
        "created_at",
    )
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
        "expires_at",
        "revoked_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    fields = (
        "name",
        "user",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )

    def save_model(
        self, request: HttpRequest, obj: ApiToken, form: Any, change: bool
    ) -> None:
        actor = audit.Actor.from_request(request)
        if change:
            super().save_model(request, obj, form, change)
            revoked = "revoked_at" in form.changed_data and obj.revoked_at is not None
            audit.record(
                actor,
                "token_revoke" if revoked else "token_change",
                _token_target(obj),
                "done",
                reason=f"changed: {', '.join(form.changed_data)}",
            )
            return
        token, value = ApiToken.objects.create_token(
            obj.user, obj.name, expires_at=obj.expires_at
        )
        obj.pk, obj.prefix, obj.token_hash = token.pk, token.prefix, token.token_hash
        audit.record(actor, "token_create", _token_target(token), "done")
        self.message_user(
            request,
            f"Token created. Copy it now, it is not shown again: {value}",
            messages.WARNING,
        )

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        target = _token_target(obj)
        super().delete_model(request, obj)
        audit.record(audit.Actor.from_request(request), "token_delete", target, "done")

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[ApiToken]
    ) -> None:
        targets = [_token_target(token) for token in queryset.select_related("user")]
        super().delete_queryset(request, queryset)
        actor = audit.Actor.from_request(request)
        for target in targets:
            audit.record(actor, "token_delete", target, "done")


def _token_target(token: ApiToken) -> str:
    # The name, prefix and owner identify a token; its value is never recorded.
    return f"{token.name} ({token.prefix}…) of {token.user.get_username()}"


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    """Read only: an audit log that its readers could edit would prove nothing."""

    list_display = (
        "created_at",
        "username",
        "token_name",
        "channel",
        "ip",
        "action",
        "target",
        "node_name",
        "outcome",
    )
    list_filter = ("channel", "outcome", "action")
    search_fields = ("username", "token_name", "target", "reason")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
