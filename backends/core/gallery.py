"""Backend galleries: parse LocalAI's YAML index of backends and fetch it from its sources.

A gallery document is a YAML sequence of mappings, one per backend. Entries share keys
through anchors and ``<<`` merge keys (a concrete build merges its meta and overrides
``name`` and ``uri``). A source is an ``https://``/``http://`` URL, a ``file://`` URL or
the ``github:owner/repo/path@ref`` shorthand, with mirrors tried in order.

No Django imports: the sync task, the resolver and the benchmarks use this module alone.
"""

from __future__ import annotations

import hashlib
import io
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import yaml
from yaml._yaml import CParser
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from backends.core.installed import TRANSIENT_SUFFIXES
from backends.core.policy import SourcePolicy, default_policy
from backends.core.redact import redact_message, redact_uri
from backends.core.transfer import (
    DEFAULT_STALL_SECONDS,
    BodyTimedOut,
    BodyTooLarge,
    Stalled,
    Watch,
    copy_capped,
    stalled,
)

# --- names -----------------------------------------------------------------------------

# Backend names become folder names under the backends path, so they must be a single
# safe path component.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_NAME_LENGTH = 255
# Nor may a name end like a working folder of our installer or LocalAI's (staging,
# backup, download): such a backend would vanish from every listing and be removed or
# renamed by crash recovery, and ``x`` installing would wipe ``x.install-tmp``. Compared
# case-insensitively, so a case-insensitive disk cannot make the two the same folder.
RESERVED_SUFFIXES = tuple(suffix.lower() for suffix in TRANSIENT_SUFFIXES)


def validate_name(value: object, what: str = "backend name") -> str:
    """Return ``value`` if it is a safe backend name, else raise ValueError saying why.

    Every entry point checks names here (API, dashboard, commands, the installer and the
    gallery parser), so a rule added here holds everywhere.
    """
    name = _check_component(value, what)
    suffix = reserved_suffix(name)
    if suffix:
        raise ValueError(
            f"{what} {name!r} is not allowed: names ending in {suffix!r} are reserved "
            "for the installers' working folders"
        )
    return name


def reserved_suffix(name: str) -> str:
    """The working-folder suffix ``name`` ends with, or ""."""
    lowered = name.lower()
    if not lowered.endswith(RESERVED_SUFFIXES):  # one call for every name that is fine
        return ""
    return next(s for s in RESERVED_SUFFIXES if lowered.endswith(s))


