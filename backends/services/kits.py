"""Offline kits (backends/core/kits.py): export gallery backends into a kit, import a
kit as a gallery of its own and install from it."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import yaml
from django.conf import settings

from backends.core import kits, resolve
from backends.core.kits import KitError
from backends.core.sources import looks_like_oci
from backends.models import Gallery, GalleryBackend, Job
from backends.services import catalogue, jobs, pipeline

__all__ = ["KitError", "export_backends", "import_kit", "kits_folder"]


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
        images.append(kits.KitImage(entry.name, entry.uri))
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
    """Extract and verify ``kit``, add it as a gallery (first in order, so its builds
    win their names on a host whose other galleries are unreachable), and start the
    install of ``names`` (default: the backends the kit was made for)."""
    layout = kits.extract_kit(kit, kits_folder(), settings.LOCALAI_ADMIN_MAX_KIT_BYTES)
    gallery_file = layout.root / "installable.yaml"
    gallery_file.write_text(yaml.safe_dump(layout.gallery_entries(), sort_keys=False))
    gallery, _ = Gallery.objects.update_or_create(
        name=f"kit-{layout.root.name}",
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
