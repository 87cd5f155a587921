from __future__ import annotations

import functools
import hashlib
import marshal
import secrets
import struct
import tempfile
import uuid
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from datetime import datetime, timedelta
from itertools import batched
from json.encoder import encode_basestring_ascii
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, models, transaction
from django.db.models.functions import Concat
from django.utils import timezone

from backends.core import gallery as gallery_format
from backends.core import hardware
from backends.core.collector import collector_paused
from backends.core.hardware import HardwareReport
from backends.core.installed import DiskBackend, Metadata, human_size
from backends.core.known import KnownEntry
from backends.core.oci.verify import VerificationPolicy
from backends.core.policy import SourcePolicy, SourceRefused
from backends.core.redact import redact_text, redact_uri, unredacted
from backends.core.text import with_article
from backends.fixedsql import FixedSelect, column

# How long a page watches for a sync or an upgrade check it asked for: past it, the worker
# is taken to be down and the poller stops (the page says so) instead of polling forever.
WATCH_WINDOW = timedelta(minutes=5)


class GalleryManager(models.Manager["Gallery"]):
    def seed(self, configured: list[dict[str, Any]]) -> list[Gallery]:
        """Create the galleries named in configuration that the table does not have yet.

        Existing rows are left alone: once seeded, a gallery is edited in the admin.
        """
        created = []
        for position, item in enumerate(configured):
            name, url = item.get("name"), item.get("url")
            if not isinstance(name, str) or not isinstance(url, str):
                raise ValueError(
                    f"gallery #{position + 1} needs a name and a url: {item!r}"
                )
            mirrors = item.get("mirrors") or []
            gallery, was_created = self.get_or_create(
                name=name,
                defaults={"url": url, "mirrors": mirrors, "position": position},
            )
            if was_created:
                created.append(gallery)
        return created


@contextmanager
def sqlite_page_cache() -> Iterator[None]:
    """On SQLite, bulk writes go through SQLite's own page cache, not the memory map the
    connection reads through (settings): every page of the table a sync replaces would
    otherwise stay mapped, counted in the worker's resident memory (a 100,000-entry
    sync peaked at 315 MB instead of 128 MB)."""
    if connection.vendor != "sqlite":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA mmap_size")
        (mapped,) = cursor.fetchone()
        cursor.execute("PRAGMA mmap_size=0")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA mmap_size={int(mapped)}")


class Gallery(models.Model):
    """A backend gallery source: a YAML index of backends, fetched and synced."""

    name = models.SlugField(max_length=100, unique=True)
    url = models.CharField(max_length=2000)
    mirrors = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    position = models.PositiveIntegerField(default=0)
    last_synced_at = models.DateTimeField(null=True, blank=True)
    # When a sync last replaced the entries (an unchanged source moves only
    # last_synced_at): what cached "runs here" sets depend on.
    entries_replaced_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    problems = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=2000, blank=True)
    content_hash = models.CharField(max_length=64, blank=True)
    etag = models.CharField(max_length=500, blank=True)
    entry_count = models.PositiveIntegerField(default=0)
    # LocalAI's ``verification`` block plus ``public_key`` (core/oci/verify.py); {}
    # installs this gallery's images unverified.
    verification = models.JSONField(default=dict, blank=True)

    objects = GalleryManager()

    class Meta:
        ordering = ("position", "name")
        verbose_name_plural = "galleries"
        permissions = [("sync_gallery", "Can sync galleries")]

    def __str__(self) -> str:
        return self.name

    def to_localai(self) -> dict[str, Any]:
        """The shape of LocalAI's ``config.Gallery``, as shown: without secrets."""
        return {
            "name": self.name,
            "url": redact_uri(self.url),
            "mirrors": [redact_uri(mirror) for mirror in self.mirrors],
            **({"verification": self.verification} if self.verification else {}),
        }

    def verification_policy(self) -> VerificationPolicy | None:
        """The signature policy its images must satisfy; PolicyError (a ValueError)
        when the stored block cannot be enforced."""
        return VerificationPolicy.from_json(self.verification or None, self.name)

    def sync_pending(self, since: datetime) -> bool:
        """A sync asked for at ``since`` has not ended yet (within the watch window).

        ``last_attempt_at`` is stamped when a sync starts and saved when it ends, so a
        reader sees the new value once the result is there."""
        if timezone.now() - since > WATCH_WINDOW:
            return False
        return self.last_attempt_at is None or self.last_attempt_at < since

    def sync(self, *, force: bool = False, policy: SourcePolicy | None = None) -> str:
        """Fetch the source and replace this gallery's entries; returns a one-line summary.

        A failure of any kind keeps the last good entries and records the error, so a
        broken or unreachable source never empties the catalogue. ``policy`` (default:
        the settings') decides which hosts and local files the fetch may reach.

        Memory follows a chunk of entries, not the gallery: the body waits in a spool
        (``fetch_gallery``), its entries are read one at a time and written out as rows
        to a second spool, and only then, in one short transaction, do the rows replace
        the old ones (docs/performance.md, "At scale"). None of the objects this makes
        holds a cycle, so the cycle collector is paused meanwhile.
        """
        policy = policy or SourcePolicy.parse(
            settings.LOCALAI_ADMIN_PRIVATE_HOSTS, settings.LOCALAI_ADMIN_LOCAL_ROOTS
        )
        with collector_paused():
            return self._sync(force, policy)

    def _sync(self, force: bool, policy: SourcePolicy) -> str:
        self.last_attempt_at = timezone.now()
        etag, sha256 = self.etag, self.content_hash
        if force or not self.entry_count:
            etag, sha256 = "", ""
        limits = gallery_format.GalleryLimits(
            entries=settings.LOCALAI_ADMIN_GALLERY_MAX_ENTRIES
        )
        try:
            fetched = gallery_format.fetch_gallery(
                self.url,
                self.mirrors,
                limits=limits,
                policy=policy,
                stall_seconds=settings.LOCALAI_ADMIN_STALL_SECONDS,
                etag=etag,
                sha256=sha256,
            )
        except (gallery_format.GalleryError, ValueError) as exc:
            return self._failed(str(exc))
        with fetched, tempfile.SpooledTemporaryFile(ROWS_IN_MEMORY) as staged:
            if fetched.not_modified:
                self.last_synced_at, self.last_error = self.last_attempt_at, ""
                self.save()
                return f"{self.name}: unchanged ({self.entry_count} entries)"
            reading = gallery_format.GalleryReading(
                fetched.content, self.name, limits, fetched.shape
            )
            kept = self._network_safe(reading, fetched.source, policy)
            try:
                count = stage_rows(GalleryBackend.rows(self, kept), staged)
            except (gallery_format.GalleryError, ValueError) as exc:
                return self._failed(str(exc))
            if not count:
                return self._failed(
                    f"gallery {self.name}: no usable entry; "
                    + "; ".join(reading.problems[:5])
                )
            with sqlite_page_cache(), transaction.atomic():
                self.entries.all().delete()
                GalleryBackend.objects.insert_rows(staged_rows(staged))
                self.last_synced_at = self.last_attempt_at
                self.entries_replaced_at = self.last_attempt_at
                self.last_error = ""
                self.problems = reading.messages()
                self.source = redact_uri(fetched.source)
                self.etag = fetched.etag
                self.content_hash = fetched.sha256
                self.entry_count = count
                self.save()
        GalleryBackend.objects.analyze()
        summary = f"{self.name}: {count} entries from {self.source}"
        if self.problems:
            summary += f" ({len(self.problems)} problems)"
        return summary

    def _failed(self, message: str) -> str:
        """Record a failed sync (the entries stay as they were); its summary."""
        if not message.startswith(f"gallery {self.name}"):
            message = f"gallery {self.name}: {message}"
        self.last_error = message
        self.save(update_fields=("last_attempt_at", "last_error"))
        return f"{self.name}: sync failed: {message}"

    def _network_safe(
        self,
        reading: gallery_format.GalleryReading,
        source: str,
        policy: SourcePolicy,
    ) -> Iterator[gallery_format.GalleryEntry]:
        """The entries, but those naming local sources in a gallery read over the
        network, which become problems (the install would refuse them anyway)."""
        for entry in reading:
            try:
                policy.check_gallery_entry(source, (entry.uri, *entry.mirrors))
            except SourceRefused as exc:
                reading.report(f"gallery {self.name}, entry {entry.name!r}: {exc}")
            else:
                yield entry