def _check_component(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {_kind(value)}")
    if not value:
        raise ValueError(f"{what} is empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    # fullmatch, not match: "$" would also accept a trailing newline.
    if NAME_PATTERN.fullmatch(value) is None:
        raise ValueError(
            f"{what} {value!r} may only contain letters, digits, '.', '_' and '-'"
        )
    if value.startswith("."):
        # ".", ".." and hidden folders are never backend folders.
        raise ValueError(f"{what} {value!r} is not allowed: it may not start with '.'")
    return value


def validate_backend_id(value: str) -> str:
    """Return ``value`` if it is a safe ``name`` or ``gallery@name``, else ValueError."""
    gallery, _, name = value.rpartition("@")
    validate_name(name)
    if gallery:
        # A gallery name is never a folder, so the reserved suffixes do not concern it.
        _check_component(gallery, "gallery name")
    return value


# --- entries ---------------------------------------------------------------------------

_NO_CAPABILITIES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class GalleryEntry:
    """One backend of a gallery, with LocalAI's key names."""

    name: str
    uri: str = ""
    alias: str = ""
    description: str = ""
    license: str = ""
    icon: str = ""
    tags: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    # capability -> name of a concrete entry. Read-only; excluded from the hash because
    # a mapping has none (equality still compares it).
    capabilities: Mapping[str, str] = field(default=_NO_CAPABILITIES, hash=False)
    version: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        # Callers may pass a plain dict; keep our own read-only copy so a frozen entry
        # cannot change under a shared reference.
        if not isinstance(self.capabilities, MappingProxyType):
            object.__setattr__(
                self, "capabilities", MappingProxyType(dict(self.capabilities))
            )

    @property
    def is_meta(self) -> bool:
        """A meta backend only points at concrete builds: it has a map and no artifact."""
        return bool(self.capabilities) and not self.uri


@dataclass
class ParseResult:
    entries: list[GalleryEntry]
    # One message per skipped entry, naming the gallery and the entry.
    problems: list[str]
    # One message per name that occurs more than once (the first occurrence was kept).
    duplicates: list[str]


@dataclass(frozen=True)
class GalleryLimits:
    """How large a gallery and its entries may be: every such number lives here.

    A gallery comes from the internet, so it is bounded on every axis (the real index,
    1,033 entries, is far below each limit). A gallery with too many entries fails whole
    and keeps its last good entries; an entry over a field limit is skipped and
    reported. Lengths count characters.
    """

    # Entries per gallery (LOCALAI_ADMIN_GALLERY_MAX_ENTRIES). Counted while reading, so
    # an oversized gallery is refused before it costs memory.
    entries: int = 20_000
    # Sizes of the database columns these land in (names and aliases: MAX_NAME_LENGTH).
    uri: int = 2000
    icon: int = 2000
    license: int = 255
    version: int = 255
    description: int = 64 * 1024
    # Items per list, and characters per item (a url or mirror is a uri).
    tags: int = 100
    tag: int = 100
    urls: int = 32
    mirrors: int = 32
    # Keys of a capabilities map, and characters per key (its targets are names).
    capabilities: int = 100
    capability: int = 100
    # YAML values (scalars, lists and maps as written) in one entry, and under anchors
    # in the whole document: parsing holds one entry at a time plus what anchors keep
    # for later aliases, so these two bound the parser's memory whatever the document.
    entry_values: int = 2000
    anchored_values: int = 100_000
    # Problem messages kept per sync (skipped entries, duplicate names); the rest are
    # counted in one last message.
    problems: int = 1000

    def list_limits(self, key: str) -> tuple[int, int]:
        """(items, characters per item) for the list field ``key``."""
        items = {"tags": self.tags, "urls": self.urls, "mirrors": self.mirrors}[key]
        return items, self.tag if key == "tags" else self.uri


DEFAULT_LIMITS = GalleryLimits()


class GalleryError(Exception):
    """The whole document is unusable (the caller keeps its last good entries)."""


class _EntryProblem(Exception):
    """Why one entry is skipped."""


def _plain_text_resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    keep = ("tag:yaml.org,2002:null", "tag:yaml.org,2002:merge")
    table: dict[str, list[tuple[str, re.Pattern[str]]]] = {}
    for first, resolvers in Resolver.yaml_implicit_resolvers.items():
        kept = [(tag, regexp) for tag, regexp in resolvers if tag in keep]
        if kept:
            table[first] = kept
    return table


class GalleryLoader(yaml.CSafeLoader):
    """libyaml's C loader, keeping every scalar as the text that was written.

    Every field of an entry is a string, so YAML 1.1's implicit typing only does harm:
    ``version: 1.10`` would become the float 1.1 and ``license: no`` the boolean False.
    Only null (an empty value) and the ``<<`` merge key keep their special meaning. This
    matches LocalAI, whose YAML decoder keeps the written text for string fields.
    """

    yaml_implicit_resolvers = _plain_text_resolvers()


_STRING_FIELDS = ("uri", "alias", "description", "license", "icon", "version", "sha256")
_LIMITED_STRINGS = ("uri", "icon", "license", "version", "description")
_LIST_FIELDS = ("tags", "urls", "mirrors")
_HEX_DIGITS = frozenset("0123456789abcdef")


# A gallery document: bytes, text, or a binary file (read from where it is; each pass
# rewinds it), so a large body can stay on disk while it is read.
Document = bytes | str | IO[bytes]


def parse_gallery(
    data: Document,
    gallery: str,
    limits: GalleryLimits = DEFAULT_LIMITS,
    shape: DocumentShape | None = None,
) -> ParseResult:
    """Parse a gallery document; entry problems are reported, never fatal.

    Every entry is held in the result: the sync reads a ``GalleryReading`` instead, so
    that its memory follows a chunk of entries rather than the gallery.
    """
    reading = GalleryReading(data, gallery, limits, shape)
    entries = list(reading)
    return ParseResult(entries, reading.problems, reading.duplicates())


def _too_many(limit: int) -> str:
    return (
        f"more than {limit:,} entries, the limit per gallery "
        "(LOCALAI_ADMIN_GALLERY_MAX_ENTRIES)"
    )


class GalleryReading:
    """The entries of a gallery document, yielded as they are read; iterate once.

    ``shape`` is ``document_shape(data, limits)`` when the caller has it already. A large
    document is read one entry at a time (see ``_EntryReader``), so what is held follows
    the largest entry, not the document: the names seen (for duplicates) and at most
    ``limits.problems`` messages. Entries are numbered from 1 in messages. Names compare
    case-insensitively, as LocalAI looks them up that way: of ``Foo`` and ``foo`` only
    the first is kept. A GalleryError may come part way, after entries were yielded:
    the caller keeps none of them.
    """

    def __init__(
        self,
        data: Document,
        gallery: str,
        limits: GalleryLimits = DEFAULT_LIMITS,
        shape: DocumentShape | None = None,
    ) -> None:
        self.data, self.gallery, self.limits, self.shape = data, gallery, limits, shape
        # One message per skipped entry, naming the gallery and the entry.
        self.problems: list[str] = []
        self.unlisted = 0  # problems past limits.problems, counted only
        self.kept: dict[str, int] = {}  # lower-cased name -> number of the entry kept
        self.spelled: dict[str, str] = {}  # those kept names not written lower-case
        self.repeats: dict[str, list[int]] = {}

    def report(self, message: str) -> None:
        """Record a problem (the first ``limits.problems`` are kept)."""
        if len(self.problems) < self.limits.problems:
            self.problems.append(message)
        else:
            self.unlisted += 1

    def duplicates(self) -> list[str]:
        """One message per name that occurs more than once (the first one was kept)."""
        messages = []
        for key, numbers in self.repeats.items():
            later = ", ".join(f"#{number}" for number in numbers)
            name = self.spelled.get(key, key)
            messages.append(
                f"gallery {self.gallery}: name {name!r} (#{self.kept[key]}) occurs "
                f"again as entry {later}; the first one is kept"
            )
        return messages

    def messages(self) -> list[str]:
        """Problems then duplicates, at most ``limits.problems``, and a last line
        counting those left out."""
        room = self.limits.problems - len(self.problems)
        duplicates = self.duplicates()
        left_out = self.unlisted + max(0, len(duplicates) - room)
        messages = self.problems + duplicates[: max(room, 0)]
        if left_out:
            messages.append(
                f"gallery {self.gallery}: {left_out:,} more problem(s) not listed"
            )
        return messages

    def __iter__(self) -> Iterator[GalleryEntry]:
        shape = self.shape
        if shape is None:
            try:
                shape = document_shape(self.data, self.limits)
            except yaml.YAMLError as exc:
                raise GalleryError(
                    f"gallery {self.gallery}: {_describe_yaml_error(exc)}"
                ) from None
        if shape.problem:
            raise GalleryError(f"gallery {self.gallery}: {shape.problem}")
        if shape.values > LOAD_WHOLE_VALUES:
            shared_ids: set[int] = set()
            items = _read_entries(self.data, self.gallery, self.limits, shared_ids)
            return self._entries(items, _Shared(self.limits, only=shared_ids))
        root = shape.take_composed()
        if root is None:
            loaded = _load_yaml(self.data, self.gallery)
        else:
            try:
                loaded = _construct(root)
            except yaml.YAMLError as exc:
                raise GalleryError(
                    f"gallery {self.gallery}: {_describe_yaml_error(exc)}"
                ) from None
        assert isinstance(loaded, list)  # the shape says so
        too_large = _EntryProblem(f"has more than {self.limits.entry_values} values")
        items = (
            too_large if number in shape.oversized else raw
            for number, raw in enumerate(loaded, start=1)
        )
        return self._entries(items, _Shared(self.limits))

    def _entries(self, items: Iterable[Any], shared: _Shared) -> Iterator[GalleryEntry]:
        for number, raw in enumerate(items, start=1):
            label = f"gallery {self.gallery}, entry #{number}"
            try:
                if isinstance(raw, _EntryProblem):
                    raise raw
                name = _entry_name(raw)
                label = f"gallery {self.gallery}, entry {name!r} (#{number})"
                entry = _build_entry(raw, name, shared)
            except _EntryProblem as exc:
                self.report(f"{label}: {exc}")
                continue
            key = name.lower()  # names are ASCII (NAME_PATTERN), so lower() is enough
            if key in self.kept:
                self.repeats.setdefault(key, []).append(number)
                continue
            self.kept[key] = number
            if name != key:
                self.spelled[key] = name
            yield entry


def _entry_name(raw: object) -> str:
    if not isinstance(raw, dict):
        raise _EntryProblem(f"expected a mapping, got {_kind(raw)}")
    name = raw.get("name")
    if name is None or name == "":
        raise _EntryProblem("has no name")
    try:
        return validate_name(name, "name")
    except ValueError as exc:
        raise _EntryProblem(str(exc)) from None


class _Shared:
    """Lists and maps already converted in this document, by identity.

    Entries merged from an anchor share the anchor's very objects (a meta's capabilities
    map is reused by each of its concrete builds), so each is checked once per document.
    Each object is kept with its result: entries are read one at a time and dropped, so
    without that reference a later object could reuse a dropped one's id(). ``only``,
    when given, holds the ids of the objects that may be shared (those built under YAML
    anchors, which the reader keeps anyway): any other one is converted and forgotten,
    so a document read entry by entry does not keep every entry's lists.
    """

    def __init__(self, limits: GalleryLimits, only: set[int] | None = None) -> None:
        self.limits = limits
        self.only = only
        self.lists: dict[int, tuple[object, tuple[str, ...]]] = {}
        self.maps: dict[int, tuple[object, Mapping[str, str]]] = {}

    def texts(self, value: object, key: str) -> tuple[str, ...]:
        items, length = self.limits.list_limits(key)
        if not value:
            return _texts(value, key, items, length)
        if self.only is not None and id(value) not in self.only:
            return _texts(value, key, items, length)
        found = self.lists.get(id(value))
        if found is None:
            found = self.lists[id(value)] = (value, _texts(value, key, items, length))
        return found[1]

    def capabilities(self, value: object) -> Mapping[str, str]:
        if not value:
            return _capabilities(value, self.limits)
        if self.only is not None and id(value) not in self.only:
            return _capabilities(value, self.limits)
        found = self.maps.get(id(value))
        if found is None:
            found = self.maps[id(value)] = (value, _capabilities(value, self.limits))
        return found[1]


def _build_entry(raw: dict[Any, Any], name: str, shared: _Shared) -> GalleryEntry:
    strings = {key: _text(raw.get(key), key) for key in _STRING_FIELDS}
    # Names are taken exactly as written (no stripping), like the entry's own name.
    strings["alias"] = _scalar(raw.get("alias"), "alias")
    for key in _LIMITED_STRINGS:
        limit: int = getattr(shared.limits, key)
        if len(strings[key]) > limit:
            raise _EntryProblem(f"{key} is longer than {limit} characters")
    if strings["alias"]:
        # An alias names the installed backend too, so it obeys the same rules as a name.
        _check_name(strings["alias"], "alias")
    sha256 = strings["sha256"].lower()
    if sha256 and (len(sha256) != 64 or not _HEX_DIGITS.issuperset(sha256)):
        raise _EntryProblem("sha256 must be 64 hexadecimal digits")
    lists = {key: shared.texts(raw.get(key), key) for key in _LIST_FIELDS}
    return GalleryEntry(
        name=name,
        uri=strings["uri"],
        alias=strings["alias"],
        description=strings["description"],
        license=strings["license"],
        icon=strings["icon"],
        tags=lists["tags"],
        urls=lists["urls"],
        mirrors=lists["mirrors"],
        capabilities=shared.capabilities(raw.get("capabilities")),
        version=strings["version"],
        sha256=sha256,
    )


def _text(value: object, key: str) -> str:
    """A string field without surrounding blanks; empty or absent is ""."""
    return _scalar(value, key).strip()


def _scalar(value: object, key: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    # GalleryLoader never produces these, but a document loaded elsewhere (a plain
    # CSafeLoader) may hold numbers or booleans where text was meant: accept them as
    # text rather than reject the entry. Floats may already have lost digits (1.10).
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise _EntryProblem(f"{key} must be a string, not {_kind(value)}")


def _texts(value: object, key: str, max_items: int, max_length: int) -> tuple[str, ...]:
    """A list-of-strings field; empty or absent is ()."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _EntryProblem(f"{key} must be a list of strings, not {_kind(value)}")
    if len(value) > max_items:
        raise _EntryProblem(f"{key} has more than {max_items} items")
    items = []
    for item in value:
        if item is None or isinstance(item, list | dict):
            raise _EntryProblem(f"{key} must be a list of strings, found {_kind(item)}")
        text = _text(item, key)
        if len(text) > max_length:
            raise _EntryProblem(
                f"{key} has an item longer than {max_length} characters"
            )
        items.append(text)
    return tuple(items)


def _capabilities(value: object, limits: GalleryLimits) -> Mapping[str, str]:
    if value is None:
        return _NO_CAPABILITIES
    if not isinstance(value, dict):
        raise _EntryProblem(f"capabilities must be a mapping, not {_kind(value)}")
    if len(value) > limits.capabilities:
        raise _EntryProblem(f"capabilities has more than {limits.capabilities} keys")
    result: dict[str, str] = {}
    for capability, target in value.items():
        if capability is None or isinstance(capability, list | dict | tuple):
            raise _EntryProblem(f"capabilities has a key that is {_kind(capability)}")
        key = _scalar(capability, "capability")
        if not key:
            raise _EntryProblem("capabilities has an empty key")
        if len(key) > limits.capability:
            raise _EntryProblem(
                f"capabilities has a key longer than {limits.capability} characters"
            )
        if target is None or isinstance(target, list | dict):
            raise _EntryProblem(
                f"capability {key!r} must name a backend, not {_kind(target)}"
            )
        # Targets are installed as folders, so they must be safe names like any entry's.
        result[key] = _check_name(_scalar(target, key), f"capability {key!r} target")
    return MappingProxyType(result) if result else _NO_CAPABILITIES


def _check_name(value: str, what: str) -> str:
    try:
        return validate_name(value, what)
    except ValueError as exc:
        raise _EntryProblem(str(exc)) from None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


_OPENS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSES = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class _DocumentProblem(Exception):
    """Why the whole document is refused while it is being read."""


class _TooLarge(Exception):
    """The entry being read holds more values than ``GalleryLimits.entry_values``."""

    def __init__(self) -> None:
        super().__init__()
        self.open = 0  # collections begun and not ended when reading stopped


class _EntryReader(Composer, CParser, SafeConstructor, Resolver):
    """GalleryLoader's rules, building one top-level entry at a time.

    ``yaml.load`` composes the whole document into nodes before it builds any value: a
    20 MB gallery of 20,000 entries took 450 MB. Here libyaml's C parser produces the
    events, and PyYAML's own composer and safe constructor (the rules CSafeLoader
    applies) turn each entry into values, dropped before the next entry is read. Only
    what YAML anchors name is kept, for later aliases and ``<<`` merge keys.
    """

    yaml_implicit_resolvers = GalleryLoader.yaml_implicit_resolvers

    def __init__(
        self, data: Document, limits: GalleryLimits, shared_ids: set[int]
    ) -> None:
        CParser.__init__(self, _rewound(data))
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.limits = limits
        self.values = 0  # nodes composed for the current entry
        self.anchoring = 0  # anchored nodes being composed, nested
        # Nodes an alias may still reach. Their values stay in constructed_objects, so
        # every alias shares one value, as with yaml.load.
        self.anchored: set[Node] = set()
        # The ids of those values, which entries may share (_Shared converts them once).
        self.shared_ids = shared_ids

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.values += 1
        if self.values > self.limits.entry_values:
            raise _TooLarge
        event = self.peek_event()
        anchored = (
            isinstance(event, yaml.NodeEvent)
            and not isinstance(event, yaml.AliasEvent)
            and event.anchor is not None
        )
        self.anchoring += anchored
        try:
            node = super().compose_node(parent, index)
        except _TooLarge as exc:
            exc.open += isinstance(event, _OPENS)
            raise
        finally:
            self.anchoring -= anchored
        if node is not None and (self.anchoring or anchored):
            self.anchored.add(node)
            if len(self.anchored) > self.limits.anchored_values:
                raise _DocumentProblem(
                    f"more than {self.limits.anchored_values:,} values under YAML "
                    "anchors"
                )
        return node

    def entries(self) -> Iterator[object]:
        """Each top-level item as loaded, or an _EntryProblem for one too large."""
        self.get_event()  # stream start
        if self.check_event(yaml.StreamEndEvent):
            raise _DocumentProblem(_document_problem(None))
        self.get_event()  # document start
        if self.check_event(yaml.MappingStartEvent):
            raise _DocumentProblem(_document_problem({}))
        if not self.check_event(yaml.SequenceStartEvent):
            root = self.construct_object(self._node(0), deep=True)
            raise _DocumentProblem(_document_problem(root))
        self.get_event()
        count = 0
        while not self.check_event(yaml.SequenceEndEvent):
            count += 1
            if count > self.limits.entries:
                raise _DocumentProblem(_too_many(self.limits.entries))
            yield self.next_entry(count)
        if not count:
            raise _DocumentProblem(_document_problem([]))
        self.get_event()  # sequence end
        self.get_event()  # document end
        if not self.check_event(yaml.StreamEndEvent):
            raise _DocumentProblem("invalid YAML: more than one document")

    def next_entry(self, index: int) -> object:
        self.values = 0
        try:
            node = self._node(index)
        except _TooLarge as exc:
            self.skip(exc.open)
            return _EntryProblem(f"has more than {self.limits.entry_values} values")
        built = self.constructed_objects
        before = len(built)
        value = self.construct_object(node, deep=True)
        # Forget this entry's values (newest first in the dict) but the anchored ones.
        fresh = list(islice(reversed(built), len(built) - before))
        for done in fresh:
            if done in self.anchored:
                self.shared_ids.add(id(built[done]))
            else:
                del built[done]
        return value

    def _node(self, index: int) -> Node:
        node = self.compose_node(None, index)
        # Only called with an event pending, which always composes into a node.
        assert node is not None
        return node

    def skip(self, open_collections: int) -> None:
        """Read past the rest of an entry whose reading stopped part way."""
        while open_collections:
            event = self.get_event()
            if isinstance(event, _OPENS):
                open_collections += 1
            elif isinstance(event, _CLOSES):
                open_collections -= 1


def _rewound(data: Document) -> Document:
    """``data``, at its start if it is a file (each pass over a document reads it all)."""
    if not isinstance(data, bytes | str):
        data.seek(0)
    return data


def _load_yaml(data: Document, gallery: str) -> object:
    try:
        return yaml.load(_rewound(data), Loader=GalleryLoader)
    except yaml.YAMLError as exc:
        raise GalleryError(f"gallery {gallery}: {_describe_yaml_error(exc)}") from None


def _read_entries(
    data: Document, gallery: str, limits: GalleryLimits, shared_ids: set[int]
) -> Iterator[object]:
    reader = _EntryReader(data, limits, shared_ids)
    try:
        yield from reader.entries()
    except yaml.YAMLError as exc:
        raise GalleryError(f"gallery {gallery}: {_describe_yaml_error(exc)}") from None
    except _DocumentProblem as exc:
        raise GalleryError(f"gallery {gallery}: {exc}") from None
    finally:
        reader.dispose()


# A document with at most this many YAML values is loaded whole by libyaml's C composer
# (twice as fast as reading entry by entry, and at most about 100 MB); a larger one is
# read one entry at a time. The real index has about 12,000.
LOAD_WHOLE_VALUES = 200_000


@dataclass(frozen=True)
class DocumentShape:
    """What one pass over a document tells of it, before its entries are built."""

    problem: (
        str  # why it cannot be a gallery, or "" when it is a list within the limits
    )
    values: int = 0  # YAML values (scalars, aliases, lists and maps) in the document
    oversized: frozenset[int] = frozenset()  # entries (from 1) over entry_values
    # The document's nodes when it was composed whole to take its shape (at most
    # LOAD_WHOLE_VALUES events): the reading builds the entries from them instead of
    # parsing the body a second time, and lets them go (``take_composed``).
    composed: list[Node] = field(default_factory=list, compare=False, repr=False)

    def take_composed(self) -> Node | None:
        """The composed document, once; None if there is none (or no longer)."""
        return self.composed.pop() if self.composed else None


def document_shape(body: Document, limits: GalleryLimits) -> DocumentShape:
    """The shape of ``body``: fast, and bounded in memory.

    libyaml counts the document's events first, in C (a tenth of a parse, no Python
    objects). A document of at most LOAD_WHOLE_VALUES events, which would be loaded
    whole anyway, is composed once and measured on its nodes, which the shape keeps for
    the reading. A larger one is measured on its events one at a time, in flat memory,
    and so is one libyaml or the composer rejects (that pass says where it fails).

    Raises yaml.YAMLError for a document libyaml cannot parse.
    """
    try:
        events = CParser(_rewound(body)).raw_parse()
    except yaml.YAMLError:
        return _shape_of_events(body, limits)
    if events > LOAD_WHOLE_VALUES:
        return _shape_of_events(body, limits)
    loader = GalleryLoader(_rewound(body))
    try:
        if not loader.check_node():
            return DocumentShape(_document_problem(None))
        root = loader.get_node()
        assert root is not None  # check_node said a document follows
        shape = _shape_of_nodes(root, limits)
        if not shape.problem and loader.check_node():
            return DocumentShape("invalid YAML: more than one document")
    except yaml.YAMLError:
        return _shape_of_events(body, limits)
    finally:
        loader.dispose()
    return shape


def _shape_of_nodes(root: Node, limits: GalleryLimits) -> DocumentShape:
    """The shape of a composed document, with the numbers the event pass would give: an
    alias counts as one value, wherever its anchor was."""
    if isinstance(root, MappingNode):
        return DocumentShape(_document_problem({}))
    if not isinstance(root, SequenceNode):
        # A lone scalar: only constructing it says whether it means null.
        return DocumentShape(_document_problem(_construct(root)))
    items: list[Node] = root.value
    if len(items) > limits.entries:
        return DocumentShape(_too_many(limits.entries))
    if not items:
        return DocumentShape(_document_problem([]))
    # Collections met already: meeting one again is an alias to it. Entries are walked
    # in order, so an anchor is counted in full in the entry that defines it.
    met: set[int] = set()
    values = 1
    oversized = set()
    for number, item in enumerate(items, start=1):
        inside = _count_values(item, met) - 1
        values += 1 + inside
        if inside >= limits.entry_values:
            oversized.add(number)
    return DocumentShape("", values, frozenset(oversized), [root])


def _count_values(node: Node, met: set[int]) -> int:
    count = 0
    pending = [node]
    while pending:
        current = pending.pop()
        count += 1
        if isinstance(current, ScalarNode) or id(current) in met:
            continue
        met.add(id(current))
        if isinstance(current, SequenceNode):
            pending.extend(current.value)
        else:
            for key, value in current.value:
                pending.append(key)
                pending.append(value)
    return count


def _construct(root: Node) -> object:
    """The value of a composed document, as ``yaml.load`` would build it."""
    loader = GalleryLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _shape_of_events(body: Document, limits: GalleryLimits) -> DocumentShape:
    """The shape of ``body`` from libyaml's events, one at a time: flat in memory."""
    depth = entries = documents = values = entry_start = 0
    oversized: set[int] = set()
    for event in yaml.parse(_rewound(body), Loader=GalleryLoader):
        if isinstance(event, yaml.NodeEvent):
            values += 1
            if depth == 0 and isinstance(event, yaml.MappingStartEvent):
                return DocumentShape(_document_problem({}))
            if depth == 0 and not isinstance(event, yaml.SequenceStartEvent):
                # A lone scalar: only loading says whether it means null.
                root = yaml.load(_rewound(body), GalleryLoader)
                return DocumentShape(_document_problem(root))
            if depth == 1:
                entries += 1
                if entries > limits.entries:
                    return DocumentShape(_too_many(limits.entries))
                entry_start = values
            elif depth > 1 and values - entry_start >= limits.entry_values:
                oversized.add(entries)
        elif isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                return DocumentShape("invalid YAML: more than one document")
        if isinstance(event, _OPENS):
            depth += 1
        elif isinstance(event, _CLOSES):
            depth -= 1
            if depth == 0 and not entries:
                return DocumentShape(_document_problem([]))
    if not documents:
        return DocumentShape(_document_problem(None))
    return DocumentShape("", values, frozenset(oversized))


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    # Built from the problem and line only: the exception text can quote the document.
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if mark is not None:
            return f"invalid YAML at line {mark.line + 1}: {what}"
        return f"invalid YAML: {what}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"invalid YAML: {exc.reason} at byte {exc.position}"
    return "invalid YAML"


def _document_problem(data: object) -> str:
    """Why a loaded document cannot be a gallery, or "" if it is a non-empty list.

    An empty list is refused as well: a sync must never replace a catalogue with nothing
    because a source briefly served ``[]``.
    """
    if isinstance(data, list):
        return "" if data else "the document is an empty list"
    if data is None:
        return "the document is empty"
    return f"the document is {_kind(data)}, not a list of backends"


# --- sources ---------------------------------------------------------------------------

ALLOWED_SCHEMES = ("https", "http", "file", "github")
USER_AGENT = "localai-admin"
# The real index is under 300 KB; anything far larger is a wrong URL or hostile.
MAX_GALLERY_BYTES = 64 * 1024 * 1024


def max_gallery_bytes(limits: GalleryLimits) -> int:
    """The byte cap for ``limits``: MAX_GALLERY_BYTES at the default entry limit, and
    in proportion above it, so a raised LOCALAI_ADMIN_GALLERY_MAX_ENTRIES (200,000
    entries written out in full are ~200 MB) is not refused for its size alone."""
    scale = max(1.0, limits.entries / DEFAULT_LIMITS.entries)
    return int(MAX_GALLERY_BYTES * scale)


_GITHUB_RAW = "https://raw.githubusercontent.com"


# Bodies up to this size stay in memory; a larger one is spooled to a temporary file
# (the real index is under 300 KB, a 100,000-entry gallery about 100 MB).
SPOOL_IN_MEMORY = 1024 * 1024


@dataclass(frozen=True)
class FetchResult:
    """What a fetch got. ``content`` holds the body (in memory when small, else in a
    temporary file): use the result as a context manager, or ``close()`` it."""

    content: IO[bytes] = field(repr=False)
    # The candidate that answered, as configured (before github: expansion). It may hold
    # credentials: show redact_uri(source) to people.
    source: str
    etag: str
    sha256: str
    # True on HTTP 304, or when the body's sha256 equals the one the caller already has:
    # the caller keeps its entries and skips parsing.
    not_modified: bool
    # The body's shape for parse_gallery, so the checked body is not scanned again.
    shape: DocumentShape | None = field(default=None, compare=False)
    # Candidates that failed before this one answered ("<url>: <why>"), for the UI.
    errors: tuple[str, ...] = ()

    @property
    def body(self) -> bytes:
        """The whole body in memory (small galleries; the sync reads ``content``)."""
        self.content.seek(0)
        return self.content.read()

    def close(self) -> None:
        self.content.close()

    def __enter__(self) -> FetchResult:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Spool:
    """A body being received: written to memory, then to a temporary file past
    SPOOL_IN_MEMORY, at most ``max_bytes``, and hashed on the way."""

    def __init__(self, max_bytes: int) -> None:
        # Closed by the FetchResult it becomes, or by fetch_gallery when it fails.
        self.file = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_IN_MEMORY, prefix="localai-admin-gallery-"
        )
        self.digest = hashlib.sha256()
        self.size = 0
        self.max_bytes = max_bytes

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise BodyTooLarge(f"larger than {self.max_bytes} bytes")
        self.digest.update(chunk)
        self.file.write(chunk)


