"""Pulls through a pull-through mirror: Debian's docker-registry in proxy mode in front
of the upstream registry (LOCALAI_ADMIN_REGISTRY_MIRRORS), falling back to upstream."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.base import PipelineTestCase
from tests.imagebuild import DOCKER_LAYER, file, make_layer
from tests.parts import missing_part
from tests.registry_fixtures import (
    REGISTRY_BINARY,
    RegistryProcess,
    _free_port,
    _wait_for_http,
)

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


class MirrorTestCase(PipelineTestCase):
    @pytest.fixture(autouse=True)
    def _mirror(self, tmp_path: Path, settings: Any) -> Iterator[None]:
        self.upstream = start_registry(tmp_path / "upstream", access_log=True)
        self.mirror = start_registry(tmp_path / "mirror", upstream=self.upstream.url)
        # docker-registry 2.8 in proxy mode asks its upstream for Docker media types
        # only: an OCI manifest fails there and the client falls back (docs/mirror.md).
        self.layer = make_layer(
            [file("run.sh", "#!/bin/sh\necho mirrored\n", 0o755), file("lib.so", "x")],
            media_type=DOCKER_LAYER,
        )
        self.upstream.push_image("backends/mirrored", "v1", [self.layer], docker=True)
        self.tmp = tmp_path
        self.settings_fixture = settings
        yield
        self.mirror.stop()
        self.upstream.stop()

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

    @property
    def layer_path(self) -> str:
        return f"/v2/backends/mirrored/blobs/{self.layer.digest}"

    def test_three_installs_through_the_mirror_fetch_each_blob_once_upstream(
        self,
    ) -> None:
        self.use_mirror(self.mirror.url)
        with self.assertNoLogs("backends.core.oci.client", "WARNING"):
            self.install_in("host-a")
            first = served_blobs(self.upstream)
            self.wait_until_cached(self.layer.digest)
            self.install_in("host-b")
            self.install_in("host-c")
        # docker-registry 2.8 fetches a blob it lacks twice on its first pull (one copy
        # for the client, one for its cache, concurrently); after that, never again.
        self.assertIn(first[self.layer_path], (1, 2), first)
        self.assertEqual(served_blobs(self.upstream), first)

    def wait_until_cached(self, digest: str) -> None:
        hex_digest = digest.removeprefix("sha256:")
        data = (
            self.mirror.storage
            / f"docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"
        )
        deadline = time.monotonic() + 10
        while not data.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

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