# Rows per executemany of a sync's inserts (SQLite; PostgreSQL streams through COPY),
# and per chunk of its staged rows.
INSERT_CHUNK = 2000
# A sync's rows stay in memory up to this size, then go to a temporary file.
ROWS_IN_MEMORY = 4 * 1024 * 1024


# The length of each staged chunk, written before it.
_STAGED_SIZE = struct.Struct("<Q")


def stage_rows(rows: Iterable[list[Any]], out: IO[bytes]) -> int:
    """Write ``rows`` to ``out``, INSERT_CHUNK at a time (marshal: plain values, written
    and read back far faster than they are parsed); the number of rows. Each chunk goes
    behind its length, so it is read back in one piece: ``marshal.load`` on a file reads
    a few bytes at a time (50,000 reads for the real index's rows)."""
    count = 0
    for chunk in batched(rows, INSERT_CHUNK):
        data = marshal.dumps(chunk)
        out.write(_STAGED_SIZE.pack(len(data)))
        out.write(data)
        count += len(chunk)
    return count


def staged_rows(staged: IO[bytes]) -> Iterator[list[Any]]:
    """The rows ``stage_rows`` wrote, read back a chunk at a time."""
    staged.seek(0)
    while header := staged.read(_STAGED_SIZE.size):
        (size,) = _STAGED_SIZE.unpack(header)
        yield from marshal.loads(staged.read(size))


def _json_text(value: tuple[str, ...] | Mapping[str, str]) -> str:
    """A JSON column's text, as ``json.dumps`` writes it (the JSONField's encoding).

    Its lists and maps hold strings only (``gallery_format``), so each string is
    encoded alone, without an encoder per value: that was a tenth of a sync.
    """
    text = encode_basestring_ascii
    if isinstance(value, tuple):
        return "[" + ", ".join(map(text, value)) + "]"
    return "{" + ", ".join(f"{text(k)}: {text(v)}" for k, v in value.items()) + "}"


def insert_plain(
    model: type[models.Model],
    fields: Sequence[models.Field[Any, Any]],
    rows: Iterable[Sequence[Any]],
    *,
    skip_existing: bool = False,
) -> None:
    """Insert rows of plain values (one per field of ``fields``, ready for the database),
    INSERT_CHUNK at a time, never all held at once: at 100,000 entries, building model
    instances for bulk_create cost several times the inserts themselves.

    PostgreSQL: COPY, or with ``skip_existing`` (rows that break a unique constraint
    are left out) one INSERT of the chunk's columns as arrays, since an executemany
    runs one statement per row on the server. SQLite: one prepared INSERT.
    """
    ops = connection.ops
    table = ops.quote_name(model._meta.db_table)
    columns = ", ".join(ops.quote_name(column(f)) for f in fields)
    conflict = " ON CONFLICT DO NOTHING" if skip_existing else ""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and not skip_existing:
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        elif connection.vendor == "postgresql":
            arrays = ", ".join(f"%s::{f.db_type(connection)}[]" for f in fields)
            insert = f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays})"
            for chunk in batched(rows, INSERT_CHUNK):
                columns_of_chunk = [list(values) for values in zip(*chunk, strict=True)]
                cursor.execute(insert + conflict, columns_of_chunk)
        else:  # ON CONFLICT: SQLite since 3.24
            marks = ", ".join(["%s"] * len(fields))
            insert = f"INSERT INTO {table} ({columns}) VALUES ({marks})"
            for chunk in batched(rows, INSERT_CHUNK):
                cursor.executemany(insert + conflict, chunk)