class GalleryFetchError(GalleryError):
    """Every candidate failed; the message lists each one and why."""


class _SourceFailed(Exception):
    """Why one candidate could not be used; the next one is tried."""


def expand_source(url: str) -> str:
    """The URL to read for a configured source, or ValueError for an unusable one."""
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ALLOWED_SCHEMES:
        raise ValueError(
            f"unsupported source {redact_uri(url)!r}: use one of "
            + ", ".join(f"{allowed}:" for allowed in ALLOWED_SCHEMES)
        )
    if scheme == "github":
        return _expand_github(rest)
    parts = urlsplit(url)
    if scheme == "file":
        # file://host/... would be a network share; only local paths are meant.
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(
                f"file source {redact_uri(url)!r} must be file:///absolute/path"
            )
        return url
    if not parts.hostname:
        raise ValueError(f"source {redact_uri(url)!r} has no host")
    return url


def check_source(url: str, policy: SourcePolicy) -> None:
    """Refuse, before anything is saved, a source no sync could read: an unsupported
    scheme, a bare path, or a ``file://`` outside the policy's local roots. Hosts are
    checked when a sync connects (names resolve then, not now)."""
    if url != url.strip():
        raise ValueError("the source must not start or end with spaces")
    expand_source(url)
    if url.lower().startswith("file:"):
        policy.check_local_uri(url)


