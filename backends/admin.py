from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from backends import roles, tasks
from backends.core.gallery import check_source
from backends.core.oci.verify import PolicyError, VerificationPolicy
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
    NodeRefused,
)
from backends.services import audit, jobs, nodes, pipeline


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


class DiskIsTheTruth:
    """Rows that mirror a disk or a worker's record, and the audit log: viewed here,
    never edited or deleted as rows. Deleting the row would say "deleted" and leave the folder (or lose the only
    record of a job); the actions go through the same services as the dashboard."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def _job_link(job: Job) -> str:
    return format_html(
        '<a href="{}">job {}</a>', reverse("backends:job-detail", args=[job.pk]), job.pk
    )


def _checked_source(url: str, field: str) -> str:
    try:
        check_source(url, pipeline.source_policy())
    except ValueError as exc:
        raise forms.ValidationError(f"{field}: {redact_uri(str(exc))}") from None
    return url


class GalleryForm(forms.ModelForm[Gallery]):
    """A source is checked when saved, not when the next sync fails on it."""

    class Meta:
        model = Gallery
        fields = "__all__"

    def clean_url(self) -> str:
        return _checked_source(self.cleaned_data["url"], "url")

    def clean_mirrors(self) -> list[str]:
        mirrors = self.cleaned_data["mirrors"] or []
        if not isinstance(mirrors, list) or not all(
            isinstance(mirror, str) for mirror in mirrors
        ):
            raise forms.ValidationError(
                'mirrors must be a JSON list of sources, e.g. ["https://example.org/index.yaml"]'
            )
        return [
            _checked_source(mirror, f"mirror {number}")
            for number, mirror in enumerate(mirrors, 1)
        ]

    def clean_verification(self) -> dict[str, Any]:
        """Parsed as a job would: a policy no install could enforce is refused now."""
        block = self.cleaned_data["verification"] or {}
        try:
            policy = VerificationPolicy.from_json(block)
        except PolicyError as exc:
            raise forms.ValidationError(str(exc)) from None
        # Stored normalised: the PEM trimmed, not_before in UTC.
        return policy.to_json() if policy else {}


@admin.register(Gallery)
class GalleryAdmin(RedactingAdmin):
    form = GalleryForm
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

    def save_model(
        self, request: HttpRequest, obj: Gallery, form: Any, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        # Gallery changes decide what the worker downloads and runs: each is audited.
        fields = ", ".join(form.changed_data) if change else ""
        audit.record(
            audit.Actor.from_request(request),
            "gallery_change" if change else "gallery_add",
            obj.name,
            "done",
            reason=f"changed: {fields}" if fields else "",
        )
        source_changed = {"url", "mirrors", "enabled"} & set(form.changed_data)
        if obj.enabled and (not change or source_changed):
            # Queued once the row is committed, so the worker reads the new source.
            pk = obj.pk
            transaction.on_commit(lambda: tasks.sync_gallery(pk, force=True))
            self.message_user(
                request,
                format_html(
                    'Sync of {} queued: the <a href="{}">Galleries page</a> shows '
                    "its result.",
                    obj.name,
                    reverse("backends:galleries"),
                ),
                messages.INFO,
            )

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
class NodeAdmin(DiskIsTheTruth, admin.ModelAdmin[Node]):
    """Nodes register themselves; draining and resuming go through the same audited
    service as the Nodes page and the API (``services.nodes``)."""

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
    actions = ("drain", "resume")

    def has_manage_nodes_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.MANAGE_NODES)

    @admin.action(description="Drain selected nodes", permissions=["manage_nodes"])
    def drain(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self._change_status(request, queryset, nodes.drain, "is draining")

    @admin.action(description="Resume selected nodes", permissions=["manage_nodes"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self._change_status(request, queryset, nodes.resume, "takes new work again")

    def _change_status(
        self,
        request: HttpRequest,
        queryset: QuerySet[Node],
        change: Callable[[Node], None],
        done: str,
    ) -> None:
        # The service records each change, refused or done, as the request's actor
        # (the admin channel), like every other drain and resume.
        for node in queryset:
            try:
                change(node)
            except NodeRefused as exc:
                self.message_user(request, f"{node.name}: {exc}.", messages.ERROR)
            else:
                self.message_user(request, f"{node.name} {done}.", messages.SUCCESS)


@admin.register(InstalledBackend)
class InstalledBackendAdmin(DiskIsTheTruth, RedactingAdmin):
    """What is on each node's disk, reconciled from it. Deleting starts a delete job,
    as the Installed page does; the row goes when the folder has gone."""

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
    actions = ("delete_from_disk",)

    def has_delete_backend_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.DELETE)

    @admin.action(
        description="Delete selected backends from disk (starts a delete job each)",
        permissions=["delete_backend"],
    )
    def delete_from_disk(
        self, request: HttpRequest, queryset: QuerySet[InstalledBackend]
    ) -> None:
        for row in queryset.select_related("node"):
            try:
                job = jobs.delete(
                    row.name,
                    requested_by=request.user.get_username(),
                    node=None if row.node.is_local else row.node,
                )
            except jobs.Refused as exc:
                self.message_user(
                    request,
                    f"{row.name} on {row.node.name}: not started: {exc}",
                    messages.ERROR,
                )
            else:
                self.message_user(
                    request,
                    format_html(
                        "Delete of {} on {} started ({}); the row goes once the folder "
                        "has gone.",
                        row.name,
                        row.node.name,
                        _job_link(job),
                    ),
                    messages.SUCCESS,
                )


@admin.register(Job)
class JobAdmin(DiskIsTheTruth, RedactingAdmin):
    """Job history is kept: jobs are cancelled or retried, never edited or deleted."""

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
    actions = ("cancel",)

    def has_cancel_job_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(roles.CANCEL_JOB)

    @admin.action(description="Cancel selected jobs", permissions=["cancel_job"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            if jobs.cancel(job):
                self.message_user(
                    request, f"Cancel of job {job.pk} asked.", messages.SUCCESS
                )
            else:
                self.message_user(
                    request,
                    f"Job {job.pk} is {job.state}: too late to cancel.",
                    messages.ERROR,
                )


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
                obj.audit_label,
                "done",
                reason=f"changed: {', '.join(form.changed_data)}",
            )
            return
        token, value = ApiToken.objects.create_token(
            obj.user, obj.name, expires_at=obj.expires_at
        )
        obj.pk, obj.prefix, obj.token_hash = token.pk, token.prefix, token.token_hash
        audit.record(actor, "token_create", token.audit_label, "done")
        self.message_user(
            request,
            f"Token created. Copy it now, it is not shown again: {value}",
            messages.WARNING,
        )

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        target = obj.audit_label
        super().delete_model(request, obj)
        audit.record(audit.Actor.from_request(request), "token_delete", target, "done")

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[ApiToken]
    ) -> None:
        targets = [token.audit_label for token in queryset.select_related("user")]
        super().delete_queryset(request, queryset)
        actor = audit.Actor.from_request(request)
        for target in targets:
            audit.record(actor, "token_delete", target, "done")


@admin.register(AuditEvent)
class AuditEventAdmin(DiskIsTheTruth, admin.ModelAdmin[AuditEvent]):
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
