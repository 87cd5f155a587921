from __future__ import annotations

import json
import os
import platform
import socket
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backends.core.extract import UnsafeArchiveError
from backends.core.oci import (
    AuthenticationError,
    Cancelled,
    Credentials,
    Descriptor,
    DigestMismatchError,
    InvalidReferenceError,
    NotFoundError,
    OCIError,
    Platform,
    PlatformNotFoundError,
    Progress,
    Reference,
    RegistryClient,
    RegistryError,
    UnsupportedMediaTypeError,
    pull_image,
)
from tests.imagebuild import (
    Blob,
    Content,
    PushedImage,
    file,
    make_layer,
    opaque,
    whiteout,
)
from tests.registry_fixtures import FaultProxy, RegistryProcess, TokenRegistry

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")


@pytest.fixture(autouse=True)
def isolated_host() -> None:
    """The OCI client needs no Django: replaces conftest's settings-based fixture."""


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(retries=3, backoff=0.01, timeout=10) as registry_client:
        yield registry_client


# --- references and platforms (no registry needed) -----------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp",
            ("quay.io", "go-skynet/local-ai-backends", "latest-cpu-llama-cpp", None),
        ),
        ("oci://ghcr.io/owner/repo:v1.2", ("ghcr.io", "owner/repo", "v1.2", None)),
        ("127.0.0.1:5000/repo:tag", ("127.0.0.1:5000", "repo", "tag", None)),
        ("localhost:5000/a/b/c", ("localhost:5000", "a/b/c", "latest", None)),
        ("localhost/repo", ("localhost", "repo", "latest", None)),
        ("[::1]:5000/repo:t", ("[::1]:5000", "repo", "t", None)),
        (
            "localai/localai-backends:master-cpu-whisper",
            (
                "registry-1.docker.io",
                "localai/localai-backends",
                "master-cpu-whisper",
                None,
            ),
        ),
        ("ubuntu", ("registry-1.docker.io", "library/ubuntu", "latest", None)),
        (
            "docker.io/ubuntu:24.04",
            ("registry-1.docker.io", "library/ubuntu", "24.04", None),
        ),
        (
            "repo@sha256:" + "a" * 64,
            ("registry-1.docker.io", "library/repo", None, "sha256:" + "a" * 64),
        ),
        ("host.io/r:t@sha256:" + "b" * 64, ("host.io", "r", "t", "sha256:" + "b" * 64)),
    ],
)
def test_it_parses_references(
    text: str, expected: tuple[str, str, str | None, str | None]
) -> None:
    ref = Reference.parse(text)

    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


def test_a_reference_prints_canonically_and_uses_the_digest_when_pinned() -> None:
    pinned = Reference.parse("quay.io/a/b:t@sha256:" + "c" * 64)

    assert (
        str(Reference.parse("ubuntu")) == "registry-1.docker.io/library/ubuntu:latest"
    )
    assert pinned.reference == "sha256:" + "c" * 64


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Quay.io/UPPER/case:t",
        "host/repo:bad tag",
        "repo@sha256:short",
        "host/repo:",
        "a//b",
        "repo@md5:" + "a" * 32,
    ],
)
def test_it_rejects_invalid_references(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="image reference"):
        Reference.parse(text)


def test_it_uses_plain_http_only_for_loopback_and_listed_insecure_registries() -> None:
    with RegistryClient(
        insecure=["registry.lan:5000", "plain.example"]
    ) as registry_client:
        urls = [
            registry_client.base_url(host)
            for host in (
                "localhost:5000",
                "127.0.0.2",
                "[::1]:80",
                "registry.lan:5000",
                "plain.example:81",
                "quay.io",
            )
        ]

    assert urls == [
        "http://localhost:5000",
        "http://127.0.0.2",
        "http://[::1]:80",
        "http://registry.lan:5000",
        "http://plain.example:81",
        "https://quay.io",
    ]