def _expand_github(rest: str) -> str:
    # github:owner/repo/path/to/index.yaml@ref (also github://...); ref defaults to main.
    # The ref is what follows the last "@", so refs like "release/v1" work.
    spec = rest.removeprefix("//")
    location, at, ref = spec.rpartition("@")
    if not at:
        location, ref = spec, "main"
    owner, _, remainder = location.partition("/")
    repo, _, path = remainder.partition("/")
    if not (owner and repo and path and ref) or path.endswith("/"):
        raise ValueError(
            f"github source {'github:' + spec!r} must be github:owner/repo/path@ref"
        )
    return f"{_GITHUB_RAW}/{owner}/{repo}/{ref}/{path}"


def candidates(url: str, mirrors: Sequence[str]) -> list[str]:
    """The sources to try in order: the primary, then each mirror, without blanks or repeats."""
    result: list[str] = []
    for source in (url, *mirrors):
        if not isinstance(source, str):
            # Mirrors come from JSON configuration; say so rather than crash on .strip().
            raise ValueError(f"gallery source must be a string, not {_kind(source)}")
        source = source.strip()
        if source and source not in result:
            result.append(source)
    return result


def fetch_gallery(
    url: str,
    mirrors: Sequence[str] = (),
    *,
    etag: str = "",
    sha256: str = "",
    client: httpx.Client | None = None,
    timeout: float = 60.0,
    stall_seconds: float = DEFAULT_STALL_SECONDS,
    limits: GalleryLimits = DEFAULT_LIMITS,
    policy: SourcePolicy | None = None,
) -> FetchResult:
    """Fetch a gallery from the first candidate that serves a usable document.

    ``policy`` decides which hosts (each redirect hop included) and local files the
    candidates may reach; a ``client`` passed in is the caller's and is used as is.

    ``etag`` and ``sha256`` describe the copy the caller already holds: an HTTP 304 or
    an identical body returns ``not_modified=True``. A body that is not a non-empty YAML
    list (an HTML error page behind a 200, ``[]``, an empty file) or that has more
    entries than ``limits`` allow fails that candidate, so the next mirror is tried.
    A source that stalls (``transfer``: less than 1 KiB in ``stall_seconds``) fails
    too, and ``timeout`` bounds the whole transfer.
    """
    sources = candidates(url, mirrors)
    if not sources:
        raise GalleryFetchError("the gallery has neither a URL nor mirrors")
    policy = policy or default_policy()
    failures: list[str] = []
    with ExitStack() as stack:
        http = client
        for source in sources:
            body = _Spool(max_gallery_bytes(limits))
            try:
                target = expand_source(source)
                if urlsplit(target).scheme.lower() == "file":
                    _read_file(policy.check_local_uri(target), body)
                    new_etag = ""
                else:
                    if http is None:
                        # Created only when needed: a file:// gallery loads no TLS setup.
                        http = stack.enter_context(
                            httpx.Client(
                                headers={"User-Agent": USER_AGENT},
                                timeout=timeout,
                                transport=policy.transport(),
                            )
                        )
                    response = _read_http(
                        http, target, etag, timeout, stall_seconds, body
                    )
                    if response is None:
                        body.file.close()
                        return FetchResult(
                            io.BytesIO(),
                            source,
                            etag,
                            sha256,
                            True,
                            errors=(*failures,),
                        )
                    new_etag = response
                return _accept(body, source, new_etag, sha256, limits, (*failures,))
            except (ValueError, _SourceFailed) as exc:
                body.file.close()
                failures.append(
                    f"{redact_uri(source)}: {redact_message(str(exc), source)}"
                )
    raise GalleryFetchError(
        f"all {len(sources)} source(s) failed: " + "; ".join(failures)
    )