class GalleryBackendQuerySet(models.QuerySet["GalleryBackend"]):
    def insert_entries(
        self, gallery: Gallery, entries: Iterable[gallery_format.GalleryEntry]
    ) -> None:
        """Insert a gallery's entries (``Gallery.sync`` stages them first)."""
        self.insert_rows(GalleryBackend.rows(gallery, entries))

    def insert_rows(self, rows: Iterable[list[Any]]) -> None:
        """Insert ``GalleryBackend.rows`` (up to 200,000 of a sync) as they come."""
        insert_plain(GalleryBackend, GalleryBackend.row_fields(), rows)

    def analyze(self) -> None:
        """Refresh the planner's statistics of the entries table after a sync replaced
        its rows, if they no longer describe it (PostgreSQL: rows written by COPY leave
        it none until autovacuum comes by).

        Only when the table's row estimate is missing or off by more than a tenth from
        the rows the galleries hold: a sync that replaced a gallery by one of about its
        size leaves the plans as they were, and the ANALYZE was a tenth of a sync of the
        real index. Autovacuum, and the runs-here set computed after each sync, analyse
        the table anyway.
        """
        if connection.vendor != "postgresql":
            return
        table = connection.ops.quote_name(GalleryBackend._meta.db_table)
        galleries = connection.ops.quote_name(Gallery._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT reltuples, (SELECT SUM(entry_count) FROM {galleries}) "
                "FROM pg_class WHERE oid = %s::regclass",
                [table],
            )
            estimate, rows = cursor.fetchone()
            if estimate < 0 or abs(estimate - (rows or 0)) > (rows or 0) / 10:
                cursor.execute(f"ANALYZE {table}")

    def enabled(self) -> GalleryBackendQuerySet:
        # Galleries in their configured order: the first gallery wins a name lookup.
        return self.filter(gallery__enabled=True).order_by(
            "gallery__position", "gallery__name", "position"
        )

    def find(self, requested: str) -> GalleryBackend | None:
        """Look a backend up by ``name`` or ``gallery@name``, case-insensitively."""
        qs = self.enabled().select_related("gallery")
        if "@" in requested:
            gallery_name, _, name = requested.partition("@")
            qs = qs.filter(gallery__name__iexact=gallery_name)
        else:
            name = requested
        # The indexed lower-cased name: name__iexact is answered by no index, and a
        # lookup must not read a 200,000-entry gallery.
        return qs.filter(name_key=name.lower()).first()


class GalleryBackend(models.Model):
    """One entry of a synced gallery. Replaced as a whole on each successful sync."""

    gallery = models.ForeignKey(Gallery, models.CASCADE, related_name="entries")
    position = models.PositiveIntegerField(default=0)
    name = models.CharField(max_length=255)
    uri = models.CharField(max_length=2000, blank=True)
    alias = models.CharField(max_length=255, blank=True)
    description = models.TextField(blank=True)
    license = models.CharField(max_length=255, blank=True)
    icon = models.CharField(max_length=2000, blank=True)
    tags = models.JSONField(default=list, blank=True)
    urls = models.JSONField(default=list, blank=True)
    mirrors = models.JSONField(default=list, blank=True)
    capabilities = models.JSONField(default=dict, blank=True)
    version = models.CharField(max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    is_meta = models.BooleanField(default=False)
    # Derived at sync so the catalogue filters, searches and sorts in the database
    # (a gallery can hold 200,000 entries): lower-cased name and alias, the words a
    # search matches, and the tags between newlines ("\nasr\ngpu\n").
    name_key = models.CharField(max_length=255, blank=True, default="")
    alias_key = models.CharField(max_length=255, blank=True, default="")
    search_text = models.TextField(blank=True, default="")
    tag_text = models.TextField(blank=True, default="")

    objects = GalleryBackendQuerySet.as_manager()

    class Meta:
        ordering = ("gallery__position", "gallery__name", "position")
        constraints = [
            models.UniqueConstraint(
                fields=("gallery", "name"), name="unique_gallery_entry"
            ),
        ]
        indexes = [
            # Name lookups (install by name, the catalogue's search) go through this.
            models.Index(fields=("name",), name="gallerybackend_name"),
            # The catalogue's sort by name and its relevance ranking.
            models.Index(fields=("name_key",), name="gallerybackend_name_key"),
            models.Index(fields=("alias_key",), name="gallerybackend_alias_key"),
            # Gallery order ("gallery" sort, the API's answers).
            models.Index(fields=("gallery", "position"), name="gallerybackend_order"),
        ]

    def __str__(self) -> str:
        return self.id_in_gallery

    @property
    def id_in_gallery(self) -> str:
        return f"{self.gallery.name}@{self.name}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Syncs insert rows directly; an entry saved one by one (the admin site, tests)
        # keeps its derived columns right and makes the "runs here" sets stale.
        for key, value in self.derived(
            self.name, self.alias, self.description, self.tags or []
        ).items():
            setattr(self, key, value)
        super().save(*args, **kwargs)
        RunsHereSet.objects.all().delete()

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        RunsHereSet.objects.all().delete()
        return super().delete(*args, **kwargs)

    @staticmethod
    def row_fields() -> list[models.Field[Any, Any]]:
        """The columns ``rows`` fills, in order."""
        return [f for f in GalleryBackend._meta.concrete_fields if not f.primary_key]

    @staticmethod
    def rows(
        gallery: Gallery, entries: Iterable[gallery_format.GalleryEntry]
    ) -> Iterator[list[Any]]:
        """One row of ``row_fields`` values per entry, built as they are consumed."""
        fields = GalleryBackend.row_fields()
        names = [f.attname for f in fields]
        json_names = [f.attname for f in fields if isinstance(f, models.JSONField)]
        for position, entry in enumerate(entries):
            values = GalleryBackend.fields_from(entry)
            values["gallery_id"], values["position"] = gallery.pk, position
            for name in json_names:
                values[name] = _json_text(values[name])
            yield [values[name] for name in names]

    @staticmethod
    def fields_from(entry: gallery_format.GalleryEntry) -> dict[str, Any]:
        """The entry's columns but its place (tuples and a read-only map stand for the
        JSON lists and map)."""
        return {
            "name": entry.name,
            "uri": entry.uri,
            "alias": entry.alias,
            "description": entry.description,
            "license": entry.license,
            "icon": entry.icon,
            "tags": entry.tags,
            "urls": entry.urls,
            "mirrors": entry.mirrors,
            "capabilities": entry.capabilities,
            "version": entry.version,
            "sha256": entry.sha256,
            "is_meta": entry.is_meta,
            **GalleryBackend.derived(
                entry.name, entry.alias, entry.description, entry.tags
            ),
        }

    @staticmethod
    def derived(
        name: str, alias: str, description: str, tags: Iterable[str]
    ) -> dict[str, str]:
        """The columns the catalogue queries, from the entry's own fields."""
        tags = [str(tag) for tag in tags]
        return {
            "name_key": name.lower(),
            "alias_key": alias.lower(),
            "search_text": " ".join([name, alias, description, *tags]).lower(),
            "tag_text": "".join(f"\n{tag.lower()}" for tag in tags) + "\n"
            if tags
            else "",
        }

    def to_localai(self, installed: bool = False) -> dict[str, Any]:
        """LocalAI's ``gallery.GalleryBackend`` JSON, plus our ``id`` and ``is_meta``;
        as shown, so without the secrets a source may hold."""
        return {
            "id": self.id_in_gallery,
            "name": self.name,
            "alias": self.alias,
            "uri": redact_uri(self.uri),
            "mirrors": [redact_uri(mirror) for mirror in self.mirrors],
            # LocalAI leaves the key out for a concrete build; its swagger says object.
            **({"capabilities": self.capabilities} if self.capabilities else {}),
            "description": self.description,
            "license": self.license,
            "icon": self.icon,
            "urls": self.urls,
            "tags": self.tags,
            "version": self.version,
            "sha256": self.sha256,
            "gallery": self.gallery.to_localai(),
            "installed": installed,
            "is_meta": self.is_meta,
        }


class RunsHereSet(models.Model):
    """The catalogue entries that run on a node with ``capability``, as of the enabled
    galleries' ``fingerprint``: computed once per capability and gallery state with
    ``resolve.verdict`` (the one rule), so the catalogue filters in the database."""

    capability = models.CharField(max_length=255, unique=True)
    fingerprint = models.CharField(max_length=64)
    # Every tag of the enabled galleries, lower-cased and sorted (the tag links).
    tags = models.JSONField(default=list, blank=True)
    total = models.PositiveIntegerField(default=0)  # entries of the enabled galleries
    # The catalogue's counts without a search, gallery or tag filter, so its first
    # pages need no COUNT over 100,000 rows: entries that are not development builds,
    # entries that run here, and entries that run here and are not development builds.
    release = models.PositiveIntegerField(default=0)
    runnable = models.PositiveIntegerField(default=0)
    runnable_release = models.PositiveIntegerField(default=0)
    computed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.capability} ({self.fingerprint[:8]})"


