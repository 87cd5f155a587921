"""Offline kits: export_backends writes an OCI image layout of gallery backends, and
import_backends installs from it on a host whose registry is out of reach."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from backends.core.policy import SourcePolicy, SourceRefused
from backends.models import Gallery, InstalledBackend
from tests.base import BaseTestCase
from tests.gallerysize import GallerySizeMixin
from tests.imagebuild import file, make_layer
from tests.test_registry_mirror import start_registry

pytestmark = pytest.mark.registry


def kit_members(kit: Path) -> dict[str, bytes]:
    with tarfile.open(kit) as tar:
        return {
            member.name: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in tar
            if member.isfile()
        }


def rewrite_kit(kit: Path, change: Any) -> None:
    """Rebuild the kit with ``change(members)`` applied (a tampered copy)."""
    members = kit_members(kit)
    change(members)
    with tarfile.open(kit, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class OfflineKitTestCase(GallerySizeMixin, BaseTestCase):
    @pytest.fixture(autouse=True)
    def _registry(self, tmp_path: Path, settings: Any) -> Iterator[None]:
        self.tmp = tmp_path
        self.settings_fixture = settings
        self.registry = start_registry(tmp_path / "registry")
        cpu = self.registry.push_image(
            "backends/kitfoo",
            "cpu",
            [make_layer([file("run.sh", "#!/bin/sh\necho cpu-kit\n", 0o755)])],
        )
        self.registry.push_image(
            "backends/kitfoo",
            "cuda",
            [make_layer([file("run.sh", "#!/bin/sh\necho cuda-kit\n", 0o755)])],
        )
        # A signature stored under the referrers tag schema of the CPU image.
        self.signature = make_layer([file("sig", "signed")])
        signature = self.registry.push_image("backends/kitfoo", "sig", [self.signature])
        self.registry.push_index(
            "backends/kitfoo",
            cpu.digest.replace(":", "-"),
            [(signature, "linux/amd64")],
        )
        self.cpu_digest = cpu.digest
        self.kit = tmp_path / "kit.tar"
        yield
        self.registry.stop()

    def setUp(self) -> None:
        super().setUp()
        self.gallery_file.write_text(
            "- name: kitfoo\n  capabilities:\n"
            "    default: cpu-kitfoo\n    nvidia: cuda-kitfoo\n"
            f"- name: cpu-kitfoo\n  uri: {self.registry.ref('backends/kitfoo', 'cpu')}\n"
            f"- name: cuda-kitfoo\n  uri: {self.registry.ref('backends/kitfoo', 'cuda')}\n"
            "- name: cpu-folder\n  uri: /nowhere\n"
        )
        self.gallery.sync(force=True)

    def export(self, *names: str, **options: Any) -> None:
        call_command("export_backends", *names, output=str(self.kit), **options)

    def move_to_another_host(self) -> Path:
        """The registry stopped, no gallery, an empty backends folder."""
        self.registry.stop()
        Gallery.objects.all().delete()
        backends = self.tmp / "other-host" / "backends"
        backends.mkdir(parents=True)
        self.settings_fixture.LOCALAI_BACKENDS_PATH = backends
        return backends

    def test_a_kit_is_an_oci_layout_with_every_build_of_a_meta_and_its_referrers(
        self,
    ) -> None:
        self.export("kitfoo")
        members = kit_members(self.kit)
        self.assertEqual(
            json.loads(members["oci-layout"]), {"imageLayoutVersion": "1.0.0"}
        )
        index = json.loads(members["index.json"])
        names = [
            m["annotations"]["org.opencontainers.image.ref.name"]
            for m in index["manifests"]
        ]
        self.assertIn("cpu-kitfoo", names)
        self.assertIn("cuda-kitfoo", names)
        self.assertIn(self.cpu_digest.replace(":", "-"), names)
        self.assertIn(
            f"blobs/sha256/{self.signature.digest.removeprefix('sha256:')}", members
        )
        self.assertIn(
            f"uri: oci-layout:.@{self.cpu_digest}", members["gallery.yaml"].decode()
        )

    def test_capability_exports_only_the_build_it_resolves_to(self) -> None:
        self.export("kitfoo", capability="default")
        names = [
            m["annotations"]["org.opencontainers.image.ref.name"]
            for m in json.loads(kit_members(self.kit)["index.json"])["manifests"]
        ]
        self.assertIn("cpu-kitfoo", names)
        self.assertNotIn("cuda-kitfoo", names)

    def test_exporting_a_meta_for_a_capability_reads_the_same_rows_in_a_larger_gallery(
        self,
    ) -> None:
        self.assert_cost_does_not_grow(
            lambda: self.export("kitfoo", capability="default"), self.kit.unlink
        )

    def test_a_kit_holds_images_only(self) -> None:
        with self.assertRaisesMessage(CommandError, "a kit holds images only"):
            self.export("cpu-folder")
        self.assertFalse(self.kit.exists())

    def test_import_installs_the_kit_with_the_registry_stopped(self) -> None:
        self.export("kitfoo")
        backends = self.move_to_another_host()
        call_command("import_backends", str(self.kit))
        self.assertIn("cpu-kit", (backends / "cpu-kitfoo" / "run.sh").read_text())
        metadata = json.loads((backends / "cpu-kitfoo" / "metadata.json").read_text())
        self.assertEqual(metadata["digest"], self.cpu_digest)
        self.assertTrue(metadata["uri"].startswith("oci-layout:"))
        self.assertTrue(InstalledBackend.objects.filter(name="kitfoo").exists())
        kit_root = Path(settings.LOCALAI_ADMIN_LOCAL_ROOTS[0]) / "kits"
        self.assertTrue(
            Path(
                metadata["uri"][len("oci-layout:") :].rpartition("@")[0]
            ).is_relative_to(kit_root)
        )

    def test_a_blob_that_does_not_match_its_digest_refuses_the_kit(self) -> None:
        self.export("kitfoo")

        def tamper(members: dict[str, bytes]) -> None:
            name = f"blobs/sha256/{self.signature.digest.removeprefix('sha256:')}"
            data = members[name]
            members[name] = data[:-1] + bytes([data[-1] ^ 0xFF])

        rewrite_kit(self.kit, tamper)
        backends = self.move_to_another_host()
        with self.assertRaisesMessage(CommandError, "does not match its digest"):
            call_command("import_backends", str(self.kit))
        self.assertEqual(list(backends.iterdir()), [])
        self.assertFalse(Gallery.objects.exists())

    def test_a_kit_with_other_members_is_refused(self) -> None:
        self.export("kitfoo")
        rewrite_kit(self.kit, lambda members: members.update({"../evil": b"x"}))
        self.move_to_another_host()
        with self.assertRaisesMessage(CommandError, "unexpected member '../evil'"):
            call_command("import_backends", str(self.kit))

    def test_a_kit_missing_a_blob_is_refused(self) -> None:
        self.export("kitfoo")
        rewrite_kit(
            self.kit,
            lambda members: members.pop(
                f"blobs/sha256/{self.signature.digest.removeprefix('sha256:')}"
            ),
        )
        self.move_to_another_host()
        with self.assertRaisesMessage(CommandError, "is missing from the kit"):
            call_command("import_backends", str(self.kit))


def test_a_gallery_read_over_the_network_may_not_name_a_kit_folder(
    tmp_path: Path,
) -> None:
    policy = SourcePolicy.parse([], [tmp_path])
    with pytest.raises(SourceRefused, match="local source"):
        policy.check_gallery_entry(
            "https://example.com/gallery.yaml",
            [f"oci-layout:{tmp_path}@sha256:{'0' * 64}"],
        )
