from __future__ import annotations

from django.urls import path

from backends.api import audit as api_audit
from backends.api import backends as api
from backends.api import nodes as api_nodes
from backends.web import audit as audit_pages
from backends.web import catalogue as catalogue_pages
from backends.web import external as external_pages
from backends.web import icons as icon_pages
from backends.web import installed as installed_pages
from backends.web import jobs as jobs_pages
from backends.web import kits as kit_pages
from backends.web import nodes as nodes_pages
from backends.web import pages as pages_pages

app_name = "backends"

urlpatterns = [
    # LocalAI-compatible JSON API: /backends/..., first because Django tries the
    # patterns in order, and the job status route, which scripts poll, first of all.
    path("backends/jobs/<str:job_id>", api.job_detail, name="api-job"),
    path("backends", api.installed_list, name="api-installed"),
    path("backends/", api.installed_list_slash, name="api-installed-slash"),
    path("backends/available", api.available_list, name="api-available"),
    path("backends/known", api.known_list, name="api-known"),
    path("backends/galleries", api.gallery_list, name="api-galleries"),
    path("backends/apply", api.apply, name="api-apply"),
    path("backends/delete/<str:name>", api.delete, name="api-delete"),
    path("backends/upgrade/<str:name>", api.upgrade, name="api-upgrade"),
    path("backends/upgrades", api.upgrade_list, name="api-upgrades"),
    path("backends/upgrades/check", api.upgrade_check, name="api-upgrades-check"),
    path("backends/jobs", api.job_list, name="api-jobs"),
    path("backends/jobs/<str:job_id>/cancel", api.job_cancel, name="api-job-cancel"),
    # Dashboard pages
    path("", catalogue_pages.catalogue, name="catalogue"),
    path(
        "catalogue/<slug:gallery>/<str:name>/",
        catalogue_pages.catalogue_entry,
        name="catalogue-entry",
    ),
    path(
        "catalogue/<slug:gallery>/<str:name>/install/",
        catalogue_pages.catalogue_install,
        name="catalogue-install",
    ),
    path(
        "catalogue/<slug:gallery>/<str:name>/install-anyway/",
        catalogue_pages.catalogue_force,
        name="catalogue-force",
    ),
    path("icons/<str:key>", icon_pages.icon, name="icon"),
    path("installed/", installed_pages.installed_list, name="installed"),
    path(
        "installed/from-uri/",
        external_pages.install_from_uri,
        name="install-from-uri",
    ),
    path("installed/kits/", kit_pages.kit_upload, name="kit-upload"),
    path("installed/kits/<str:kit>/", kit_pages.kit_preview, name="kit-preview"),
    path(
        "installed/kits/<str:kit>/discard/",
        kit_pages.kit_discard,
        name="kit-discard",
    ),
    path(
        "installed/upgrade-all/",
        installed_pages.installed_upgrade_all,
        name="installed-upgrade-all",
    ),
    path(
        "installed/check-upgrades/",
        installed_pages.installed_check_upgrades,
        name="installed-check-upgrades",
    ),
    path(
        "installed/<str:name>/versions/",
        installed_pages.installed_versions,
        name="installed-versions",
    ),
    path(
        "installed/<str:name>/rollback/<str:version>/",
        installed_pages.installed_rollback,
        name="installed-rollback",
    ),
    path(
        "installed/<str:name>/pin/", installed_pages.installed_pin, name="installed-pin"
    ),
    path(
        "installed/<str:name>/unpin/",
        installed_pages.installed_unpin,
        name="installed-unpin",
    ),
    path(
        "installed/<str:name>/upgrade/",
        installed_pages.installed_upgrade,
        name="installed-upgrade",
    ),
    path(
        "installed/<str:name>/reinstall/",
        installed_pages.installed_reinstall,
        name="installed-reinstall",
    ),
    path(
        "installed/<str:name>/delete/",
        installed_pages.installed_delete,
        name="installed-delete",
    ),
    path("known/", pages_pages.known_list, name="known"),
    path("jobs/", jobs_pages.job_list, name="jobs"),
    path("jobs/tray/", jobs_pages.job_tray, name="job-tray"),
    path("jobs/<uuid:pk>/", jobs_pages.job_detail, name="job-detail"),
    path("jobs/<uuid:pk>/dismiss/", jobs_pages.job_dismiss, name="job-dismiss"),
    path("jobs/<uuid:pk>/cancel/", jobs_pages.job_cancel, name="job-cancel"),
    path("jobs/<uuid:pk>/retry/", jobs_pages.job_retry, name="job-retry"),
    path("galleries/", pages_pages.gallery_list, name="galleries"),
    path("galleries/<int:pk>/sync/", pages_pages.gallery_sync, name="gallery-sync"),
    path("hardware/", pages_pages.hardware, name="hardware"),
    path("hardware/probe/", pages_pages.hardware_probe, name="hardware-probe"),
    path("audit/", audit_pages.audit_list, name="audit"),
    path("nodes/", nodes_pages.node_list, name="nodes"),
    path("nodes/<int:pk>/", nodes_pages.node_detail, name="node-detail"),
    path("nodes/<int:pk>/install/", nodes_pages.node_install, name="node-install"),
    path(
        "nodes/<int:pk>/suggestions/",
        nodes_pages.node_suggestions,
        name="node-suggestions",
    ),
    path("nodes/<int:pk>/drain/", nodes_pages.node_drain, name="node-drain"),
    path("nodes/<int:pk>/resume/", nodes_pages.node_resume, name="node-resume"),
    # Our own JSON API: /api/...
    path("api/openapi.json", api.openapi, name="api-openapi"),
    path("api/audit", api_audit.audit_list, name="api-audit"),
    path(
        "api/backends/install-external",
        api.install_external,
        name="api-install-external",
    ),
    path("api/backends/plan", api.plan, name="api-plan"),
    path(
        "api/backends/<str:name>/versions",
        api.backend_versions,
        name="api-backend-versions",
    ),
    path(
        "api/backends/<str:name>/rollback",
        api.backend_rollback,
        name="api-backend-rollback",
    ),
    path("api/backends/<str:name>/pin", api.backend_pin, name="api-backend-pin"),
    path("api/backends/<str:name>/unpin", api.backend_unpin, name="api-backend-unpin"),
    # Distributed mode: agents (registration token) and the admin's node routes
    path("api/node/register", api_nodes.register, name="agent-register"),
    path(
        "api/node/<int:node_id>/heartbeat", api_nodes.heartbeat, name="agent-heartbeat"
    ),
    path("api/nodes", api_nodes.node_list, name="api-nodes"),
    path("api/nodes/<str:node_id>", api_nodes.node_detail, name="api-node"),
    path(
        "api/nodes/<str:node_id>/backends",
        api_nodes.node_backends,
        name="api-node-backends",
    ),
    path(
        "api/nodes/<str:node_id>/backends/install",
        api_nodes.node_install,
        name="api-node-install",
    ),
    path(
        "api/nodes/<str:node_id>/backends/upgrade",
        api_nodes.node_upgrade,
        name="api-node-upgrade",
    ),
    path(
        "api/nodes/<str:node_id>/backends/delete",
        api_nodes.node_delete,
        name="api-node-delete",
    ),
    path("api/nodes/<str:node_id>/drain", api_nodes.node_drain, name="api-node-drain"),
    path(
        "api/nodes/<str:node_id>/resume", api_nodes.node_resume, name="api-node-resume"
    ),
]
