"""The Nodes page: every host that installs backends, its hardware, backends and jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.http import require_POST

from backends import roles
from backends.core import installed
from backends.core.installed import DiskBackend
from backends.models import InstalledBackend, Job, Node, NodeRefused
from backends.services import catalogue as read
from backends.services import disk as disk_space
from backends.services import jobs, usage
from backends.services import nodes as node_service
from backends.web.base import (
    HtmxHttpRequest,
    render_page,
    requires,
    wants_fragment,
)
from backends.web.forms import NodeInstallForm, NodeSuggestionsForm


@dataclass(frozen=True)
class NodeBackend:
    """A backend on a node's disk, as the Nodes page lists it."""

    name: str
    alias: str = ""
    version: str = ""
    meta_backend_for: str = ""
    is_meta: bool = False
    is_system: bool = False
    # The models of LocalAI on that node that use this folder (a delete is refused).
    used_by: tuple[str, ...] = ()


@dataclass
class NodeCard:
    """A node with what the Nodes page shows about it."""

    node: Node
    backends: list[NodeBackend]
    jobs: list[Job]
    form: NodeInstallForm = field(default_factory=NodeInstallForm)
    space: disk_space.Space | None = None

    @property
    def takes_work(self) -> bool:
        return self.node.accepts_work

    @property
    def choices_id(self) -> str:
        return _choices_id(self.node.capability)


def _choices_id(capability: str) -> str:
    return f"backends-for-{slugify(capability or 'default')}"


def _local_backends(folders: Mapping[str, DiskBackend]) -> list[NodeBackend]:
    # The local folder is readable here, and the disk is the truth: read it, like the
    # Installed page, rather than the table that is reconciled after each job.
    rows = []
    for name, disk in sorted(folders.items()):
        meta = disk.metadata or installed.Metadata()
        rows.append(
            NodeBackend(
                name,
                meta.alias,
                meta.version,
                meta.meta_backend_for,
                disk.is_meta,
                disk.is_system,
            )
        )
    return rows


def _node_cards(shown: Iterable[Node], *, with_space: bool = True) -> list[NodeCard]:
    """The cards of ``shown``; ``with_space=False`` for the polled state, which draws
    no disk meter (the local one walks every installed file)."""
    shown = list(shown)
    # This host's folders, read once for its backends and its disk meter.
    local = read.installed_folders() if any(n.is_local for n in shown) else {}
    on_agents: dict[int, list[NodeBackend]] = {}
    for row in InstalledBackend.objects.filter(node__in=shown, node__is_local=False):
        on_agents.setdefault(row.node_id, []).append(
            NodeBackend(
                row.name,
                row.alias,
                row.version,
                row.meta_backend_for,
                row.is_meta,
                row.is_system,
            )
        )
    active: dict[int, list[Job]] = {}
    for job in Job.objects.active().filter(node__in=shown).order_by("created_at"):
        if job.node_id is not None:
            active.setdefault(job.node_id, []).append(job)
    return [
        NodeCard(
            node,
            _with_users(
                node,
                _local_backends(local) if node.is_local else on_agents.get(node.pk, []),
            ),
            active.get(node.pk, []),
            space=disk_space.node_space(node, local) if with_space else None,
        )
        for node in shown
    ]


def _with_users(node: Node, backends: list[NodeBackend]) -> list[NodeBackend]:
    users = usage.node_users_by_folder(node)
    if not users:
        return backends
    return [
        replace(backend, used_by=tuple(users.get(backend.name, ())))
        for backend in backends
    ]


def _choices(cards: Iterable[NodeCard]) -> dict[str, list[read.Entry]]:
    """Per capability, the install forms' first suggestions; typing asks for more
    (node_suggestions): a large gallery has tens of thousands that run."""
    capabilities = {card.node.capability or "default" for card in cards}
    return {
        _choices_id(capability): read.suggestions(capability)
        for capability in sorted(capabilities)
    }


