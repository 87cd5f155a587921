"""Installs, upgrades and failures against a real OCI registry (Debian's docker-registry)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pytest

from backends.core import oci
from backends.models import InstalledBackend
from tests.base import PipelineTestCase
from tests.imagebuild import file, make_layer
from tests.registry_fixtures import FaultProxy, RegistryProcess

pytestmark = pytest.mark.registry


@dataclass
class Images:
    v1: str
    v1_digest: str
    multi: str
    big: str
    big_layer: str


def run_sh(text: str) -> Any:
    return file("run.sh", f"#!/bin/sh\necho {text}\n", 0o755)


@pytest.fixture(scope="session")
def images(registry: RegistryProcess) -> Images:
    """Test images, built and pushed once per session."""
    v1 = registry.push_image(
        "backends/foo", "v1", [make_layer([run_sh("v1"), file("lib/libfoo.so", "foo")])]
    )
    host = oci.Platform.host()
    other = "linux/arm64" if host.architecture != "arm64" else "linux/amd64"
    mine = registry.push_image(
        "backends/multi",
        "host",
        [make_layer([run_sh("host")])],
        platform=f"linux/{host.architecture}",
    )
    theirs = registry.push_image(
        "backends/multi", "other", [make_layer([run_sh("other")])], platform=other
    )
    registry.push_index(
        "backends/multi",
        "latest",
        [(mine, f"linux/{host.architecture}"), (theirs, other)],
    )
    big_layer = make_layer([run_sh("big"), file("blob.bin", os.urandom(1 << 20))])
    registry.push_image("backends/big", "v1", [big_layer])
    return Images(
        v1=registry.ref("backends/foo", "v1"),
        v1_digest=v1.digest,
        multi=registry.ref("backends/multi", "latest"),
        big=registry.ref("backends/big", "v1"),
        big_layer=big_layer.digest,
    )


class RegistryInstallTestCase(PipelineTestCase):
    @pytest.fixture(autouse=True)
    def _registry(
        self, registry: RegistryProcess, images: Images, fault_proxy: FaultProxy
    ) -> None:
        self.registry, self.images, self.proxy = registry, images, fault_proxy

    def use_gallery(self, **uris: str) -> None:
        lines = "".join(f"- name: {name}\n  uri: {uri}\n" for name, uri in uris.items())
        self.gallery_file.write_text(lines)
        self.gallery.sync(force=True)

    def via_proxy(self, ref: str) -> str:
        return ref.replace(self.registry.host, self.proxy.host)

    def test_it_pulls_extracts_and_records_the_pulled_digest(self) -> None:
        self.use_gallery(**{"cpu-foo": self.images.v1})
        status = self.status(self.apply("cpu-foo"))
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("v1", (self.backends / "cpu-foo" / "run.sh").read_text())
        self.assertEqual(
            (self.backends / "cpu-foo" / "lib" / "libfoo.so").read_text(), "foo"
        )
        metadata = json.loads((self.backends / "cpu-foo" / "metadata.json").read_text())
        self.assertEqual(metadata["digest"], self.images.v1_digest)
        self.assertEqual(metadata["uri"], self.images.v1)
        self.assertGreater(status["total_bytes"], 0)
        self.assertEqual(
            InstalledBackend.objects.get(name="cpu-foo").digest, self.images.v1_digest
        )

    def test_a_multi_platform_image_gives_this_hosts_build(self) -> None:
        self.use_gallery(**{"cpu-multi": self.images.multi})
        self.assertEqual(self.status(self.apply("cpu-multi"))["state"], "completed")
        self.assertIn("host", (self.backends / "cpu-multi" / "run.sh").read_text())

    def test_a_server_error_is_retried(self) -> None:
        self.use_gallery(**{"cpu-foo": self.via_proxy(self.images.v1)})
        self.proxy.fail_next(2, 500)
        self.assertEqual(self.status(self.apply("cpu-foo"))["state"], "completed")

    def test_a_cut_download_resumes_with_a_range_request(self) -> None:
        self.use_gallery(**{"cpu-big": self.via_proxy(self.images.big)})
        self.proxy.cut_blob_once(self.images.big_layer, 100_000)
        status = self.status(self.apply("cpu-big"))
        self.assertEqual(status["state"], "completed", status)
        ranged = [
            r
            for r in self.proxy.requests_for(self.images.big_layer)
            if "range" in {k.lower() for k in r.headers}
        ]
        self.assertTrue(ranged)

    # LocalAI deletes the working install when a forced reinstall fails (backends 9).
    def test_a_corrupt_layer_fails_the_reinstall_and_keeps_the_previous_one(
        self,
    ) -> None:
        self.use_gallery(**{"cpu-big": self.images.big})
        self.status(self.apply("cpu-big"))
        self.use_gallery(**{"cpu-big": self.via_proxy(self.images.big)})
        self.proxy.corrupt_blob(self.images.big_layer)
        status = self.status(self.apply("cpu-big", force=True))
        self.assertEqual(status["state"], "failed")
        self.assertIn("digest", status["error"])
        self.assertIn("big", (self.backends / "cpu-big" / "run.sh").read_text())
        self.assertEqual([p.name for p in self.backends.iterdir()], ["cpu-big"])

    def test_a_missing_tag_falls_back_to_the_mirror(self) -> None:
        missing = self.registry.ref("backends/foo", "nope")
        self.gallery_file.write_text(
            f"- name: cpu-foo\n  uri: {missing}\n  mirrors: [{self.images.v1}]\n"
        )
        self.gallery.sync(force=True)
        status = self.status(self.apply("cpu-foo"))
        self.assertEqual(status["state"], "completed", status)

    def test_a_missing_image_fails_with_a_clear_error(self) -> None:
        self.use_gallery(**{"cpu-foo": self.registry.ref("backends/nothing", "v1")})
        status = self.status(self.apply("cpu-foo"))
        self.assertEqual(status["state"], "failed")
        self.assertIn("backends/nothing", status["error"])
        self.assertEqual(list(self.backends.iterdir()), [])

    def test_a_new_digest_is_detected_and_upgraded(self) -> None:
        self.registry.push_image(
            "backends/moving", "latest", [make_layer([run_sh("one")])]
        )
        self.use_gallery(
            **{"cpu-moving": self.registry.ref("backends/moving", "latest")}
        )
        self.status(self.apply("cpu-moving"))
        with self.captureOnCommitCallbacks(execute=True):
            self.api_post("/backends/upgrades/check")
        self.assertEqual(self.api_get("/backends/upgrades").json(), {})

        pushed = self.registry.push_image(
            "backends/moving", "latest", [make_layer([run_sh("two")])]
        )
        self.api_post("/backends/upgrades/check")
        info = self.api_get("/backends/upgrades").json()["cpu-moving"]
        self.assertEqual(info["available_digest"], pushed.digest)
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post("/backends/upgrade/cpu-moving")
        self.assertEqual(self.status(r)["state"], "completed")
        self.assertIn("two", (self.backends / "cpu-moving" / "run.sh").read_text())
        metadata = json.loads(
            (self.backends / "cpu-moving" / "metadata.json").read_text()
        )
        self.assertEqual(metadata["digest"], pushed.digest)


class RegistrySecurityTestCase(PipelineTestCase):
    @pytest.fixture(autouse=True)
    def _registry(self, registry: RegistryProcess, token_registry: Any) -> None:
        self.registry, self.token_registry = registry, token_registry

    def test_a_tar_slip_image_fails_naming_the_entry_and_writes_nothing_outside(
        self,
    ) -> None:
        from tests.imagebuild import file as entry

        layer = make_layer([run_sh("evil"), entry("../../outside.txt", "pwned")])
        self.registry.push_image("backends/evil", "v1", [layer])
        self.gallery_file.write_text(
            f"- name: cpu-evil\n  uri: {self.registry.ref('backends/evil', 'v1')}\n"
        )
        self.gallery.sync(force=True)
        before = sorted(p.name for p in self.backends.parent.rglob("*"))
        status = self.status(self.apply("cpu-evil"))
        self.assertEqual(status["state"], "failed")
        self.assertIn("outside.txt", status["error"])
        after = sorted(p.name for p in self.backends.parent.rglob("*"))
        self.assertEqual(before, after)

    def test_a_private_image_installs_with_configured_credentials(self) -> None:
        self.registry.push_image("private/foo", "v1", [make_layer([run_sh("private")])])
        ref = self.token_registry.ref("private/foo", "v1")
        self.gallery_file.write_text(f"- name: cpu-private\n  uri: {ref}\n")
        self.gallery.sync(force=True)
        status = self.status(self.apply("cpu-private"))
        self.assertEqual(status["state"], "failed")
        self.assertIn("private/foo", status["error"])

        credentials = {
            self.token_registry.host: {"username": "alice", "password": "wonderland"}
        }
        with self.settings(LOCALAI_ADMIN_REGISTRY_CREDENTIALS=credentials):
            status = self.status(self.apply("cpu-private"))
        self.assertEqual(status["state"], "completed", status)
        self.assertIn("private", (self.backends / "cpu-private" / "run.sh").read_text())


class DiskSpaceTestCase(PipelineTestCase):
    def test_an_image_larger_than_the_free_space_is_refused_before_download(
        self,
    ) -> None:
        from backends.core.limits import Budget, LimitExceeded, Limits

        with self.assertRaisesMessage(LimitExceeded, "not enough disk space"):
            Budget(Limits(), self.backends).check_disk(1 << 60)
