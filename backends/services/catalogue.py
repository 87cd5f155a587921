"""The read side: what the galleries offer, what a node can run, what is on its disk.

The dashboard, the API and the job runner ask these questions here, so each answer
(which build runs on which node, which gallery wins a name, what is installed) is
computed by one function.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.paginator import Page, Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import (
    Case,
    Exists,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast
from django.utils import timezone

from backends.core import icons, installed, resolve
from backends.core.install import Installer, pointer
from backends.core.redact import redact_uri
from backends.models import (
    Gallery,
    GalleryBackend,
    InstalledBackend,
    Job,
    KnownBackend,
    Node,
    RunsHere,
    RunsHereSet,
)

# -- the disk --------------------------------------------------------------------------


def local_disk(
    capability: str | None = None,
    folders: Mapping[str, installed.DiskBackend] | None = None,
) -> dict[str, installed.DiskBackend]:
    """This host's installed backends as LocalAI registers them (aliases included);
    from ``folders`` (``installed_folders()``) when the caller has read them already."""
    if capability is None:
        capability = Node.objects.local().current_capability()
    if folders is not None:
        return installed.with_aliases(folders, capability)
    return installed.scan(
        settings.LOCALAI_BACKENDS_PATH,
        settings.LOCALAI_BACKENDS_SYSTEM_PATH,
        capability,
    )


def installed_folders() -> dict[str, installed.DiskBackend]:
    """Every installed backend of this host once, by its own name (aliases left out)."""
    return installed.folders(
        Path(settings.LOCALAI_BACKENDS_PATH), settings.LOCALAI_BACKENDS_SYSTEM_PATH
    )


# -- gallery entries -------------------------------------------------------------------


def builds_of(meta: GalleryBackend) -> list[GalleryBackend]:
    """The entries named in a meta's capabilities map, galleries in order, the first
    gallery winning each name: all resolve.pick_build reads to find the meta's build,
    so an install reads a handful of rows whatever the size of the galleries."""
    names = {b.lower() for b in meta.capabilities.values() if isinstance(b, str)}
    entries = GalleryBackend.objects.enabled().filter(name_key__in=names)
    return resolve.first_by_name(entries.select_related("gallery"))


@dataclass(frozen=True, slots=True)
class Entry:
    """The fields of a gallery entry the catalogue shows and resolves with.

    Read with ``values_list``: building 1,028 model instances, and decoding JSON the
    page never uses (every build inherits its meta's capabilities map through YAML
    merge keys), was most of the page's time. Fits ``resolve.Candidate``.
    """

    gallery: str
    name: str
    alias: str
    description: str
    uri: str
    tags: list[str]
    is_meta: bool
    capabilities: dict[str, str]
    icon: str = ""

    @property
    def id_in_gallery(self) -> str:
        return f"{self.gallery}@{self.name}"

    @property
    def icon_key(self) -> str:
        """Where the dashboard asks for the cached icon; "" without one."""
        return icons.icon_key(self.icon) if self.icon else ""


def light_entries(entries: QuerySet[GalleryBackend]) -> list[Entry]:
    """Light entries; only metas carry their capabilities map (nothing reads a build's)."""
    maps = dict(entries.filter(is_meta=True).values_list("pk", "capabilities"))
    rows = entries.values_list(
        "pk",
        "gallery__name",
        "name",
        "alias",
        "description",
        "uri",
        "tags",
        "is_meta",
        "icon",
    )
    return [
        Entry(
            gallery,
            name,
            alias,
            description,
            uri,
            tags,
            is_meta,
            maps.get(pk, {}),
            icon,
        )
        for pk, gallery, name, alias, description, uri, tags, is_meta, icon in rows
    ]


# -- the catalogue in the database ------------------------------------------------------
#
# A gallery can hold 200,000 entries: the catalogue filters, searches, sorts and pages
# in SQL, and resolves only the rows it shows. "Runs here" is not a column (it depends
# on the node's capability and on the other entries a meta points at): it is computed
# with resolve.verdict, the one rule, once per capability and state of the enabled
# galleries, and kept as a set of entry ids (RunsHere) the queries join.

LIGHT_FIELDS = (
    "pk",
    "gallery__name",
    "name",
    "alias",
    "description",
    "uri",
    "tags",
    "is_meta",
    "icon",
    "capabilities",
)


@dataclass(frozen=True, slots=True)
class _Resolvable:
    """What resolve.verdict reads of an entry, its id, its place in the name order
    (lower-cased name, gallery position and name, position in the gallery), and its
    place in gallery order when it wins its name (None when an earlier entry does)."""

    pk: int
    name: str
    uri: str
    is_meta: bool
    capabilities: Mapping[str, str]
    order: tuple[str, int, str, int]
    gallery_rank: int | None

    @property
    def development(self) -> bool:
        return self.order[0].endswith(DEVELOPMENT_SUFFIX)


def enabled_galleries() -> list[tuple[Any, ...]]:
    """(pk, name, position, entries_replaced_at, entry_count) of the enabled
    galleries."""
    rows = (
        Gallery.objects.filter(enabled=True)
        .order_by("position", "name")
        .values_list("pk", "name", "position", "entries_replaced_at", "entry_count")
    )
    return list(rows)


def galleries_fingerprint(galleries: list[tuple[Any, ...]] | None = None) -> str:
    """Changes whenever the enabled galleries or their entries may have: a sync that
    replaces the entries moves ``entries_replaced_at`` (an unchanged source does not),
    an edit moves ``position`` or ``enabled``."""
    if galleries is None:
        galleries = enabled_galleries()
    return hashlib.sha256(repr(galleries).encode()).hexdigest()


def runs_here_set(
    capability: str, galleries: list[tuple[Any, ...]] | None = None
) -> RunsHereSet:
    """The up-to-date set of entries that run on ``capability``; computed when missing.
    ``galleries``: ``enabled_galleries()`` when the caller has it already."""
    if galleries is None:
        galleries = enabled_galleries()
    fingerprint = galleries_fingerprint(galleries)
    found = RunsHereSet.objects.filter(
        capability=capability, fingerprint=fingerprint
    ).first()
    return found or _compute_runs_here(capability, fingerprint, galleries)


def _compute_runs_here(
    capability: str, fingerprint: str, galleries: list[tuple[Any, ...]]
) -> RunsHereSet:
    gallery_order = {pk: (position, name) for pk, name, position, *_ in galleries}
    entries = GalleryBackend.objects.enabled()
    maps = dict(entries.filter(is_meta=True).values_list("pk", "capabilities"))
    light: list[_Resolvable] = []
    tags: set[str] = set()
    names: set[str] = set()
    # In gallery order (the model's ordering), so the first entry of a name is the
    # one resolve.first_by_name keeps.
    rows = entries.values_list(
        "pk", "name", "uri", "is_meta", "tag_text", "name_key", "gallery", "position"
    )
    for gallery_rank, row in enumerate(rows.iterator(chunk_size=5000)):
        pk, name, uri, is_meta, tag_text, key, gallery, position = row
        order = (key, *gallery_order[gallery], position)
        first = key not in names
        names.add(key)
        light.append(
            _Resolvable(
                pk,
                name,
                uri,
                is_meta,
                maps.get(pk, {}),
                order,
                gallery_rank if first else None,
            )
        )
        tags.update(tag_text.split("\n"))
    del names
    counts = {
        "total": len(light),
        "release": sum(not e.development for e in light),
    }
    concretes = resolve.concretes_by_name(light)
    verdicts = ((e, resolve.verdict(e, concretes, capability)) for e in light)
    runs = [(e, v.resolution) for e, v in verdicts if v.runs_here]
    del light, concretes
    runs.sort(key=lambda run: run[0].order)
    counts["runnable"] = len(runs)
    counts["runnable_release"] = sum(not e.development for e, _ in runs)
    tags.discard("")
    with transaction.atomic():
        RunsHere.objects.filter(capability=capability).delete()
        RunsHere.objects.insert_rows(
            (
                capability,
                e.pk,
                rank,
                e.gallery_rank,
                resolution.concrete if resolution else "",
                resolution.explanation if resolution else "",
            )
            for rank, (e, resolution) in enumerate(runs)
        )
        try:
            with transaction.atomic():
                found, _ = RunsHereSet.objects.update_or_create(
                    capability=capability,
                    defaults={"fingerprint": fingerprint, "tags": sorted(tags)}
                    | counts,
                )
        except IntegrityError:  # the other request created it first
            found = RunsHereSet.objects.get(capability=capability)
    if connection.vendor == "postgresql":
        # The set follows a sync or a gallery change: without fresh statistics the
        # planner takes 30,000 runs-here rows (or a just-copied entries table) for a
        # handful and joins them row by row.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE backends_runshere, backends_gallerybackend")
    return found


@dataclass(frozen=True)
class CatalogueQuery:
    """The catalogue's filters, as the page's form gives them."""

    capability: str
    search: str = ""
    gallery: str = ""
    tag: str = ""
    development: bool = False
    other_hardware: bool = False
    sort: str = "name"
    installed: Collection[str] = ()


def catalogue_entries(query: CatalogueQuery) -> QuerySet[GalleryBackend]:
    """The entries the catalogue lists, filtered and ordered in the database."""
    entries = GalleryBackend.objects.enabled()
    for word in query.search.lower().split():
        # Every word a substring of name, alias, description or a tag.
        entries = entries.filter(search_text__contains=word)
    if query.gallery:
        entries = entries.filter(gallery__name=query.gallery)
    if query.tag:
        entries = entries.filter(tag_text__contains=f"\n{query.tag.lower()}\n")
    if not query.development:
        # Nightly builds (and metas over them), hidden unless asked for.
        entries = entries.exclude(name_key__endswith=DEVELOPMENT_SUFFIX)
    gallery_order = ("gallery__position", "gallery__name", "position")
    name_order: tuple[str, ...] = ("name_key", *gallery_order)
    if not query.other_hardware:
        # The default view: what this node can use, by the same rule as a row's
        # "Not for this node" (runs_here_set), so the two cannot disagree. Its rows
        # carry their rank in the name order: the first page is read from an index.
        entries = entries.filter(runs_on__capability=query.capability)
        name_order = ("runs_on__rank",)
    order: list[Any] = []
    if query.search:
        order.append(relevance(query.search))
    if query.sort == "-name":
        order += ["-name_key", *gallery_order]
    elif query.sort == "installed":
        order.append(
            Case(
                When(name__in=list(query.installed), then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            )
        )
        order += name_order
    elif query.sort == "gallery":
        order += gallery_order
    else:
        order += name_order
    return entries.order_by(*order)


def known_count(query: CatalogueQuery, runnable: RunsHereSet) -> int | None:
    """How many entries ``query`` lists, when the runs-here set counted it (no search,
    gallery or tag filter); None otherwise."""
    if query.search.split() or query.gallery or query.tag:
        return None
    if query.other_hardware:
        return runnable.total if query.development else runnable.release
    return runnable.runnable if query.development else runnable.runnable_release


class _CountedPaginator(Paginator[Any]):
    """A paginator told its count instead of asking the database for it."""

    def __init__(self, object_list: Any, per_page: int, count: int) -> None:
        super().__init__(object_list, per_page)
        self._count = count

    @cached_property
    def count(self) -> int:
        return self._count


def catalogue_page(
    query: CatalogueQuery, runnable: RunsHereSet, number: int, size: int
) -> Page[Entry]:
    """Page ``number`` of the catalogue (the last one past the end) as light entries,
    with a true total and one pass over the matches.

    Without a search, gallery or tag filter the runs-here set has the total. With one,
    counting the matches and then sorting them for the page would filter twice (twice
    the LIKE over every candidate): instead the ids of every match are read in order,
    their number is the total, and the page's rows are read by id.
    """
    listed = catalogue_entries(query)
    count = known_count(query, runnable)
    if count is not None:
        fields = listed.values_list(*LIGHT_FIELDS)
        page = _CountedPaginator(fields, size, count).get_page(number)
        return Page(entries_of(page.object_list), page.number, page.paginator)
    ids = list(listed.values_list("pk", flat=True))
    page = _CountedPaginator(ids, size, len(ids)).get_page(number)
    rows = GalleryBackend.objects.filter(pk__in=list(page.object_list)).order_by()
    by_id = {row[0]: row for row in rows.values_list(*LIGHT_FIELDS)}
    shown = entries_of(by_id[pk] for pk in page.object_list)
    return Page(shown, page.number, page.paginator)


DEVELOPMENT_SUFFIX = "-development"


def relevance(search: str) -> Case:
    """How well an entry answers a search, lower first: the entry named exactly what was
    typed, then the builds aliased to it, then names starting with it, then the rest (a
    word in a description or tag).

    Without it "whisper" listed every build mentioning whisper, alphabetically, before the
    ``whisper`` meta itself.
    """
    search = search.lower()
    return Case(
        When(name_key=search, then=Value(0)),
        When(alias_key=search, then=Value(1)),
        When(
            Q(name_key__startswith=search)
            | (~Q(alias_key="") & Q(alias_key__startswith=search)),
            then=Value(2),
        ),
        default=Value(3),
        output_field=IntegerField(),
    )


def entries_of(rows: Iterable[Sequence[Any]]) -> list[Entry]:
    """Entries from ``values_list(*LIGHT_FIELDS)`` rows."""
    return [
        Entry(
            gallery,
            name,
            alias,
            desc,
            uri,
            tags,
            is_meta,
            caps if is_meta else {},
            icon,
        )
        for _, gallery, name, alias, desc, uri, tags, is_meta, icon, caps in rows
    ]


@dataclass(frozen=True, slots=True)
class Build:
    """A concrete build as resolve.verdict reads it: its name and image."""

    name: str
    uri: str
    is_meta: bool = False
    capabilities: Mapping[str, str] = field(default_factory=dict)


def builds_for(entries: Iterable[Entry]) -> dict[str, Build]:
    """The concrete builds the metas among ``entries`` can resolve to, by lower-cased
    name: what resolve.verdict needs to describe these entries, and no more (a page of
    50 metas points at some 300 builds: their descriptions and tags are not read)."""
    names = {
        build.lower()
        for entry in entries
        if entry.is_meta
        for build in entry.capabilities.values()
        if isinstance(build, str)
    }
    if not names:
        return {}
    builds = GalleryBackend.objects.enabled().filter(is_meta=False, name_key__in=names)
    return resolve.concretes_by_name(
        Build(name, uri) for name, uri in builds.values_list("name", "uri")
    )


@dataclass
class EntryRow:
    """A catalogue entry as this node sees it."""

    entry: Entry
    installed: bool
    resolution: resolve.Resolution | None = None
    problem: str = ""  # why it cannot run here; "" when it can
    job: Job | None = None
    # Distributed mode: the agents that have it installed.
    on_nodes: list[str] = field(default_factory=list)

    @property
    def runs_here(self) -> bool:
        return not self.problem

    @property
    def can_install(self) -> bool:
        # A meta with no build here has nothing to install; a concrete build can be
        # installed anyway (the folder is shared with other hosts in some setups).
        return not (self.entry.is_meta and self.resolution is None)


def job_names(job: Job) -> list[str]:
    """The lower-cased names a job shows under: the folder it locks (its dedup key) and
    the name it was asked for (a meta's upgrade locks its build's folder, and shows on
    both rows)."""
    names = [job.dedup_key, job.target.rpartition("@")[2].lower()]
    if job.external_name:
        names.append(job.external_name.lower())
    return [name for name in names if name]


def active_jobs(jobs: Iterable[Job] | None = None) -> dict[str, Job]:
    """Active jobs by the lower-cased backend names they work on (``job_names``)."""
    if jobs is None:
        jobs = Job.objects.active().order_by("created_at")
    found: dict[str, Job] = {}
    for job in jobs:
        for key in job_names(job):
            found.setdefault(key, job)
    return found


# How long a failed job stays on its row and in the notification area: long enough
# to be seen by whoever started it, short enough not to nag about last week.
FAILURES_SHOWN_FOR = timedelta(hours=1)
TRAY_SIZE = 50


def recent_jobs(jobs: QuerySet[Job] | None = None) -> QuerySet[Job]:
    """Jobs that are active or ended within ``FAILURES_SHOWN_FOR``, newest first: what
    rows and the notification area show (one query; fanned-out parts left out)."""
    if jobs is None:
        jobs = Job.objects.filter(parent=None)
    since = timezone.now() - FAILURES_SHOWN_FOR
    return jobs.filter(
        Q(state__in=Job.ACTIVE_STATES) | Q(finished_at__gte=since)
    ).order_by("-created_at")


def row_jobs(jobs: Iterable[Job], dismissed: Collection[str] = ()) -> dict[str, Job]:
    """The job each backend's row shows, by lower-cased name: its active job, else its
    last job when that failed (until retried, followed by another job, or dismissed).

    ``jobs`` come newest first (``recent_jobs``): the first job seen for a name is the
    latest, and a failure followed by a success is no longer news.
    """
    latest: dict[str, Job] = {}
    active: dict[str, Job] = {}
    for job in jobs:
        for key in job_names(job):
            latest.setdefault(key, job)
            if job.is_active:
                active.setdefault(key, job)
    shown = {
        key: job
        for key, job in latest.items()
        if job.state == Job.State.FAILED and str(job.pk) not in dismissed
    }
    return shown | active


@dataclass
class Tray:
    """The notification area every page shows: active jobs and recent failures."""

    active: list[Job]
    failed: list[Job]

    @property
    def watching(self) -> str:
        return ",".join(str(job.pk) for job in self.active)


def job_tray(dismissed: Collection[str] = ()) -> Tray:
    jobs = list(recent_jobs()[:TRAY_SIZE])
    shown = set(map(id, row_jobs(jobs, dismissed).values()))
    return Tray(
        active=[job for job in jobs if job.is_active],
        failed=[job for job in jobs if id(job) in shown and not job.is_active],
    )


def describe(
    entry: Entry,
    capability: str,
    concretes: Mapping[str, resolve.Candidate],
    on_disk: Mapping[str, installed.DiskBackend],
    jobs: Mapping[str, Job],
    on_nodes: Mapping[str, list[str]] | None = None,
) -> EntryRow:
    row = EntryRow(entry, installed=entry.name in on_disk)
    row.job = jobs.get(entry.name.lower())
    row.on_nodes = (on_nodes or {}).get(entry.name, [])
    verdict = resolve.verdict(entry, concretes, capability)
    row.resolution, row.problem = verdict.resolution, verdict.problem
    return row


def installed_on_agents() -> dict[str, list[str]]:
    """Distributed mode: backend name -> the agent nodes that have it installed."""
    found: dict[str, list[str]] = {}
    if settings.DISTRIBUTED:
        rows = InstalledBackend.objects.filter(node__is_local=False).order_by(
            "node__name"
        )
        for name, node_name in rows.values_list("name", "node__name"):
            found.setdefault(name, []).append(node_name)
    return found


SUGGESTIONS = 30


def suggestions(capability: str, typed: str = "") -> list[Entry]:
    """What an install form on a node with ``capability`` suggests: entries it can run,
    each the first of its name, best match for ``typed`` first (the catalogue's search
    and ranking), at most SUGGESTIONS of them; the admin types to find the others."""
    runs_here_set(capability)
    entries = catalogue_entries(
        CatalogueQuery(capability, search=typed, development=True)
    )
    earlier = GalleryBackend.objects.filter(
        gallery__enabled=True, name_key=OuterRef("name_key")
    ).filter(
        Q(gallery__position__lt=OuterRef("gallery__position"))
        | Q(
            gallery__position=OuterRef("gallery__position"),
            gallery__name__lt=OuterRef("gallery__name"),
        )
    )
    shown = entries.exclude(Exists(earlier)).values_list(*LIGHT_FIELDS)
    return entries_of(shown[:SUGGESTIONS])


def describe_one(
    entry: GalleryBackend,
    capability: str,
    on_disk: Mapping[str, installed.DiskBackend],
    jobs: Mapping[str, Job],
    on_nodes: Mapping[str, list[str]] | None = None,
) -> EntryRow:
    """One entry described on its own, reading only the builds a meta can pick."""
    (light,) = light_entries(GalleryBackend.objects.filter(pk=entry.pk))
    builds = GalleryBackend.objects.enabled().filter(
        is_meta=False, name__in=list(entry.capabilities.values())
    )
    concretes = resolve.concretes_by_name(light_entries(builds))
    return describe(light, capability, concretes, on_disk, jobs, on_nodes)


def why_not_runnable(entry: GalleryBackend, node: Node) -> str:
    """Why ``entry`` does not run on ``node``; "" when it does."""
    return describe_one(entry, node.capability or "default", {}, {}).problem


def meta_offering(name: str) -> str:
    """The first meta backend whose capabilities map offers the build ``name``."""
    # The map's JSON holds the name between quotes: the database narrows the metas to
    # the few that mention it (not every meta of a 200,000-entry gallery), and the
    # values are compared here.
    metas = GalleryBackend.objects.enabled().filter(
        is_meta=True, capabilities__icontains=f'"{name}"'
    )
    for meta_name, capabilities in metas.values_list("name", "capabilities"):
        if name in capabilities.values():
            return str(meta_name)
    return ""


# -- installed backends ----------------------------------------------------------------


@dataclass
class InstalledRow:
    """An installed backend: the disk's facts, plus what the table knows (upgrades)."""

    disk: installed.DiskBackend
    record: InstalledBackend | None
    size: int
    used_by: list[str] = field(default_factory=list)  # metas pointing at this build
    models: list[str] = field(default_factory=list)  # LocalAI's models that use it
    job: Job | None = None
    build: InstalledRow | None = None  # for a meta: the build it points at

    @property
    def name(self) -> str:
        return self.disk.name

    @property
    def metadata(self) -> installed.Metadata:
        return self.disk.metadata or installed.Metadata(name=self.disk.name)

    @property
    def installed_at(self) -> datetime | None:
        if self.record and self.record.installed_at:
            return self.record.installed_at
        try:
            return datetime.fromisoformat(self.metadata.installed_at)
        except ValueError:
            return None

    @property
    def upgrade_available(self) -> bool:
        return bool(self.record and self.record.upgrade_available)

    @property
    def orphaned(self) -> bool:
        # A meta whose build folder is gone: LocalAI cannot start it.
        return self.disk.is_meta and not self.disk.is_runnable


def installed_rows(
    folders: Mapping[str, installed.DiskBackend],
    records: Mapping[str, InstalledBackend],
    jobs: Mapping[str, Job],
) -> list[InstalledRow]:
    rows = []
    for key, disk in sorted(folders.items()):
        record = records.get(key)
        size = record.size_bytes if record and record.size_bytes else 0
        if not size and disk.folder is not None:
            size = installed.folder_size(disk.folder)
        rows.append(InstalledRow(disk, record, size, job=jobs.get(key)))
    by_name = {row.name: row for row in rows}
    for row in rows:
        target = pointer(row.disk)
        if target in by_name:
            row.build = by_name[target]
            row.build.used_by.append(row.name)
    return rows


@dataclass(frozen=True)
class Removal:
    """One line of a delete confirmation: a folder that goes, or one that stays and why."""

    what: str
    path: Path | None
    kept_because: str = ""


def removal_plan(
    disk: installed.DiskBackend, folders: Mapping[str, installed.DiskBackend]
) -> tuple[list[Removal], list[str]]:
    """What deleting ``disk`` removes, and warnings about what it leaves broken.

    The folders are the installer's own plan, the one the delete job carries out, so
    the confirmation cannot promise something else. A meta takes its build with it
    unless another meta still uses it: when the build is not in the plan, say who does.
    """
    plan = Installer(Path(settings.LOCALAI_BACKENDS_PATH)).plan_delete(
        disk.name, settings.LOCALAI_BACKENDS_SYSTEM_PATH, folders
    )
    # meta name -> the build it points at, for every meta on disk
    pointers = {key: build for key, row in folders.items() if (build := pointer(row))}
    label = f"meta backend {disk.name}" if disk.is_meta else disk.name
    removals = [Removal(label, plan[0])]
    removals += [Removal(f"build {folder.name}", folder) for folder in plan[1:]]
    target = pointers.get(disk.name, "")
    if target and target not in {folder.name for folder in plan}:
        others = sorted(
            k for k, t in pointers.items() if t == target and k != disk.name
        )
        if others:
            removals.append(
                Removal(f"build {target}", None, f"still used by {', '.join(others)}")
            )
    warnings: list[str] = []
    users = sorted(k for k, t in pointers.items() if t == disk.name)
    if users and not disk.is_meta:
        warnings.append(
            f"Meta backend {', '.join(users)} points at this build and will stop "
            "working until it is installed again."
        )
    return removals, warnings


# -- API answers -----------------------------------------------------------------------


def available(capability: str) -> Iterator[str]:
    """Gallery entries this node can run, in LocalAI's shape, with how metas resolve:
    each row as JSON text (``GalleryBackend.to_localai`` plus ``resolution``).

    Rows are produced one by one from the database (the answer is streamed); the
    runs-here set is made fresh first, so a failure there is an error, not a cut answer.
    """
    runs_here_set(capability)
    return _available_json([capability], local_disk(capability), resolutions=True)


def cluster_available() -> Iterator[str]:
    """Distributed mode: entries that at least one online node can run (the union), as
    JSON text rows (``GalleryBackend.to_localai``).

    The controller's own hardware counts too, as in LocalAI: before any agent registers
    the catalogue shows what this host runs instead of nothing.
    """
    capabilities = set(Node.objects.taking_work().values_list("capability", flat=True))
    capabilities.add(Node.objects.local().current_capability())
    for capability in sorted(capabilities):
        runs_here_set(capability)
    installed_names = set(InstalledBackend.objects.values_list("name", flat=True))
    return _available_json(capabilities, installed_names, resolutions=False)


# The answer's columns, read as values (30,000 model instances, their JSON decoded and
# encoded again, were most of the answer's time); JSON columns as the database's text.
_ANSWER_COLUMNS = (
    "entry_id",
    "entry__gallery_id",
    "entry__name",
    "entry__alias",
    "entry__uri",
    "mirrors_json",
    "capabilities_json",
    "entry__description",
    "entry__license",
    "entry__icon",
    "urls_json",
    "tags_json",
    "entry__version",
    "entry__sha256",
    "entry__is_meta",
    "concrete",
    "explanation",
)
# A str as json.dumps writes it (its C escaper, non-ASCII characters escaped).
_string = json.encoder.encode_basestring_ascii


def _available_json(
    capabilities: Collection[str],
    installed_names: Collection[str],
    *,
    resolutions: bool,
) -> Iterator[str]:
    """The entries that run on any of ``capabilities`` and win their name, in gallery
    order, each as the JSON text ``DjangoJSONEncoder`` makes of
    ``entry.to_localai(installed=...)`` (with the meta's ``resolution`` when asked).

    Written here rather than encoded from dicts: strings through json's C escaper, the
    JSON columns as stored (``_as_dumped``), each gallery encoded once.
    """
    galleries = {
        g.pk: (g.name, DjangoJSONEncoder().encode(g.to_localai()))
        for g in Gallery.objects.all()
    }
    runs = (
        RunsHere.objects.filter(
            capability__in=list(capabilities),
            gallery_rank__isnull=False,
            entry__gallery__enabled=True,
        )
        .annotate(
            mirrors_json=Cast("entry__mirrors", TextField()),
            capabilities_json=Cast("entry__capabilities", TextField()),
            urls_json=Cast("entry__urls", TextField()),
            tags_json=Cast("entry__tags", TextField()),
        )
        .order_by("gallery_rank")
        .values_list(*_ANSWER_COLUMNS)
    )
    seen: set[int] = set()  # an entry runs on several of the capabilities
    for (
        pk,
        gallery_id,
        name,
        alias,
        uri,
        mirrors,
        capability_map,
        description,
        license_name,
        icon,
        urls,
        tags,
        version,
        sha256,
        is_meta,
        concrete,
        explanation,
    ) in runs.iterator(chunk_size=2000):
        if pk in seen:
            continue
        seen.add(pk)
        gallery_name, gallery = galleries[gallery_id]
        if mirrors != "[]":
            mirrors = json.dumps([redact_uri(m) for m in json.loads(mirrors)])
        capability_map = _as_dumped(capability_map)
        # LocalAI leaves the key out for a concrete build; its swagger says object.
        capability_pair = (
            f'"capabilities": {capability_map}, ' if capability_map != "{}" else ""
        )
        row = (
            f'{{"id": {_string(f"{gallery_name}@{name}")}, "name": {_string(name)}, '
            f'"alias": {_string(alias)}, "uri": {_string(redact_uri(uri))}, '
            f'"mirrors": {mirrors}, {capability_pair}'
            f'"description": {_string(description)}, "license": {_string(license_name)}, '
            f'"icon": {_string(icon)}, "urls": {_as_dumped(urls)}, '
            f'"tags": {_as_dumped(tags)}, "version": {_string(version)}, '
            f'"sha256": {_string(sha256)}, "gallery": {gallery}, '
            f'"installed": {_bool(name in installed_names)}, "is_meta": {_bool(is_meta)}'
        )
        if resolutions and is_meta:
            # In the set, so it resolves (resolve.verdict said so): to this build.
            row += (
                f', "resolution": {{"concrete": {_string(concrete)}, '
                f'"explanation": {_string(explanation)}}}'
            )
        yield row + "}"


def _as_dumped(stored: str) -> str:
    """A JSON column's text as json.dumps writes its value. SQLite keeps json.dumps's
    own text; PostgreSQL's jsonb writes the same separators and key order as the value
    read back, but leaves non-ASCII characters unescaped: those are encoded again."""
    # json.dumps escapes non-ASCII characters and DEL (the text holds no other
    # control character unescaped); isascii() is a flag check, not a scan.
    if stored.isascii() and "\x7f" not in stored:
        return stored
    return json.dumps(json.loads(stored))


def _bool(value: bool) -> str:
    return "true" if value else "false"


def known_backends(installed_names: set[str]) -> list[dict[str, Any]]:
    """The known-backends registry merged with what is installed, by modality then name."""
    rows: dict[str, dict[str, Any]] = {}
    for known in KnownBackend.objects.all():
        row: dict[str, Any] = {
            "name": known.name,
            "modality": known.modality,
            "auto_detect": known.auto_detect,
        }
        if known.description:
            row["description"] = known.description
        row["installed"] = known.name in installed_names
        rows[known.name] = row
    for name in installed_names - rows.keys():
        rows[name] = {
            "name": name,
            "modality": "",
            "auto_detect": False,
            "installed": True,
        }
    return sorted(rows.values(), key=lambda r: (r["modality"], r["name"]))


def galleries() -> list[dict[str, Any]]:
    return [g.to_localai() for g in Gallery.objects.filter(enabled=True)]


def cluster_installed() -> list[dict[str, Any]]:
    """Distributed mode: each installed backend once, with the nodes that have it."""
    rows: dict[str, dict[str, Any]] = {}
    for row in InstalledBackend.objects.select_related("node").filter(
        node__is_local=False
    ):
        entry = rows.setdefault(
            row.name,
            {
                "Name": row.name,
                "RunFile": "",
                "IsMeta": row.is_meta,
                "IsSystem": row.is_system,
                "Metadata": {
                    "name": row.name,
                    "alias": row.alias,
                    "version": row.version,
                },
                "nodes": [],
            },
        )
        ref = {
            "node_id": str(row.node_id),
            "node_name": row.node.name,
            "node_status": row.node.status,
            "version": row.version,
            "digest": row.digest,
            "uri": redact_uri(row.uri),
            "installed_at": row.installed_at.isoformat() if row.installed_at else "",
        }
        entry["nodes"].append({key: value for key, value in ref.items() if value})
    return list(rows.values())


def warm_runs_here() -> None:
    """Make this host's runs-here set current now (after a sync), so that the first
    catalogue page after a sync that replaced entries does not compute it."""
    runs_here_set(Node.objects.local().current_capability())