def _node_fragment(
    request: HtmxHttpRequest, node: Node, form: NodeInstallForm | None = None
) -> HttpResponse:
    """A node's card, after a change made from it (its install form, drain, resume)."""
    card = _node_cards([node])[0]
    if form is not None:
        card.form = form
    context = {"card": card, "distributed": settings.DISTRIBUTED}
    return render_page(
        request,
        "backends/node_detail.html",
        context,
        fragment="backends/partials/_node.html",
    )


def _back_to_node(request: HtmxHttpRequest, node: Node) -> HttpResponse:
    if wants_fragment(request):
        return _node_fragment(request, node)
    return redirect(f"{reverse('backends:nodes')}#node-{node.pk}")


@requires(roles.VIEW)
def node_list(request: HtmxHttpRequest) -> HttpResponse:
    Node.objects.local().current_capability()  # probes a local node never probed
    cards = _node_cards(Node.objects.all())
    may_install = request.user.has_perm(roles.INSTALL)
    context = {
        "cards": cards,
        "distributed": settings.DISTRIBUTED,
        "offline_after": settings.NODE_OFFLINE_SECONDS,
        "choices": _choices(c for c in cards if c.takes_work) if may_install else {},
    }
    return render_page(request, "backends/nodes.html", context)


@requires(roles.VIEW)
def node_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """A node's page; for htmx, the part of it that changes by itself (its state)."""
    node = get_object_or_404(Node, pk=pk)
    # The state polls every few seconds: keep it light.
    card = _node_cards([node], with_space=not wants_fragment(request))[0]
    context: dict[str, Any] = {"card": card, "distributed": settings.DISTRIBUTED}
    if not wants_fragment(request):
        context["recent"] = Job.objects.filter(node=node).select_related("node")[:10]
        if request.user.has_perm(roles.INSTALL) and card.takes_work:
            context["choices"] = _choices([card])
    return render_page(
        request,
        "backends/node_detail.html",
        context,
        fragment="backends/partials/_node_state.html",
    )


@requires(roles.INSTALL)
def node_suggestions(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The options of a node's install suggestions for what has been typed so far."""
    node = get_object_or_404(Node, pk=pk)
    form = NodeSuggestionsForm(request.GET)
    typed = form.cleaned_data["backend"] if form.is_valid() else ""
    entries = read.suggestions(node.capability or "default", typed)
    return render(
        request, "backends/partials/_node_suggestions.html", {"entries": entries}
    )


@require_POST
@requires(roles.INSTALL)
def node_install(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    node = get_object_or_404(Node, pk=pk)
    form = NodeInstallForm(request.POST)
    if form.is_valid():
        entry = form.cleaned_data["backend"]
        try:
            jobs.install(
                entry.id_in_gallery,
                requested_by=request.user.get_username(),
                node=node,
            )
        except jobs.Refused as exc:
            form.add_error("backend", f"{exc}.")
        else:
            messages.success(
                request, f"Install of {entry.name} on {node.name} started."
            )
            form = NodeInstallForm()
    if not wants_fragment(request):
        for error in form.errors.get("backend", []):
            messages.error(request, f"Not started: {error}")
        return redirect(f"{reverse('backends:nodes')}#node-{node.pk}")
    return _node_fragment(request, node, form)


def _change_status(
    request: HtmxHttpRequest, pk: int, change: Callable[[Node], None], done: str
) -> HttpResponse:
    node = get_object_or_404(Node, pk=pk)
    try:
        change(node)
    except NodeRefused as exc:
        messages.error(request, f"{exc}.")
    else:
        messages.success(request, f"{node.name} {done}.")
    return _back_to_node(request, node)


@require_POST
@requires(roles.MANAGE_NODES)
def node_drain(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _change_status(
        request,
        pk,
        node_service.drain,
        "is draining: its running jobs finish, it takes no new work",
    )


@require_POST
@requires(roles.MANAGE_NODES)
def node_resume(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    return _change_status(request, pk, node_service.resume, "takes new work again")
