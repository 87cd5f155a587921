"""Pulls through a pull-through mirror: Debian's docker-registry in proxy mode in front
of the upstream registry (LOCALAI_ADMIN_REGISTRY_MIRRORS), falling back to upstream.

Three real agents install the same image through one mirror (distributed mode: the
PostgreSQL pass runs it); the fallbacks are shown by single-host installs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends.models import Gallery, Job
from tests.base import PipelineTestCase
from tests.cluster import Cluster, wait_for
from tests.imagebuild import DOCKER_LAYER, Blob, PushedImage, file, make_layer
from tests.parts import missing_part
from tests.registry_fixtures import (
    REGISTRY_BINARY,
    RegistryProcess,
    _free_port,
    _wait_for_http,
)
from tests.test_hardware import linux_host

pytestmark = pytest.mark.registry


def start_registry(
    workdir: Path, *, upstream: str = "", access_log: bool = False
) -> RegistryProcess:
    """A docker-registry of the test's own (stoppable), with its access log on to count
    what it served, or configured as a pull-through cache of ``upstream``."""
    if shutil.which(REGISTRY_BINARY) is None:
        missing_part("Debian's docker-registry is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = workdir / "config.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "log": {"level": "error", "accesslog": {"disabled": not access_log}},
                "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}},
                "http": {"addr": f"127.0.0.1:{port}", "secret": "localai-admin-tests"},
                **({"proxy": {"remoteurl": upstream}} if upstream else {}),
            }
        )
    )
    log = workdir / "registry.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_http(f"{url}/v2/", process, log)
    except BaseException:
        process.kill()
        raise
    return RegistryProcess(url, f"127.0.0.1:{port}", workdir / "storage", process)


def served_blobs(registry: RegistryProcess) -> Counter[str]:
    """Blob GETs the registry answered with 200, by path, from its access log."""
    log = (registry.storage.parent / "registry.log").read_text()
    return Counter(
        re.findall(r'"GET (/v2/[^ ]*/blobs/sha256:[0-9a-f]{64}) [^"]*" 200', log)
    )


@dataclass
class Mirrored:
    """An upstream registry holding ``image`` (two layers, Docker media types: see
    docs/mirror.md) and a mirror in front of it, both with their access logs on."""

    upstream: RegistryProcess
    mirror: RegistryProcess
    image: PushedImage
    layers: list[Blob]

    @property
    def blobs(self) -> list[str]:
        """What an install fetches by digest: the layers (not the config)."""
        return [layer.digest for layer in self.layers]

    def blob_path(self, digest: str) -> str:
        return f"/v2/{self.image.repository}/blobs/{digest}"

    def wait_until_cached(self) -> None:
        """docker-registry 2.8 stores a blob in the background while it serves it: wait
        until each is committed and linked into the repository, where a later pull
        finds it."""
        for digest in self.blobs:
            link = (
                self.mirror.storage
                / "docker/registry/v2/repositories"
                / self.image.repository
                / "_layers/sha256"
                / digest.removeprefix("sha256:")
                / "link"
            )
            wait_for(link.exists, timeout=10)


@pytest.fixture
def mirrored(tmp_path: Path) -> Iterator[Mirrored]:
    upstream = start_registry(tmp_path / "upstream", access_log=True)
    mirror = start_registry(tmp_path / "mirror", upstream=upstream.url, access_log=True)
    try:
        # docker-registry 2.8 in proxy mode asks its upstream for Docker media types
        # only: an OCI manifest fails there and the client falls back (docs/mirror.md).
        layers = [
            make_layer(
                [file("run.sh", "#!/bin/sh\necho mirrored\n", 0o755)],
                media_type=DOCKER_LAYER,
            ),
            make_layer([file("lib.so", "x")], media_type=DOCKER_LAYER),
        ]
        image = upstream.push_image("backends/mirrored", "v1", layers, docker=True)
        yield Mirrored(upstream, mirror, image, layers)
    finally:
        mirror.stop()
        upstream.stop()


def install_on(client: Any, cluster: Cluster, node: str) -> Job:
    """Install cpu-mirrored on one node; the finished job."""
    response = client.post(
        f"/api/nodes/{node}/backends/install",
        {"backend": "cpu-mirrored"},
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    job: Job = wait_for(
        lambda: Job.objects.filter(
            pk=job_id, state__in=("completed", "failed")
        ).first(),
        cluster.log(node),
    )
    return job


@pytest.mark.distributed
def test_three_agents_install_through_the_mirror_and_only_the_first_pull_reaches_upstream(
    cluster: Cluster, mirrored: Mirrored, settings: Any, admin_client: Any
) -> None:
    mirrors = {mirrored.upstream.host: mirrored.mirror.url}
    settings.LOCALAI_ADMIN_REGISTRY_MIRRORS = mirrors
    cluster.env["LOCALAI_ADMIN_REGISTRY_MIRRORS"] = json.dumps(mirrors)
    gallery = Gallery.objects.create(name="localai", url="file:///dev/null")
    gallery.entries.create(
        name="cpu-mirrored", uri=mirrored.image.ref(mirrored.upstream.host)
    )
    folders = {
        node: cluster.start(node, linux_host) for node in ("node-a", "node-b", "node-c")
    }
    upstream_after: list[Counter[str]] = []
    # One agent after the other: a pull that arrives while the mirror is still storing
    # a blob is served by one more upstream fetch (docs/mirror.md).
    for node, backends in folders.items():
        job = install_on(admin_client, cluster, node)
        assert job.state == "completed", (job.message, job.error)
        assert "mirrored" in (backends / "cpu-mirrored" / "run.sh").read_text()
        assert (
            f"mirror {mirrored.mirror.url} failed" not in cluster.log(node).read_text()
        )
        mirrored.wait_until_cached()
        upstream_after.append(served_blobs(mirrored.upstream))
    paths = [mirrored.blob_path(digest) for digest in mirrored.blobs]
    # docker-registry 2.8.2 fetches a blob it lacks twice (a copy for the client, one
    # for its cache: proxyblobstore.go's ServeBlob); every later pull is from its disk.
    assert upstream_after[0] == Counter(dict.fromkeys(paths, 2))
    assert upstream_after[1] == upstream_after[2] == upstream_after[0]
    # Every agent's pull went through the mirror.
    assert served_blobs(mirrored.mirror) == Counter(dict.fromkeys(paths, 3))


class MirrorTestCase(PipelineTestCase):
    """One host's fallbacks to the upstream registry."""

    @pytest.fixture(autouse=True)
    def _mirror(self, mirrored: Mirrored, tmp_path: Path, settings: Any) -> None:
        self.upstream, self.mirror = mirrored.upstream, mirrored.mirror
        self.layer_path = mirrored.blob_path(mirrored.blobs[0])
        self.tmp = tmp_path
        self.settings_fixture = settings

    def use_mirror(self, url: str) -> None:
        self.settings_fixture.LOCALAI_ADMIN_REGISTRY_MIRRORS = {self.upstream.host: url}
        self.gallery_file.write_text(
            "- name: cpu-mirrored\n"
            f"  uri: {self.upstream.ref('backends/mirrored', 'v1')}\n"
        )
        self.gallery.sync(force=True)

    def install_in(self, folder: str) -> None:
        backends = self.tmp / folder
        backends.mkdir()
        with self.settings(LOCALAI_BACKENDS_PATH=backends):
            status = self.status(self.apply("cpu-mirrored", force=True))
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("mirrored", (backends / "cpu-mirrored" / "run.sh").read_text())

    def test_a_dead_mirror_falls_back_to_the_upstream_registry(self) -> None:
        self.mirror.stop()
        self.use_mirror(self.mirror.url)
        with self.assertLogs("backends.core.oci.client", "WARNING") as logs:
            self.install_in("host-a")
        self.assertIn(f"mirror {self.mirror.url} failed", logs.output[0])
        self.assertEqual(served_blobs(self.upstream)[self.layer_path], 1)

    def test_a_mirror_the_source_policy_refuses_is_skipped_for_upstream(
        self,
    ) -> None:
        self.settings_fixture.LOCALAI_ADMIN_PRIVATE_HOSTS = [self.upstream.host]
        self.use_mirror(self.mirror.url)
        with self.assertLogs("backends.core.oci.client", "WARNING") as logs:
            self.install_in("host-a")
        self.assertIn("LOCALAI_ADMIN_PRIVATE_HOSTS", logs.output[0])
        self.assertEqual(served_blobs(self.mirror), {})
        self.assertEqual(served_blobs(self.upstream)[self.layer_path], 1)
