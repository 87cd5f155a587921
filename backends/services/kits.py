"""Offline kits (backends/core/kits.py): export gallery backends into a kit, import a
kit as a gallery of its own and install from it.

Importing is two steps, so the dashboard can show what a kit holds before anything is
installed: ``receive_kit`` extracts and checks it (every blob against its digest),
``preview`` says what each image is and whether this host's policy accepts its
signatures, ``install_kit`` adds its gallery and starts the installs. The command does
the three at once (``import_kit``)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml
from django.conf import settings

from backends.core import kits, oci, resolve
from backends.core.installed import human_size
from backends.core.kits import KitError
from backends.core.oci.verify import PolicyError, VerificationPolicy, verify_image
from backends.core.sources import looks_like_oci
from backends.core.trees import remove_tree
from backends.models import Gallery, GalleryBackend, Job
from backends.services import catalogue, jobs, pipeline
from backends.services.jobs import audited

__all__ = [
    "KitError",
    "export_backends",
    "find_kit",
    "import_kit",
    "install_kit",
    "kits_folder",
    "preview",
    "receive_kit",
    "received",
    "remove_leftovers",
]

# A kit's id: the folder it is extracted to (the start of its index.json's digest).
_KIT_ID = re.compile(r"[0-9a-f]{16}")


def kits_folder() -> Path:
    """Where kits are extracted: under a local root, so the source policy lets the
    installer read them."""
    return Path(settings.LOCALAI_ADMIN_LOCAL_ROOTS[0]) / "kits"


def export_backends(
    names: list[str], output: Path, *, capability: str = ""
) -> dict[str, str]:
    """Write the kit of ``names``; returns each image's digest by backend name.

    A meta backend brings every build its capabilities name (the kit is for another
    host, whose hardware this one does not know), or only the build it resolves to for
    ``capability``."""
    entries: dict[str, GalleryBackend] = {}
    requested = []
    for name in names:
        entry = GalleryBackend.objects.find(name)
        if entry is None:
            raise KitError(f'no backend found with name "{name}"')
        entries[entry.name] = entry
        requested.append(entry.name)
        if entry.is_meta:
            for build in _builds(entry, capability):
                entries.setdefault(build.name, build)
    images = []
    for entry in entries.values():
        if entry.is_meta:
            continue
        if not looks_like_oci(entry.uri):
            raise KitError(
                f"{entry.name} is not an OCI image ({entry.uri}); a kit holds images only"
            )
        images.append(
            kits.KitImage(
                entry.name,
                entry.uri,
                entry.gallery.name,
                dict(entry.gallery.verification or {}) or None,
            )
        )
    gallery = [_gallery_entry(entry, set(entries)) for entry in entries.values()]
    with pipeline.registry_client() as client:
        return kits.write_kit(
            output, images, gallery, backends=requested, client=client
        )


def _builds(meta: GalleryBackend, capability: str) -> list[GalleryBackend]:
    if capability:
        _, build = resolve.pick_build(meta, catalogue.builds_of(meta), capability)
        return [build]
    builds = []
    for name in dict.fromkeys(meta.capabilities.values()):
        found = GalleryBackend.objects.find(f"{meta.gallery.name}@{name}")
        if found is None:
            raise KitError(f"{meta.name}: its build {name} is not in the gallery")
        builds.append(found)
    return builds


def _gallery_entry(entry: GalleryBackend, exported: set[str]) -> dict[str, Any]:
    item: dict[str, Any] = {"name": entry.name}
    for key in ("alias", "description", "license", "version"):
        if value := getattr(entry, key):
            item[key] = value
    if entry.tags:
        item["tags"] = list(entry.tags)
    if entry.is_meta:
        item["capabilities"] = {
            capability: build
            for capability, build in entry.capabilities.items()
            if build in exported
        }
    else:
        item["uri"] = entry.uri  # replaced by the kit's own oci-layout: URI
    return item


def import_kit(
    kit: Path | IO[bytes],
    names: list[str] | None = None,
    *,
    force: bool = False,
    requested_by: str = "",
    queue: bool = True,
) -> tuple[Gallery, list[Job]]:
    """Extract and verify ``kit`` and install ``names`` from it (default: the backends
    the kit was made for): ``import_backends``."""
    return install_kit(
        _extract(kit),
        names,
        force=force,
        requested_by=requested_by,
        queue=queue,
    )


def _extract(kit: Path | IO[bytes]) -> kits.Layout:
    return kits.extract_kit(kit, kits_folder(), settings.LOCALAI_ADMIN_MAX_KIT_BYTES)


@audited("kit_upload")
def receive_kit(filename: str, upload: IO[bytes]) -> kits.Layout:
    """Extract and check an uploaded kit (``filename`` is only for the audit log);
    nothing is installed yet. Refused with the reason when it is not a sound kit."""
    try:
        return _extract(upload)
    except KitError as exc:
        raise jobs.Refused(400, str(exc), code="bad_kit") from None


def find_kit(kit_id: str) -> kits.Layout | None:
    """The kit extracted under ``kit_id`` (``Layout.root.name``), if there is one."""
    if not _KIT_ID.fullmatch(kit_id):
        return None
    root = kits_folder() / kit_id
    return kits.Layout(root) if (root / "index.json").is_file() else None


def received() -> list[str]:
    """The ids of the kits extracted on this host, newest first."""
    folder = kits_folder()
    if not folder.is_dir():
        return []
    found = [
        path
        for path in folder.iterdir()
        if _KIT_ID.fullmatch(path.name) and (path / "index.json").is_file()
    ]
    found.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    return [path.name for path in found]


def remove_leftovers(older_than_seconds: float = 86400) -> int:
    """Remove what an upload or an extraction cut short left in the kits folder (a
    worker killed mid-way: ``.upload-*`` files, ``.import-*`` folders) once it is older
    than ``older_than_seconds``; returns how many were removed."""
    folder = kits_folder()
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    removed = 0
    for path in folder.iterdir():
        leftover = path.name.startswith((".upload-", ".import-"))
        if leftover and path.lstat().st_mtime < cutoff:
            remove_tree(path)
            removed += 1
    return removed


def discard_kit(layout: kits.Layout) -> None:
    """Remove an extracted kit, and its gallery if it was installed from."""
    Gallery.objects.filter(name=_gallery_name(layout)).delete()
    remove_tree(layout.root)


@dataclass(frozen=True)
class ImageCheck:
    """One image of a kit, as the page before the install shows it."""

    name: str
    digest: str
    source: str  # the image it was exported from
    size: str
    gallery: str  # the gallery the kit says it came from
    claimed: str  # the verification block the kit carries, described ("" if none)
    policy: str  # this host's policy that applies ("" if none)
    verified_by: str  # what verified it ("" if not verified)
    problem: str  # why it would be refused ("" if it would install)


@dataclass(frozen=True)
class KitPreview:
    kit: str
    backends: list[str]  # what the kit was made for: installed by default
    entries: list[str]  # every backend of the kit's gallery
    images: list[ImageCheck]

    @property
    def refused(self) -> list[ImageCheck]:
        return [image for image in self.images if image.problem]


def preview(layout: kits.Layout) -> KitPreview:
    """What installing from the kit would do, each image's signatures checked now
    against this host's policy, as the install will check them again."""
    entries = [entry for entry in layout.gallery_entries() if entry.get("name")]
    by_digest = {
        kits.parse_layout_uri(entry["uri"])[1]: str(entry["name"])
        for entry in entries
        if str(entry.get("uri", "")).startswith(kits.SCHEME)
    }
    return KitPreview(
        layout.root.name,
        layout.backends(),
        [str(entry["name"]) for entry in entries],
        [_check(layout, digest, name) for digest, name in by_digest.items()],
    )