def _accept(
    body: _Spool,
    source: str,
    etag: str,
    known_sha256: str,
    limits: GalleryLimits,
    failures: tuple[str, ...],
) -> FetchResult:
    digest = body.digest.hexdigest()
    content = body.file
    if known_sha256 and digest == known_sha256.lower():
        return FetchResult(content, source, etag, digest, True, errors=failures)
    try:
        shape = document_shape(content, limits)
    except yaml.YAMLError as exc:
        raise _SourceFailed(_describe_yaml_error(exc)) from None
    if shape.problem:
        raise _SourceFailed(shape.problem)
    return FetchResult(content, source, etag, digest, False, shape, failures)


def _read_file(path: Path, body: _Spool) -> None:
    try:
        if path.stat().st_size > body.max_bytes:
            raise _SourceFailed(f"larger than {body.max_bytes} bytes")
        with path.open("rb") as file:
            # A copy, read once: the parse and the sha256 then see the same bytes even
            # if the file changes meanwhile.
            while chunk := file.read(256 * 1024):
                body.write(chunk)
    except BodyTooLarge as exc:
        raise _SourceFailed(str(exc)) from None
    except FileNotFoundError:
        raise _SourceFailed(f"file not found: {path}") from None
    except IsADirectoryError:
        raise _SourceFailed(f"is a directory: {path}") from None
    except PermissionError:
        raise _SourceFailed(f"permission denied: {path}") from None
    except OSError as exc:
        raise _SourceFailed(f"cannot read {path}: {exc.strerror}") from None


