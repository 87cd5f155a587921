"""Write a PNG of every dashboard page to docs/screenshots/ (``make screenshots``).

Skipped unless SCREENSHOTS=1: it is a documentation step, not a check. The pages show
the real fixture gallery plus a few installed backends and jobs made up here, on a
controller in distributed mode with two agents (their hardware probed from fake trees,
as in tests/test_hardware.py) and a third one that went silent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from backends.core import hardware
from backends.models import Gallery, InstalledBackend, Job, Node
from tests.test_hardware import add_cuda_toolkit, jetson_host, linux_host, nvidia_host

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        os.environ.get("SCREENSHOTS") != "1", reason="set SCREENSHOTS=1"
    ),
]

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
MAX_FULL_HEIGHT = 2000
SHOWN_ROOT = Path(tempfile.gettempdir()) / "localai-admin-screenshots"


def install(name: str, **metadata: str) -> None:
    folder = Path(settings.LOCALAI_BACKENDS_PATH) / name
    folder.mkdir(parents=True)
    if not metadata.get("meta_backend_for"):
        (folder / "run.sh").write_text('#!/bin/sh\nexec ./backend "$@"\n')
        (folder / "run.sh").chmod(0o755)
        (folder / "backend").write_bytes(os.urandom(2_400_000))
    (folder / "metadata.json").write_text(json.dumps({"name": name, **metadata}))


def make_data(gallery: Gallery) -> Job:
    now = timezone.now()
    # The fixture is a copy of the default gallery: show where it comes from, not the
    # temporary file it was read from here.
    default: dict[str, Any] = settings.DEFAULT_BACKEND_GALLERIES[0]
    gallery.url, gallery.mirrors = default["url"], default["mirrors"]
    gallery.source = gallery.url
    gallery.save()
    install(
        "cpu-llama-cpp",
        alias="llama-cpp",
        version="v1.42.0",
        digest="sha256:4f1c2b9a8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3928170f6e5d4c",
        installed_at=(now - timedelta(days=3)).isoformat(),
        gallery_url=gallery.url,
    )
    install(
        "llama-cpp",
        meta_for="",
        meta_backend_for="cpu-llama-cpp",
        installed_at=now.isoformat(),
    )
    install(
        "cpu-whisper",
        alias="whisper",
        version="v1.40.1",
        digest="sha256:9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b",
        installed_at=(now - timedelta(days=12)).isoformat(),
    )
    broken = Gallery.objects.create(
        name="community",
        url="https://galleries.example.invalid/backends.yaml",
        position=1,
    )
    broken.last_attempt_at = now
    broken.last_error = "could not fetch https://galleries.example.invalid/backends.yaml: name resolution failed"
    broken.save()
    node = Node.objects.local()
    node.current_capability()
    InstalledBackend.objects.create(
        node=node,
        name="cpu-whisper",
        upgrade_available=True,
        available_version="v1.41.0",
        checked_at=now,
    )
    InstalledBackend.objects.create(node=node, name="cpu-llama-cpp", checked_at=now)
    running = Job.objects.create(
        kind=Job.Kind.INSTALL,
        target="localai@cpu-piper",
        dedup_key="cpu-piper",
        node=node,
        state=Job.State.RUNNING,
        progress=62.5,
        phase="downloading",
        file_name="sha256:2d3f7a9c1b4e… (layer 2 of 3)",
        current_bytes=190 * 1024 * 1024,
        total_bytes=304 * 1024 * 1024,
        bytes_per_second=18.4 * 1024 * 1024,
        requested_by="alice",
        created_at=now - timedelta(seconds=12),
        started_at=now - timedelta(seconds=11),
    )
    Job.objects.create(
        kind=Job.Kind.UPGRADE,
        target="cpu-whisper",
        dedup_key="cpu-whisper",
        node=node,
        state=Job.State.QUEUED,
        requested_by="alice",
    )
    Job.objects.create(
        kind=Job.Kind.INSTALL,
        target="localai@cuda12-vllm",
        dedup_key="cuda12-vllm",
        node=node,
        state=Job.State.FAILED,
        error="quay.io: manifest unknown for latest-gpu-nvidia-cuda-12-vllm (HTTP 404)",
        requested_by="alice",
        created_at=now - timedelta(hours=2),
        started_at=now - timedelta(hours=2),
        finished_at=now - timedelta(hours=2) + timedelta(seconds=3),
    )
    Job.objects.create(
        kind=Job.Kind.INSTALL,
        target="localai@llama-cpp",
        dedup_key="llama-cpp",
        node=node,
        state=Job.State.COMPLETED,
        progress=100,
        requested_by="alice",
        created_at=now - timedelta(days=3),
        started_at=now - timedelta(days=3),
        finished_at=now - timedelta(days=3) + timedelta(seconds=48),
    )
    return running


def make_agent(name: str, root: Path, **fields: Any) -> Node:
    fields.setdefault("last_heartbeat", timezone.now() - timedelta(seconds=2))
    node = Node.objects.create(
        name=name, backends_path="/var/lib/localai/backends", **fields
    )
    node.apply_hardware(hardware.probe(root))
    return node


def make_cluster(tmp_path: Path) -> tuple[Node, Job]:
    """Two agents that answer, one that stopped, and an install fanned out to them."""
    now = timezone.now()
    gpu = make_agent("gpu-node", nvidia_host(tmp_path / "gpu"))
    cpu = make_agent("cpu-node", linux_host(tmp_path / "cpu"))
    jetson = jetson_host(tmp_path / "jetson")
    add_cuda_toolkit(jetson, "cuda-12")
    make_agent(
        "edge-node", jetson, last_heartbeat=now - timedelta(hours=3)
    )  # offline on the first read
    for node, build, version in (
        (gpu, "cuda12-llama-cpp", "v1.42.0"),
        (cpu, "cpu-llama-cpp", "v1.42.0"),
    ):
        InstalledBackend.objects.create(
            node=node,
            name=build,
            alias="llama-cpp",
            version=version,
            installed_at=now - timedelta(days=2),
        )
        InstalledBackend.objects.create(
            node=node, name="llama-cpp", is_meta=True, meta_backend_for=build
        )
    InstalledBackend.objects.create(node=cpu, name="cpu-piper", version="v1.41.0")
    parent = Job.objects.create(
        kind=Job.Kind.INSTALL,
        target="localai@whisper",
        dedup_key="whisper",
        state=Job.State.RUNNING,
        phase="fan-out",
        message="install on 2 node(s)",
        requested_by="alice",
        created_at=now - timedelta(seconds=21),
        started_at=now - timedelta(seconds=20),
    )
    Job.objects.create(
        kind=Job.Kind.INSTALL,
        target="localai@whisper",
        dedup_key="whisper",
        node=gpu,
        parent=parent,
        state=Job.State.RUNNING,
        progress=45.0,
        phase="downloading",
        file_name="sha256:7c1e0d… (layer 1 of 2)",
        current_bytes=410 * 1024 * 1024,
        total_bytes=911 * 1024 * 1024,
        bytes_per_second=31 * 1024 * 1024,
        message="downloading cuda12-whisper",
        created_at=now - timedelta(seconds=21),
        started_at=now - timedelta(seconds=19),
    )
    Job.objects.create(
        kind=Job.Kind.INSTALL,
        target="localai@whisper",
        dedup_key="whisper",
        node=cpu,
        parent=parent,
        state=Job.State.COMPLETED,
        progress=100.0,
        phase="done",
        current_bytes=96 * 1024 * 1024,
        total_bytes=96 * 1024 * 1024,
        message="installed whisper as cpu-whisper",
        created_at=now - timedelta(seconds=21),
        started_at=now - timedelta(seconds=19),
        finished_at=now - timedelta(seconds=6),
    )
    return gpu, parent


def test_write_a_screenshot_of_every_page(
    new_page: Any,
    users: Any,
    real_gallery: Gallery,
    known_backends: None,
    settings: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    settings.DISTRIBUTED = True
    # Paths on the pages read like a host's, not like pytest's temporary folders.
    shutil.rmtree(SHOWN_ROOT, ignore_errors=True)
    settings.LOCALAI_BACKENDS_PATH = SHOWN_ROOT / "backends"
    settings.LOCALAI_BACKENDS_PATH.mkdir(parents=True)
    request.addfinalizer(lambda: shutil.rmtree(SHOWN_ROOT, ignore_errors=True))
    running = make_data(real_gallery)
    gpu, fan_out = make_cluster(tmp_path)
    OUT.mkdir(parents=True, exist_ok=True)
    shots = [
        ("catalogue", "/"),
        ("catalogue-filtered", "/?q=llama&tag=llm&sort=installed"),
        ("catalogue-fan-out", "/?q=whisper&sort=installed"),
        ("catalogue-entry", "/catalogue/localai/llama-cpp/"),
        ("installed", "/installed/"),
        ("delete-confirmation", "/installed/llama-cpp/delete/"),
        ("known", "/known/"),
        ("jobs", "/jobs/"),
        ("job-detail", f"/jobs/{running.pk}/"),
        ("job-fan-out", f"/jobs/{fan_out.pk}/"),
        ("galleries", "/galleries/"),
        ("hardware", "/hardware/"),
        ("nodes", "/nodes/"),
        ("node-detail", f"/nodes/{gpu.pk}/"),
    ]
    page = new_page(users["alice"], viewport=DESKTOP)
    for name, url in shots:
        page.goto(url)
        # Whole page unless it is a long list: then the first screen says enough.
        full = page.evaluate("document.documentElement.scrollHeight") <= MAX_FULL_HEIGHT
        page.screenshot(path=str(OUT / f"{name}.png"), full_page=full)

    phone = new_page(users["alice"], viewport=PHONE, device_scale_factor=2)
    phone.goto("/")
    phone.screenshot(path=str(OUT / "catalogue-phone.png"))
    phone.goto("/nodes/")
    phone.screenshot(path=str(OUT / "nodes-phone.png"))

    anonymous = new_page(viewport=DESKTOP)
    anonymous.goto("/accounts/login/")
    anonymous.screenshot(path=str(OUT / "login.png"))
    assert len(list(OUT.glob("*.png"))) >= len(shots) + 3