@pytest.mark.parametrize(
    "machine, expected",
    [
        ("x86_64", ("amd64", None)),
        ("aarch64", ("arm64", None)),
        ("armv7l", ("arm", "v7")),
        ("AMD64", ("amd64", None)),
    ],
)
def test_host_platform_uses_go_names(
    monkeypatch: pytest.MonkeyPatch, machine: str, expected: tuple[str, str | None]
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(sys, "platform", "linux")

    host = Platform.host()

    assert (host.os, host.architecture, host.variant) == (
        "linux",
        *expected,
    )


# --- images pushed once for the module ---------------------------------------------


@dataclass
class Images:
    simple: PushedImage
    docker: PushedImage
    zstd: PushedImage
    layered: PushedImage
    multi: PushedImage
    multi_arm64: PushedImage
    multi_v8: PushedImage
    big: PushedImage
    two_layers: PushedImage
    hostile: PushedImage


@pytest.fixture(scope="module")
def images(registry: RegistryProcess) -> Images:
    run_sh: Content = ('#!/bin/sh\nexec ./server "$@"\n', 0o755)
    simple_layer = make_layer(
        {"run.sh": run_sh, "lib/libbackend.so": b"\x7fELF" + b"\0" * 2000}
    )
    arm64 = registry.push_image(
        "ocitest/multi",
        "arm64-only",
        [make_layer({"run.sh": run_sh, "arch": "arm64"})],
        platform="linux/arm64",
    )
    amd64 = registry.push_image(
        "ocitest/multi",
        "amd64-only",
        [make_layer({"run.sh": run_sh, "arch": "amd64"})],
    )
    return Images(
        simple=registry.push_image("ocitest/simple", "latest-cpu", [simple_layer]),
        docker=registry.push_image(
            "ocitest/docker",
            "v2",
            [
                make_layer(
                    {"run.sh": run_sh},
                    "gzip",
                    media_type="application/vnd.docker.image.rootfs.diff.tar.gzip",
                )
            ],
            docker=True,
        ),
        zstd=registry.push_image(
            "ocitest/zstd",
            "v1",
            [make_layer({"run.sh": run_sh, "data": "z" * 10000}, "zstd")],
        ),
        layered=registry.push_image(
            "ocitest/layered",
            "v1",
            [
                make_layer(
                    {
                        "run.sh": run_sh,
                        "lib/removed.so": "old",
                        "lib/libcublas.so.12": "old library",
                        "plugins/a": "a",
                        "plugins/b": "b",
                    }
                ),
                make_layer(
                    [
                        whiteout("lib/removed.so"),
                        file("lib/libcublas.so.12", "new library"),
                        opaque("plugins"),
                    ]
                ),
                make_layer({"plugins/c": "c"}, "none"),
            ],
        ),
        multi=registry.push_index(
            "ocitest/multi", "latest", [(amd64, "linux/amd64"), (arm64, "linux/arm64")]
        ),
        multi_arm64=arm64,
        multi_v8=registry.push_index(
            "ocitest/multi", "v8", [(arm64, "linux/arm64/v8"), (amd64, "linux/amd64")]
        ),
        big=registry.push_image(
            "ocitest/big",
            "v1",
            [make_layer({"run.sh": run_sh, "blob.bin": os.urandom(3_000_000)})],
        ),
        two_layers=registry.push_image(
            "ocitest/two",
            "v1",
            [
                make_layer({"stale.txt": "from the first layer"}),
                make_layer({"run.sh": run_sh}),
            ],
        ),
        hostile=registry.push_image(
            "ocitest/hostile", "v1", [make_layer([file("../escaped", "x")])]
        ),
    )


# --- pulling -------------------------------------------------------------------------------


@pytest.mark.registry
def test_it_pulls_a_single_layer_image(
    registry: RegistryProcess, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    events: list[Progress] = []

    pulled = pull_image(
        images.simple.ref(registry.host),
        tmp_path,
        client=client,
        platform=AMD64,
        progress=events.append,
    )

    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o755
    assert (tmp_path / "lib/libbackend.so").read_bytes().startswith(b"\x7fELF")
    assert pulled.digest == pulled.manifest_digest == images.simple.digest
    size = images.simple.layers[0].size
    assert [layer.digest for layer in pulled.layers] == [images.simple.layers[0].digest]
    assert events[-1] == Progress("extracting", events[-1].label, size, size)
    assert events[-1].label == f"layer 1/1 {images.simple.layers[0].digest[:19]}"


@pytest.mark.registry
@pytest.mark.parametrize("name", ["docker", "zstd"])
def test_it_pulls_docker_media_types_and_zstd_layers(
    registry: RegistryProcess,
    images: Images,
    client: RegistryClient,
    tmp_path: Path,
    name: str,
) -> None:
    image = getattr(images, name)

    pull_image(image.ref(registry.host), tmp_path, client=client, platform=AMD64)

    assert os.access(tmp_path / "run.sh", os.X_OK)


@pytest.mark.registry
def test_it_applies_layers_in_order_with_whiteouts(
    registry: RegistryProcess, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    events: list[Progress] = []

    pulled = pull_image(
        images.layered.ref(registry.host),
        tmp_path,
        client=client,
        platform=AMD64,
        progress=events.append,
    )

    assert not (tmp_path / "lib/removed.so").exists()
    assert (tmp_path / "lib/libcublas.so.12").read_text() == "new library"
    assert sorted(p.name for p in (tmp_path / "plugins").iterdir()) == ["c"]
    assert len(pulled.layers) == 3
    currents = [event.current_bytes for event in events]
    assert currents == sorted(currents)  # accumulated over layers, never restarting
    assert {event.total_bytes for event in events} == {
        sum(layer.size for layer in images.layered.layers)
    }
    assert [e.label[:9] for e in events if e.phase == "extracting"] == [
        "layer 1/3",
        "layer 2/3",
        "layer 3/3",
    ]


@pytest.mark.registry
def test_it_picks_the_requested_platform_from_an_index(
    registry: RegistryProcess, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    ref = images.multi.ref(registry.host)

    pulled = pull_image(ref, tmp_path / "arm", client=client, platform=ARM64)
    pull_image(ref, tmp_path / "amd", client=client, platform=AMD64)

    assert (tmp_path / "arm/arch").read_text() == "arm64"
    assert (tmp_path / "amd/arch").read_text() == "amd64"
    assert pulled.digest == images.multi.digest
    assert pulled.manifest_digest == images.multi_arm64.digest
    assert client.head_digest(ref) == images.multi.digest


@pytest.mark.registry
def test_arm64_matches_an_index_entry_with_variant_v8(
    registry: RegistryProcess, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    pull_image(
        images.multi_v8.ref(registry.host), tmp_path, client=client, platform=ARM64
    )

    assert (tmp_path / "arch").read_text() == "arm64"


@pytest.mark.registry
def test_a_missing_platform_is_a_clear_error(
    registry: RegistryProcess, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    ref = images.multi.ref(registry.host)

    with pytest.raises(PlatformNotFoundError) as caught:
        pull_image(ref, tmp_path, client=client, platform=Platform("linux", "s390x"))

    assert ref in str(caught.value)
    assert "linux/s390x" in str(caught.value)
    assert "linux/amd64, linux/arm64" in str(caught.value)


@pytest.mark.registry
def test_head_digest_is_the_pushed_manifest_digest(
    registry: RegistryProcess, images: Images, client: RegistryClient
) -> None:
    assert client.head_digest(images.simple.ref(registry.host)) == images.simple.digest
    assert (
        client.head_digest(
            f"oci://{registry.host}/ocitest/simple@{images.simple.digest}"
        )
        == images.simple.digest
    )


@pytest.mark.registry
def test_unknown_tags_and_repositories_are_clear_errors(
    registry: RegistryProcess, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    missing_tag = registry.ref("ocitest/simple", "no-such-tag")
    missing_repo = registry.ref("nobody/nothing", "latest")

    with pytest.raises(NotFoundError, match="manifest unknown") as caught:
        pull_image(missing_tag, tmp_path, client=client)
    assert missing_tag in str(caught.value)
    with pytest.raises(NotFoundError, match="nobody/nothing"):
        client.head_digest(missing_repo)


@pytest.mark.registry
def test_a_missing_blob_is_a_clear_error(
    registry: RegistryProcess, client: RegistryClient, tmp_path: Path
) -> None:
    files: dict[str, Content] = {"run.sh": "x", "unique": os.urandom(16)}
    layer = make_layer(files)
    image = registry.push_image("ocitest/deleted-blob", "v1", [layer])
    assert (
        httpx.delete(
            f"{registry.url}/v2/ocitest/deleted-blob/blobs/{layer.digest}"
        ).status_code
        == 202
    )

    with pytest.raises(NotFoundError, match="blob unknown") as caught:
        pull_image(image.ref(registry.host), tmp_path, client=client, platform=AMD64)

    assert layer.digest in str(caught.value)


@pytest.mark.registry
def test_non_image_artifacts_are_refused(
    registry: RegistryProcess, client: RegistryClient, tmp_path: Path
) -> None:
    chart = Blob("application/vnd.cncf.helm.chart.content.v1.tar+gzip", b"not a layer")
    image = registry.push_image("ocitest/artifact", "v1", [chart])

    with pytest.raises(UnsupportedMediaTypeError, match="helm"):
        pull_image(image.ref(registry.host), tmp_path, client=client, platform=AMD64)


@pytest.mark.registry
def test_a_hostile_layer_is_refused_with_the_reference(
    registry: RegistryProcess, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    ref = images.hostile.ref(registry.host)

    with pytest.raises(UnsafeArchiveError) as caught:
        pull_image(ref, tmp_path / "dest", client=client, platform=AMD64)

    assert ref in str(caught.value) and "'../escaped'" in str(caught.value)
    assert not (tmp_path / "escaped").exists()


# --- faults ------------------------------------------------------------------------------


@pytest.mark.registry
def test_it_retries_server_errors(
    fault_proxy: FaultProxy, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    fault_proxy.fail_next(2, 500, "/manifests/")
    fault_proxy.fail_next(1, 503, "/blobs/")

    pull_image(
        images.simple.ref(fault_proxy.host), tmp_path, client=client, platform=AMD64
    )

    assert (tmp_path / "run.sh").exists()
    assert len(fault_proxy.requests_for("/manifests/")) == 3
    assert len(fault_proxy.requests_for("/blobs/")) == 2


@pytest.mark.registry
def test_retries_are_bounded(
    fault_proxy: FaultProxy, images: Images, tmp_path: Path
) -> None:
    fault_proxy.fail_next(10, 502)

    with (
        RegistryClient(retries=2, backoff=0.001) as registry_client,
        pytest.raises(RegistryError, match="HTTP 502"),
    ):
        pull_image(
            images.simple.ref(fault_proxy.host),
            tmp_path,
            client=registry_client,
            platform=AMD64,
        )

    assert len(fault_proxy.requests) == 3


def test_an_unreachable_registry_fails_after_retries(tmp_path: Path) -> None:
    with RegistryClient(retries=1, backoff=0.001, timeout=2) as registry_client:
        port = _closed_port()
        with pytest.raises(RegistryError, match=f"127.0.0.1:{port}/ocitest/x:latest"):
            pull_image(f"127.0.0.1:{port}/ocitest/x", tmp_path, client=registry_client)


def test_a_registry_that_never_answers_times_out(tmp_path: Path) -> None:
    # A listening socket nobody accepts from: the connection opens, no answer comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        ref = f"127.0.0.1:{silent.getsockname()[1]}/ocitest/x:v1"
        with (
            RegistryClient(retries=1, backoff=0.001, timeout=0.2) as registry_client,
            pytest.raises(RegistryError, match="timed out"),
        ):
            registry_client.head_digest(ref)


@pytest.mark.registry
def test_a_cut_blob_download_resumes_with_range(
    fault_proxy: FaultProxy, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    layer = images.big.layers[0]
    cut = layer.size // 3
    fault_proxy.cut_blob_once(layer.digest, cut)

    events: list[Progress] = []

    pulled = pull_image(
        images.big.ref(fault_proxy.host),
        tmp_path,
        client=client,
        platform=AMD64,
        progress=events.append,
    )

    assert (tmp_path / "blob.bin").stat().st_size == 3_000_000
    assert [event.phase for event in events][-2:] == ["downloading", "extracting"]
    assert (
        events[-1].current_bytes == layer.size
    )  # the resumed part is not counted twice
    blob_requests = fault_proxy.requests_for(f"/blobs/{layer.digest}")
    assert [request.headers.get("Range") for request in blob_requests] == [
        None,
        f"bytes={cut}-",
    ]
    assert [layer.digest for layer in pulled.layers] == [layer.digest]


@pytest.mark.registry
def test_a_corrupt_blob_is_a_digest_mismatch(
    fault_proxy: FaultProxy, images: Images, client: RegistryClient, tmp_path: Path
) -> None:
    fault_proxy.corrupt_blob(images.big.layers[0].digest)
    ref = images.big.ref(fault_proxy.host)

    with pytest.raises(DigestMismatchError, match="digest mismatch") as caught:
        pull_image(ref, tmp_path, client=client, platform=AMD64)

    assert ref in str(caught.value)
    assert isinstance(caught.value, OCIError)


@pytest.mark.registry
def test_cancellation_stops_the_pull(
    images: Images, registry: RegistryProcess, client: RegistryClient, tmp_path: Path
) -> None:
    events: list[Progress] = []

    with pytest.raises(Cancelled):
        pull_image(
            images.big.ref(registry.host),
            tmp_path,
            client=client,
            platform=AMD64,
            progress=events.append,
            should_cancel=lambda: bool(events),
        )

    assert len(events) == 1
    with pytest.raises(Cancelled):
        pull_image(
            images.big.ref(registry.host),
            tmp_path,
            client=client,
            should_cancel=lambda: True,
        )


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.registry
def test_anonymous_bearer_tokens_are_fetched_once_per_repository(
    token_registry: TokenRegistry,
    registry: RegistryProcess,
    client: RegistryClient,
    tmp_path: Path,
) -> None:
    registry.push_image("public/ocitest", "v1", [make_layer({"run.sh": ("x", 0o755)})])
    ref = token_registry.ref("public/ocitest", "v1")
    before = len(token_registry.token_requests)

    pull_image(ref, tmp_path / "one", client=client, platform=AMD64)
    pull_image(ref, tmp_path / "two", client=client, platform=AMD64)
    client.head_digest(ref)

    assert (tmp_path / "two/run.sh").exists()
    assert token_registry.token_requests[before:] == [
        {"user": None, "ok": True, "scopes": ["repository:public/ocitest:pull"]}
    ]


@pytest.mark.registry
def test_credentials_unlock_private_repositories(
    token_registry: TokenRegistry, registry: RegistryProcess, tmp_path: Path
) -> None:
    registry.push_image("private/ocitest", "v1", [make_layer({"run.sh": ("x", 0o755)})])
    ref = token_registry.ref("private/ocitest", "v1")
    alice = {token_registry.host: Credentials("alice", token_registry.users["alice"])}
    mallory = {token_registry.host: Credentials("alice", "wrong password")}

    with RegistryClient(credentials=alice, backoff=0.001) as registry_client:
        pull_image(ref, tmp_path / "ok", client=registry_client, platform=AMD64)
    with (
        RegistryClient(credentials=mallory, backoff=0.001) as registry_client,
        pytest.raises(AuthenticationError) as bad,
    ):
        pull_image(ref, tmp_path / "bad", client=registry_client, platform=AMD64)
    with (
        RegistryClient(backoff=0.001) as registry_client,
        pytest.raises(AuthenticationError) as anonymous,
    ):
        pull_image(ref, tmp_path / "anonymous", client=registry_client, platform=AMD64)

    assert (tmp_path / "ok/run.sh").exists()
    assert ref in str(bad.value) and "refused the credentials" in str(bad.value)
    assert ref in str(anonymous.value) and "denied" in str(anonymous.value)


@pytest.mark.registry
def test_basic_auth_is_not_sent_along_a_cross_host_redirect(
    fault_proxy: FaultProxy, images: Images, tmp_path: Path
) -> None:
    fault_proxy.require_basic("bob", "builder")
    fault_proxy.redirect_blobs(f"localhost:{fault_proxy.port}")
    credentials = {fault_proxy.host: Credentials("bob", "builder")}

    with RegistryClient(credentials=credentials, backoff=0.001) as registry_client:
        pull_image(
            images.simple.ref(fault_proxy.host),
            tmp_path / "ok",
            client=registry_client,
            platform=AMD64,
        )
    with (
        RegistryClient(backoff=0.001) as registry_client,
        pytest.raises(AuthenticationError, match="requires authentication"),
    ):
        pull_image(
            images.simple.ref(fault_proxy.host),
            tmp_path / "anonymous",
            client=registry_client,
        )

    assert (tmp_path / "ok/run.sh").exists()
    redirected = fault_proxy.requests_for("/_blob/")
    assert redirected and all(r.host.startswith("localhost:") for r in redirected)
    assert all("Authorization" not in r.headers for r in redirected)
    assert any(
        "Authorization" in r.headers
        for r in fault_proxy.requests_for("/v2/ocitest/simple/blobs/")
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_descriptor_parsing_rejects_bad_digests() -> None:
    ref = Reference.parse("localhost/x")
    with pytest.raises(RegistryError, match="digest"):
        Descriptor.from_json({"mediaType": "x", "digest": "sha256:zz", "size": 1}, ref)
    assert (
        Descriptor.from_json(
            json.loads(
                '{"mediaType": "x", "digest": "sha256:' + "0" * 64 + '", "size": 3}'
            ),
            ref,
        ).size
        == 3
    )