def _check(layout: kits.Layout, digest: str, name: str) -> ImageCheck:
    annotations = layout.annotations(digest)
    gallery, policy = pipeline.kit_image_policy(layout, digest)
    verified_by = problem = size = ""
    try:
        image = layout.resolve(digest, oci.Platform.host())
        size = human_size(sum(layer.size for layer in image.layers))
        if policy is not None:
            verified_by = verify_image(
                layout,
                image,
                policy,
                trust_root=settings.LOCALAI_ADMIN_SIGSTORE_TRUST_ROOT,
            )
        elif settings.LOCALAI_ADMIN_REQUIRE_INTEGRITY:
            problem = (
                f"{layout.reference(digest)}: an image from a gallery without a "
                "verification policy is refused (LOCALAI_ADMIN_REQUIRE_INTEGRITY is on)"
            )
    except (oci.OCIError, KitError) as exc:
        problem = str(exc)
    return ImageCheck(
        name,
        digest,
        annotations.get(kits.SOURCE_ANNOTATION, ""),
        size,
        gallery,
        _claimed(annotations.get(kits.VERIFICATION_ANNOTATION, "")),
        policy.describe() if policy is not None else "",
        verified_by,
        problem,
    )


def _claimed(block: str) -> str:
    if not block:
        return ""
    try:
        policy = VerificationPolicy.from_json(json.loads(block))
    except (PolicyError, ValueError) as exc:
        return f"unreadable ({exc})"
    return policy.describe() if policy is not None else ""


def _gallery_name(layout: kits.Layout) -> str:
    return f"kit-{layout.root.name}"


def install_kit(
    layout: kits.Layout,
    names: list[str] | None = None,
    *,
    force: bool = False,
    requested_by: str = "",
    queue: bool = True,
) -> tuple[Gallery, list[Job]]:
    """Add the extracted kit as a gallery (first in order, so its builds win their
    names on a host whose other galleries are unreachable), and start the install of
    ``names`` (default: the backends the kit was made for).

    Queued in distributed mode, an install would go to every agent, none of which has
    the kit: refused (``import_backends`` on a node's own host installs there)."""
    if settings.DISTRIBUTED and queue:
        raise jobs.Refused(
            409,
            "an offline kit installs on the host that holds it, and in distributed "
            "mode installs go to the agents: run manage.py import_backends with the "
            "kit on each node's host",
            code="kit_not_distributed",
        )
    gallery_file = layout.root / "installable.yaml"
    gallery_file.write_text(yaml.safe_dump(layout.gallery_entries(), sort_keys=False))
    gallery, _ = Gallery.objects.update_or_create(
        name=_gallery_name(layout),
        defaults={"url": gallery_file.as_uri(), "position": 0, "enabled": True},
    )
    gallery.sync(force=True)
    if gallery.last_error:
        raise KitError(f"the kit's gallery is not valid: {gallery.last_error}")
    started = [
        jobs.install(
            f"{gallery.name}@{name}",
            force=force,
            requested_by=requested_by,
            queue=queue,
        )
        for name in names or layout.backends()
    ]
    return gallery, started