def _read_http(
    client: httpx.Client,
    url: str,
    etag: str,
    timeout: float,
    stall_seconds: float,
    body: _Spool,
) -> str | None:
    """The etag of a successful GET, its body written to ``body``, or None when the
    server says 304 Not Modified."""
    headers = {"User-Agent": USER_AGENT}
    if etag:
        headers["If-None-Match"] = etag
    # The stall rule bounds each read and the progress made; the deadline bounds the
    # whole transfer, so a server trickling bytes cannot hold a sync for long.
    deadline = time.monotonic() + timeout
    watch = Watch(stall_seconds=min(stall_seconds, timeout))
    try:
        with client.stream(
            "GET",
            url,
            headers=headers,
            follow_redirects=True,
            timeout=watch.timeout,
        ) as response:
            status = response.status_code
            if status == 304 and etag:
                return None
            if not 200 <= status < 300:
                # Never parse an error page as an index.
                raise _SourceFailed(f"HTTP {status} {response.reason_phrase}".rstrip())
            try:
                copy_capped(
                    response,
                    watch,
                    body.write,
                    max_bytes=body.max_bytes,
                    deadline=deadline,
                )
            except BodyTooLarge as exc:
                raise _SourceFailed(str(exc)) from None
            except BodyTimedOut:
                raise _SourceFailed(f"timed out after {timeout:g}s") from None
            return str(response.headers.get("etag", ""))
    except Stalled as exc:
        raise _SourceFailed(str(exc)) from None
    except httpx.TimeoutException as exc:
        if stall_seconds >= timeout:  # the whole transfer's deadline was the bound
            raise _SourceFailed(f"timed out after {timeout:g}s") from None
        raise _SourceFailed(str(stalled(exc.request.url, stall_seconds))) from None
    except httpx.ConnectError as exc:
        raise _SourceFailed(f"connection failed: {exc}") from None
    except httpx.TooManyRedirects:
        raise _SourceFailed("too many redirects") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _SourceFailed(f"{type(exc).__name__}: {exc}") from None