class RunsHereQuerySet(models.QuerySet["RunsHere"]):
    def insert_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Insert rows of ``RunsHere.ROW_FIELDS`` values (30,000 at 100,000 entries),
        skipping those already there (two first requests computing one set at once)."""
        fields = {f.name: f for f in RunsHere._meta.concrete_fields}
        insert_plain(
            RunsHere,
            [fields[name] for name in RunsHere.ROW_FIELDS],
            rows,
            skip_existing=True,
        )


class RunsHere(models.Model):
    """One entry that runs on ``capability`` (see RunsHereSet)."""

    # The columns ``RunsHere.objects.insert_rows`` fills, in order.
    ROW_FIELDS = (
        "capability",
        "entry",
        "rank",
        "gallery_rank",
        "concrete",
        "explanation",
    )

    capability = models.CharField(max_length=255)
    # No database constraint and no cascade: a sync replaces entries by the hundred
    # thousand, and rows left pointing at gone entries match nothing until the set is
    # recomputed (the galleries' fingerprint changed with the sync).
    entry = models.ForeignKey(
        GalleryBackend, models.DO_NOTHING, db_constraint=False, related_name="runs_on"
    )
    # The entry's place in the catalogue's name order (name, then gallery order), so
    # the default view reads its page from an index instead of sorting 30,000 rows.
    rank = models.PositiveIntegerField(default=0)
    # Its place in gallery order, as the API answers list entries; null when an
    # earlier entry (an earlier gallery's) has the same name, which LocalAI lists
    # instead. Kept here so /backends/available reads its rows from an index, in
    # order, instead of sorting 30,000 wide rows and reading every name per request.
    gallery_rank = models.PositiveIntegerField(null=True, blank=True)
    # For a meta: the build resolve.verdict chose here and why (the answer's
    # "resolution"), so the answer does not resolve every meta again.
    concrete = models.CharField(max_length=255, blank=True, default="")
    explanation = models.TextField(blank=True, default="")

    objects = RunsHereQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=("capability", "entry"), name="unique_runs_here"
            ),
        ]
        indexes = [
            # The catalogue's default view: what runs here, in name order.
            models.Index(fields=("capability", "rank"), name="runshere_rank"),
            # /backends/available: what runs here, in gallery order.
            models.Index(
                fields=("capability", "gallery_rank"), name="runshere_gallery_rank"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.entry_id} on {self.capability}"


class NodeRefused(Exception):
    """A node rule says no (drain the local node, new work for a draining node...)."""


def offline_cutoff() -> datetime:
    """Agents whose last heartbeat is older than this are offline."""
    return timezone.now() - timedelta(seconds=settings.NODE_OFFLINE_SECONDS)


class NodeQuerySet(models.QuerySet["Node"]):
    def local(self) -> Node:
        node, _ = self.get_or_create(
            name=settings.NODE_NAME,
            defaults={
                "is_local": True,
                "backends_path": str(settings.LOCALAI_BACKENDS_PATH),
            },
        )
        return node

    def taking_work(self) -> NodeQuerySet:
        """Agents that take new jobs now: online, and heard from within the window."""
        return self.filter(
            is_local=False,
            status=Node.Status.ONLINE,
            last_heartbeat__gte=offline_cutoff(),
        )

    def silent(self) -> NodeQuerySet:
        """Agents past the offline window that are not marked offline yet."""
        return (
            self.filter(is_local=False)
            .filter(
                models.Q(last_heartbeat__lt=offline_cutoff())
                | models.Q(last_heartbeat__isnull=True)
            )
            .exclude(status=Node.Status.OFFLINE)
        )


class Node(models.Model):
    """A host that installs backends: the local one, plus agents in distributed mode."""

    class Status(models.TextChoices):
        ONLINE = "online", "Online"
        OFFLINE = "offline", "Offline"
        DRAINING = "draining", "Draining"

    name = models.CharField(max_length=255, unique=True)
    is_local = models.BooleanField(default=False)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.ONLINE
    )
    backends_path = models.CharField(max_length=2000, blank=True)
    hardware = models.JSONField(default=dict, blank=True)
    capability = models.CharField(max_length=100, blank=True)
    capability_explanation = models.TextField(blank=True)
    vendor = models.CharField(max_length=32, blank=True)
    vram_bytes = models.BigIntegerField(default=0)
    cuda_version = models.CharField(max_length=32, blank=True)
    driver_version = models.CharField(max_length=64, blank=True)
    os = models.CharField(max_length=32, blank=True)
    arch = models.CharField(max_length=32, blank=True)
    probed_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # The backends disk, as the node last reported it (0: never reported).
    disk_total_bytes = models.BigIntegerField(default=0)
    disk_free_bytes = models.BigIntegerField(default=0)
    # LocalAI's models on the node, as its agent last reported them: a list of
    # {"model", "backend", "folders"} (the folders that backend name lands on there).
    # The controller cannot read an agent's models folder, so a delete on that node
    # is checked against this (services.usage).
    localai_models = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ("-is_local", "name")
        permissions = [("manage_nodes", "Can drain and resume nodes, probe hardware")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_silent(self) -> bool:
        """An agent not heard from within the offline window (the local node never is)."""
        if self.is_local:
            return False
        return self.last_heartbeat is None or self.last_heartbeat < offline_cutoff()

    @property
    def current_status(self) -> str:
        """The status as of now: derived on read, so a dead agent shows offline at once,
        before the periodic sweep has written it and failed its jobs."""
        if self.status != Node.Status.OFFLINE and self.is_silent:
            return Node.Status.OFFLINE
        return self.status

    @property
    def current_status_label(self) -> str:
        return str(Node.Status(self.current_status).label)

    @property
    def accepts_work(self) -> bool:
        return not self.why_no_work()

    def why_no_work(self) -> str:
        """Why this node takes no new job, as a sentence; "" when it does."""
        status = self.current_status
        if status != Node.Status.ONLINE:
            return f"{self.name} is {status}: it takes no new work"
        if not self.is_local and not settings.DISTRIBUTED:
            return (
                f"distributed mode is off, so the agent of {self.name} cannot "
                "receive jobs"
            )
        return ""

    def drain(self) -> None:
        """Stop giving this agent new work; its running jobs finish."""
        if self.is_local:
            raise NodeRefused(
                f"{self.name} is this host: it is never drained (stop its worker)"
            )
        self._move(Node.Status.ONLINE, Node.Status.DRAINING)

    def resume(self) -> None:
        """A drained agent takes new work again."""
        self._move(Node.Status.DRAINING, Node.Status.ONLINE)

    def _move(self, was: str, becomes: str) -> None:
        if not Node.objects.filter(pk=self.pk, status=was).update(status=becomes):
            self.refresh_from_db(fields=("status",))
            raise NodeRefused(f"{self.name} is {self.status}: nothing changed")
        self.status = becomes

    def probe_local_hardware(self) -> None:
        """Probe this machine (through the configured probe root) and store the report."""
        report = hardware.probe(
            settings.LOCALAI_ADMIN_PROBE_ROOT,
            forced=settings.LOCALAI_FORCE_META_BACKEND_CAPABILITY,
        )
        self.apply_hardware(report)

    def current_capability(self) -> str:
        """The capability string, probing first if this node was never probed."""
        forced = settings.LOCALAI_FORCE_META_BACKEND_CAPABILITY
        stale = self.probed_at is None or (forced and forced != self.capability)
        if self.is_local and stale:
            self.probe_local_hardware()
        return self.capability or "default"

    def apply_hardware_dict(self, data: dict[str, Any]) -> None:
        """Store a hardware report received as JSON (from an agent)."""
        self.apply_hardware(HardwareReport.from_dict(data))

    def apply_hardware(self, report: HardwareReport) -> None:
        """Store a hardware report on this node."""
        self.hardware = report.to_dict()
        self.capability = report.capability
        self.capability_explanation = report.explanation
        self.vendor = report.vendor
        self.vram_bytes = report.vram_bytes
        self.cuda_version = report.cuda_version
        self.driver_version = report.driver_version
        self.os = report.os
        self.arch = report.arch
        self.probed_at = timezone.now()
        self.save()


class InstalledBackend(models.Model):
    """A backend on a node's disk. Reconciled from the disk, which is the source of truth."""

    node = models.ForeignKey(Node, models.CASCADE, related_name="installed")
    name = models.CharField(max_length=255)
    alias = models.CharField(max_length=255, blank=True)
    meta_backend_for = models.CharField(max_length=255, blank=True)
    uri = models.CharField(max_length=2000, blank=True)
    digest = models.CharField(max_length=100, blank=True)
    # The policy that verified the image's signature; "" when none did.
    verified_by = models.TextField(blank=True)
    version = models.CharField(max_length=255, blank=True)
    gallery_url = models.CharField(max_length=2000, blank=True)
    installed_at = models.DateTimeField(null=True, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    is_system = models.BooleanField(default=False)
    is_meta = models.BooleanField(default=False)
    upgrade_available = models.BooleanField(default=False)
    available_version = models.CharField(max_length=255, blank=True)
    available_digest = models.CharField(max_length=100, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    # Left out of "upgrade all" and upgraded only with force. Admin policy, not disk
    # state: reconcile updates rows in place and never touches it.
    pinned = models.BooleanField(default=False)

    class Meta:
        ordering = ("name",)
        constraints = [
            models.UniqueConstraint(
                fields=("node", "name"), name="unique_installed_per_node"
            ),
        ]
        # The roles' permissions (backends/roles.py): codenames, not model operations.
        permissions = [
            ("view_backends", "Can read the dashboard and the API's GET routes"),
            ("install_backend", "Can install and reinstall backends"),
            ("upgrade_backend", "Can upgrade backends and check for upgrades"),
            ("delete_backend", "Can delete backends"),
            ("install_from_path", "Can install from a folder or file on the host"),
        ]

    def __str__(self) -> str:
        return f"{self.name} on {self.node}"

    @classmethod
    def reconcile(
        cls,
        node: Node,
        rows: dict[str, DiskBackend],
        size_of: Callable[[str], int | None],
        fresh: dict[str, Metadata] | None = None,
        *,
        remeasure: Collection[str] | None = None,
    ) -> None:
        """Make the table say what the disk says for ``node`` (alias rows are not stored).

        ``metadata.json`` holds source URIs redacted; the table keeps them whole, for an
        upgrade to fetch again: from ``fresh`` (what was just installed, by name) or
        from the row itself, when the disk shows the redacted form of that URI.
        ``size_of(name)`` measures a folder (None: nothing to measure); it is asked for
        the names in ``remeasure`` and for new rows, or for every row when
        ``remeasure`` is None.
        """
        fresh = fresh or {}
        wanted = {
            row.name: row
            for key, row in rows.items()
            if key == row.name
            and (row.is_system or row.is_meta or row.folder is not None)
        }
        with transaction.atomic():
            cls.objects.filter(node=node).exclude(name__in=wanted).delete()
            existing = {b.name: b for b in cls.objects.filter(node=node)}
            # Only the rows the disk changed are written: a job's reconcile costs
            # what it installed, not every backend of the node.
            before = {name: _row(obj) for name, obj in existing.items()}
            for name, row in wanted.items():
                meta = row.metadata
                obj = existing.get(name) or cls(node=node, name=name)
                obj.alias = meta.alias if meta else ""
                obj.meta_backend_for = meta.meta_backend_for if meta else ""
                just = fresh.get(name, Metadata())
                obj.uri = unredacted(meta.uri, just.uri, obj.uri) if meta else ""
                obj.digest = meta.digest if meta else ""
                obj.verified_by = meta.verified_by if meta else ""
                obj.version = meta.version if meta else ""
                obj.gallery_url = (
                    unredacted(meta.gallery_url, just.gallery_url, obj.gallery_url)
                    if meta
                    else ""
                )
                obj.installed_at = _parse_time(meta.installed_at) if meta else None
                obj.is_system = row.is_system
                obj.is_meta = row.is_meta
                if remeasure is None or name in remeasure or obj.pk is None:
                    size = size_of(name)
                    obj.size_bytes = obj.size_bytes if size is None else size
                if obj.pk is None or _row(obj) != before.get(name):
                    obj.save()


def _row(obj: InstalledBackend) -> tuple[Any, ...]:
    return tuple(getattr(obj, f.attname) for f in obj._meta.concrete_fields)


def _parse_time(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def mean_progress(jobs: list[Job]) -> float:
    """A fanned-out job's progress: the mean of its parts."""
    return sum(job.progress for job in jobs) / len(jobs) if jobs else 0.0


class JobConflict(Exception):
    """Another kind of job is already working on the same backend on the same node."""

    def __init__(self, active: Job) -> None:
        super().__init__(
            f"{with_article(active.kind)} of {active.dedup_key} is already "
            f"{active.state} (job {active.pk})"
        )
        self.active = active


class JobManager(models.Manager["Job"]):
    def active(self) -> models.QuerySet[Job]:
        return self.filter(state__in=Job.ACTIVE_STATES)

    def parts(self) -> models.QuerySet[Job]:
        """The jobs as parts of a fan-out: what a part's progress, state and error
        show, with its node's name only. A parent's status, polled by scripts every
        second, reads every part: loading each node's hardware and models report
        (JSON) cost more than the rest of the answer."""
        return self.select_related("node").only(
            "parent_id",
            "node__name",
            "state",
            "progress",
            "phase",
            "file_name",
            "current_bytes",
            "total_bytes",
            "error",
        )

    def open(
        self,
        kind: str,
        target: str,
        *,
        node: Node | None = None,
        dedup_key: str = "",
        **fields: Any,
    ) -> tuple[Job, bool]:
        """Create a queued job, or return the active job already doing the same thing.

        One active job per backend per node: a partial unique index makes this hold
        under concurrent requests too. A request for the same kind of work gets the
        active job back (``created`` is False); a different kind (a delete during an
        install) is a conflict. Queueing it is the caller's business (services.dispatch).
        """
        node = node or Node.objects.local()
        key = (dedup_key or target).lower()
        try:
            with transaction.atomic():
                job = self.create(
                    kind=kind,
                    target=target,
                    node=node,
                    dedup_key=key,
                    message="queued",
                    phase="queued",
                    **fields,
                )
        except IntegrityError:
            active = self.active().filter(node=node, dedup_key=key).first()
            if active is None:  # it finished in between: try once more
                return self.open(kind, target, node=node, dedup_key=key, **fields)
            if active.kind != kind:
                raise JobConflict(active) from None
            return active, False
        return job, True

    def settle_parent(self, parent_id: Any) -> None:
        """Finish a fanned-out parent job once none of its children is active.

        Each child calls this as it ends: while a sibling is still active, one
        indexed existence check answers, so a fan-out to n nodes reads its n children
        once (the last one's call), not n times.
        """
        if not self.active().filter(parent_id=parent_id).exists():
            self.settle_parents([parent_id])

    def settle_parents(self, parent_ids: Iterable[Any]) -> None:
        """Finish each fanned-out parent none of whose children is active.

        The children of every parent are read in one query; one update per parent
        that ends.
        """
        families: dict[Any, list[Job]] = {}
        for child in self.parts().filter(parent_id__in=list(parent_ids)):
            families.setdefault(child.parent_id, []).append(child)
        for parent_id, children in families.items():
            if not any(child.is_active for child in children):
                self._settle(parent_id, children)

    def _settle(self, parent_id: Any, children: list[Job]) -> None:
        states = {child.state for child in children}
        failed = [child for child in children if child.state == Job.State.FAILED]
        error = ""
        if states == {Job.State.COMPLETED}:
            state, message = Job.State.COMPLETED, "completed on every node"
        elif states == {Job.State.CANCELLED}:
            state, message = Job.State.CANCELLED, "cancelled"
        else:
            done = sum(child.state == Job.State.COMPLETED for child in children)
            state = Job.State.FAILED
            message = (
                f"failed on {len(failed)} of {len(children)} node(s), {done} completed"
            )
            error = "; ".join(
                f"{c.node.name if c.node else '?'}: {c.error}" for c in failed
            )
        self.filter(pk=parent_id, state__in=Job.ACTIVE_STATES).update(
            state=state,
            message=message,
            error=error or ("" if state != Job.State.FAILED else message),
            progress=mean_progress(children),
            cancellable=False,
            finished_at=timezone.now(),
        )

    def fail_active_on(self, node_ids: Iterable[int], reason: str) -> None:
        """Fail every unfinished job of these nodes with "node <name> <reason>", and
        settle their fanned-out parents: one update for every node's jobs."""
        jobs = list(
            self.active()
            .filter(node_id__in=list(node_ids))
            .values_list("pk", "parent_id")
        )
        if not jobs:
            return
        name = models.Subquery(
            Node.objects.filter(pk=models.OuterRef("node_id")).values("name")[:1]
        )
        error = Concat(models.Value("node "), name, models.Value(f" {reason}"))
        self.filter(pk__in=[pk for pk, _ in jobs], state__in=Job.ACTIVE_STATES).update(
            state=Job.State.FAILED,
            error=error,
            message=Concat(models.Value("error: "), error),
            cancellable=False,
            finished_at=timezone.now(),
        )
        self.settle_parents({parent for _, parent in jobs if parent})

    def fail_interrupted(self, node: Node, started_before: datetime) -> int:
        """Fail the jobs a killed worker left running on ``node``.

        They are failed, not re-queued: the staging folder of a killed install is gone or
        half written, and silently starting a large download again is not what an admin
        who restarted a worker expects. Retry is one click away.
        """
        return self.filter(
            node=node, state=Job.State.RUNNING, started_at__lt=started_before
        ).update(
            state=Job.State.FAILED,
            error="the worker stopped while this job was running; retry it",
            message="error: the worker stopped while this job was running; retry it",
            cancellable=False,
            finished_at=timezone.now(),
        )


class Job(models.Model):
    """One install, upgrade or delete, from the request to its outcome. Kept as history."""

    class Kind(models.TextChoices):
        INSTALL = "install", "Install"
        UPGRADE = "upgrade", "Upgrade"
        DELETE = "delete", "Delete"
        ROLLBACK = "rollback", "Rollback"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATES = (State.QUEUED, State.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    target = models.CharField(max_length=2000)
    # Lower-cased name of the backend the job works on: one active job per key and node.
    dedup_key = models.CharField(max_length=2000, blank=True)
    node = models.ForeignKey(
        Node, models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    parent = models.ForeignKey(
        "self", models.CASCADE, null=True, blank=True, related_name="children"
    )
    external_uri = models.CharField(max_length=2000, blank=True)
    external_name = models.CharField(max_length=255, blank=True)
    external_alias = models.CharField(max_length=255, blank=True)
    # A rollback: the kept version to put back (its id, or a version string).
    version_ref = models.CharField(max_length=255, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    progress = models.FloatField(default=0)
    phase = models.CharField(max_length=32, blank=True)
    message = models.TextField(blank=True)
    file_name = models.CharField(max_length=2000, blank=True)
    current_bytes = models.BigIntegerField(default=0)
    total_bytes = models.BigIntegerField(default=0)
    bytes_per_second = models.FloatField(default=0)
    error = models.TextField(blank=True)
    cancellable = models.BooleanField(default=True)
    cancel_requested = models.BooleanField(default=False)
    force = models.BooleanField(default=False)
    requested_by = models.CharField(max_length=255, blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = JobManager()

    class Meta:
        ordering = ("-created_at",)
        permissions = [
            ("cancel_job", "Can cancel jobs"),
            ("retry_job", "Can retry jobs"),
        ]
        indexes = [
            # The history list and the Jobs page read newest first.
            models.Index(fields=("-created_at",), name="job_newest_first"),
        ]
        constraints = [
            # JobManager.start relies on this to refuse duplicate work atomically.
            models.UniqueConstraint(
                fields=("dedup_key", "node"),
                condition=models.Q(state__in=("queued", "running")),
                name="one_active_job_per_backend_and_node",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.target} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def is_finished(self) -> bool:
        return not self.is_active

    @property
    def note(self) -> str:
        """The message as the dashboard shows it, beside the badge, the phase, the file
        and the error: empty when it would only repeat one of them (the runner writes
        "<phase> <file>" while downloading and "error: <error>" on failure, which the
        JSON API keeps for LocalAI's clients)."""
        message = self.message.strip()
        repeats = {"", self.state, self.phase, "queued", "starting", "cancelling"}
        if self.phase and self.file_name:
            repeats.add(f"{self.phase} {self.file_name}")
        if self.error:
            repeats |= {self.error, f"error: {self.error}"}
        return "" if message in repeats else message

    @property
    def eta_seconds(self) -> float | None:
        if self.bytes_per_second <= 0 or not self.total_bytes:
            return None
        return max(self.total_bytes - self.current_bytes, 0) / self.bytes_per_second

    def cancel_if_queued(self) -> bool:
        """Cancel the job if no worker has taken it yet; False if one has."""
        cancelled = Job.objects.filter(pk=self.pk, state=Job.State.QUEUED).update(
            state=Job.State.CANCELLED,
            message="cancelled",
            cancellable=False,
            cancel_requested=True,
            finished_at=timezone.now(),
        )
        self.refresh_from_db()
        return bool(cancelled)

    def ask_to_stop(self) -> bool:
        """Ask the worker running this job to stop; False if it cannot be cancelled."""
        asked = Job.objects.filter(
            pk=self.pk, state=Job.State.RUNNING, cancellable=True
        ).update(cancel_requested=True, message="cancelling")
        self.refresh_from_db()
        return bool(asked)

    def to_opstatus(self) -> dict[str, Any]:
        """LocalAI's OpStatus shape (``GET /backends/jobs/<uuid>``), plus our fields."""
        children = list(self.children.parts()) if self.node_id is None else []
        progress = self.progress
        if children and self.is_active:
            progress = mean_progress(children)
        status: dict[str, Any] = {
            "deletion": self.kind == Job.Kind.DELETE,
            "file_name": redact_text(self.file_name),
            "processed": self.is_finished,
            # LocalAI's UI and op cache recognise a success by this exact message;
            # what the job did stays readable as ``outcome`` (and on the dashboard).
            "message": "completed"
            if self.state == Job.State.COMPLETED
            else redact_text(self.message),
            "progress": round(progress, 2),
            "phase": self.phase,
            "current_bytes": self.current_bytes,
            "total_bytes": self.total_bytes,
            "file_size": human_size(self.total_bytes) if self.total_bytes else "",
            "downloaded_size": human_size(self.current_bytes)
            if self.current_bytes
            else "",
            "gallery_element_name": redact_uri(self.target),
            "cancelled": self.state == Job.State.CANCELLED,
            "cancellable": self.cancellable and self.is_active,
            "nodes": [child.node_progress() for child in children],
            "id": str(self.pk),
            "kind": self.kind,
            "state": self.state,
            "bytes_per_second": round(self.bytes_per_second, 1),
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }
        if self.state == Job.State.COMPLETED:
            status["outcome"] = redact_text(self.message)
        if self.error:
            status["error"] = redact_text(self.error)
        return status

    NODE_STATUS: dict[str, str] = {
        State.QUEUED: "queued",
        State.RUNNING: "downloading",
        State.COMPLETED: "success",
        State.FAILED: "error",
        State.CANCELLED: "cancelled",
    }

    def node_progress(self) -> dict[str, Any]:
        """This child job as one entry of its parent's ``nodes`` list (LocalAI's shape)."""
        entry: dict[str, Any] = {
            "node_id": str(self.node_id or ""),
            "node_name": self.node.name if self.node else "",
            "status": self.NODE_STATUS[self.state],
            "percentage": round(self.progress, 2),
            "job_id": str(self.pk),
        }
        optional = {
            "file_name": redact_text(self.file_name),
            "current": human_size(self.current_bytes) if self.current_bytes else "",
            "total": human_size(self.total_bytes) if self.total_bytes else "",
            "phase": self.phase,
            "error": redact_text(self.error),
        }
        entry.update({key: value for key, value in optional.items() if value})
        return entry


class KnownBackendManager(models.Manager["KnownBackend"]):
    @transaction.atomic
    def replace_all(self, entries: Iterable[KnownEntry]) -> tuple[int, int, int]:
        """Make the registry exactly ``entries``; returns (added, changed, removed)."""
        current = {known.name: known for known in self.all()}
        added = changed = 0
        for entry in entries:
            fields = {
                "modality": entry.modality,
                "auto_detect": entry.auto_detect,
                "description": entry.description,
                "source": entry.source,
            }
            known = current.pop(entry.name, None)
            if known is None:
                self.create(name=entry.name, **fields)
                added += 1
            elif any(getattr(known, key) != value for key, value in fields.items()):
                self.filter(pk=known.pk).update(**fields)
                changed += 1
        self.filter(name__in=list(current)).delete()
        return added, changed, len(current)


class KnownBackend(models.Model):
    """An entry of the known-backends registry (importers, drop-ins, preference-only)."""

    class Source(models.TextChoices):
        IMPORTER = "importer", "Importer"
        DROP_IN = "drop-in", "Drop-in alternative"
        PREFERENCE_ONLY = "preference-only", "Preference only"

    name = models.CharField(max_length=255, unique=True)
    modality = models.CharField(max_length=64, blank=True)
    auto_detect = models.BooleanField(default=False)
    description = models.TextField(blank=True)
    source = models.CharField(max_length=20, choices=Source.choices)

    objects = KnownBackendManager()

    class Meta:
        ordering = ("modality", "name")

    def __str__(self) -> str:
        return self.name


class ApiTokenManager(models.Manager["ApiToken"]):
    def create_token(
        self, user: Any, name: str, *, expires_at: datetime | None = None
    ) -> tuple[ApiToken, str]:
        """Create a token; the clear value is returned once and never stored."""
        value = "lai_" + secrets.token_urlsafe(32)
        token = self.create(
            user=user,
            name=name,
            prefix=value[:10],
            token_hash=hash_token(value),
            expires_at=expires_at,
        )
        return token, value

    def authenticate(self, value: str) -> ApiToken | None:
        # Every API request pays this lookup: one fixed SELECT, not an ORM query.
        found = _token_select().first([hash_token(value)])
        if found is None:
            return None
        token, user = found
        # FixedSelect gives the instances of the models it was built with, in order.
        assert isinstance(token, ApiToken) and isinstance(user, get_user_model())
        now = timezone.now()
        if not user.is_active or token.has_expired(now):
            return None
        token.user = user
        # Written at most once a minute: a polling script must not turn reads into writes.
        if (
            token.last_used_at is None
            or (now - token.last_used_at).total_seconds() > 60
        ):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token


@functools.cache
def _token_select() -> FixedSelect:
    """A live token and its user, by the token's hash (``ApiTokenManager.authenticate``)."""
    user_model = get_user_model()
    return FixedSelect(
        [(ApiToken, "t"), (user_model, "u")],
        f"FROM {ApiToken._meta.db_table} t JOIN {user_model._meta.db_table} u "
        "ON u.id = t.user_id WHERE t.token_hash = %s AND t.revoked_at IS NULL",
    )


def hash_token(value: str) -> str:
    # Tokens are 256 random bits, so a plain SHA-256 is enough (no slow KDF needed).
    return hashlib.sha256(value.encode()).hexdigest()


class ApiToken(models.Model):
    """A named, revocable credential for scripts. Acts with its user's permissions."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # None: valid until revoked.
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenManager()

    class Meta:
        ordering = ("-created_at",)
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def audit_label(self) -> str:
        """How the audit log names this token, wherever it was changed from."""
        return f"{self} of {self.user.get_username()}"

    def has_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (
            now or timezone.now()
        )


class AuditEvent(models.Model):
    """One mutation asked of the product: who, from where, on what, and how it went.

    Kept apart from Job: a refused request starts no job, a pin or a drain is not one,
    and a job may be deleted while "who removed this?" must still be answerable.
    """

    class Channel(models.TextChoices):
        DASHBOARD = "dashboard", "Dashboard"
        API = "api", "API token"
        CLI = "cli", "Command"
        AGENT = "agent", "Agent"
        ADMIN = "admin", "Django admin"
        SYSTEM = "system", "Worker"

    class Outcome(models.TextChoices):
        STARTED = "started", "Started"
        DONE = "done", "Done"
        REFUSED = "refused", "Refused"
        FAILED = "failed", "Failed"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # A name, not a foreign key: the record outlives the account.
    username = models.CharField(max_length=150, blank=True, db_index=True)
    token_name = models.CharField(max_length=100, blank=True)
    channel = models.CharField(max_length=16, choices=Channel.choices)
    ip = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=2000, blank=True)
    node_name = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    job = models.ForeignKey(
        Job, models.SET_NULL, null=True, blank=True, related_name="audit_events"
    )

    class Meta:
        ordering = ("-created_at", "-id")
        permissions = [("view_audit", "Can read the audit log")]
        indexes = [models.Index(fields=("-created_at",), name="audit_newest_first")]

    def __str__(self) -> str:
        who = self.username or self.token_name or self.channel
        return f"{self.created_at:%Y-%m-%d %H:%M} {who} {self.action} {self.target}"

    @property
    def who(self) -> str:
        """The user, and the token when an API token acted for them."""
        if self.token_name:
            return f"{self.username} (token {self.token_name})"
        return self.username or self.get_channel_display()
