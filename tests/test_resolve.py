"""Meta-backend resolution, the fallback chain and the compatibility filter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from backends.core.resolve import (
    NoBuildError,
    available,
    fallback_chain,
    pick_build,
    resolve_meta,
    why_incompatible,
)

INDEX = (
    Path(__file__).resolve().parents[2] / "shared/fixtures/galleries/localai-index.yaml"
)
IMAGES = "quay.io/go-skynet/local-ai-backends"


@dataclass(frozen=True)
class Entry:
    name: str
    uri: str = ""
    capabilities: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_meta(self) -> bool:
        return bool(self.capabilities) and not self.uri


def meta(name: str, **capabilities: str) -> Entry:
    return Entry(
        name, capabilities={k.replace("_", "-"): v for k, v in capabilities.items()}
    )


def build(name: str, tag: str = "") -> Entry:
    return Entry(name, uri=f"{IMAGES}:latest-{tag or name}")


def names(entries: list[Entry]) -> list[str]:
    return [e.name for e in entries]


# --- fallback chain --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "chain"),
    [
        ("nvidia-cuda-13", "nvidia-cuda-13 nvidia-cuda-12 nvidia default cpu"),
        ("nvidia-cuda-12", "nvidia-cuda-12 nvidia default cpu"),
        ("nvidia", "nvidia default cpu"),
        (
            "nvidia-l4t-cuda-13",
            "nvidia-l4t-cuda-13 nvidia-l4t-cuda-12 nvidia-l4t default cpu",
        ),
        ("nvidia-l4t-cuda-12", "nvidia-l4t-cuda-12 nvidia-l4t default cpu"),
        ("nvidia-l4t", "nvidia-l4t default cpu"),
        ("metal", "metal metal-darwin-arm64 default cpu"),
        ("metal-darwin-arm64", "metal-darwin-arm64 metal default cpu"),
        ("amd", "amd default cpu"),
        ("intel", "intel default cpu"),
        ("vulkan", "vulkan default cpu"),
        ("darwin-x86", "darwin-x86 default cpu"),
        ("default", "default cpu"),
        ("cpu", "cpu default"),
        ("disable", "disable default cpu"),
        ("some-future-accelerator", "some-future-accelerator default cpu"),
        ("", "default cpu"),
    ],
)
def test_each_capability_has_its_fallback_chain(capability: str, chain: str) -> None:
    assert fallback_chain(capability) == tuple(chain.split())


def test_no_gpu_chain_falls_back_to_vulkan() -> None:
    for capability in ("nvidia-cuda-13", "nvidia-l4t-cuda-13", "amd", "intel", "metal"):
        assert "vulkan" not in fallback_chain(capability)


# --- resolve_meta -----------------------------------------------------------------------------

LLAMA = meta(
    "llama-cpp",
    default="cpu-llama-cpp",
    nvidia="cuda12-llama-cpp",
    nvidia_cuda_12="cuda12-llama-cpp",
    nvidia_cuda_13="cuda13-llama-cpp",
    amd="rocm-llama-cpp",
    metal="metal-llama-cpp",
    vulkan="vulkan-llama-cpp",
)


def test_it_takes_the_exact_key_first() -> None:
    choice = resolve_meta(LLAMA, "nvidia-cuda-13", hardware_explanation="driver 580")
    assert (choice.key, choice.concrete) == ("nvidia-cuda-13", "cuda13-llama-cpp")
    assert (
        choice.explanation
        == "cuda13-llama-cpp chosen for nvidia-cuda-13: exact match; driver 580"
    )


# LocalAI gives a GPU host without its exact key the CPU build (backends 3.1).
def test_it_falls_back_to_cuda12_on_a_cuda13_node() -> None:
    m = meta("whisper", nvidia_cuda_12="cuda12-whisper", default="cpu-whisper")
    choice = resolve_meta(m, "nvidia-cuda-13", hardware_explanation="hw")
    assert (choice.meta, choice.capability, choice.key) == (
        "whisper",
        "nvidia-cuda-13",
        "nvidia-cuda-12",
    )
    assert choice.concrete == "cuda12-whisper"
    assert choice.explanation == (
        "cuda12-whisper chosen for nvidia-cuda-13: no nvidia-cuda-13 build, "
        "falling back to nvidia-cuda-12; hw"
    )


def test_it_falls_back_to_the_nvidia_build_rather_than_the_cpu_one() -> None:
    m = meta("rerankers", nvidia="cuda12-rerankers", default="cpu-rerankers")
    choice = resolve_meta(m, "nvidia-cuda-13")
    assert choice.concrete == "cuda12-rerankers"
    assert (
        "no nvidia-cuda-13 or nvidia-cuda-12 build, falling back to nvidia"
        in choice.explanation
    )


def test_it_falls_back_within_the_l4t_family() -> None:
    m = meta("x", nvidia_l4t="nvidia-l4t-arm64-x", nvidia="cuda12-x", default="cpu-x")
    assert resolve_meta(m, "nvidia-l4t-cuda-13").concrete == "nvidia-l4t-arm64-x"


def test_metal_and_metal_darwin_arm64_stand_in_for_each_other() -> None:
    only_long = meta("ds4", metal_darwin_arm64="metal-ds4", default="cpu-ds4")
    only_short = meta("ds4", metal="metal-ds4", default="cpu-ds4")
    assert resolve_meta(only_long, "metal").concrete == "metal-ds4"
    assert resolve_meta(only_short, "metal-darwin-arm64").concrete == "metal-ds4"


def test_a_gpu_node_does_not_fall_back_to_vulkan() -> None:
    m = meta("x", vulkan="vulkan-x", default="cpu-x")
    assert resolve_meta(m, "nvidia-cuda-12").concrete == "cpu-x"


def test_it_uses_the_cpu_key_when_nothing_else_fits() -> None:
    m = meta("vllm", cpu="cpu-vllm", nvidia_cuda_12="cuda12-vllm")
    choice = resolve_meta(m, "amd")
    assert (choice.key, choice.concrete) == ("cpu", "cpu-vllm")
    assert "no amd or default build, falling back to cpu" in choice.explanation


def test_it_raises_when_no_key_fits() -> None:
    m = meta("longcat-video", nvidia="cuda12-longcat-video")
    with pytest.raises(NoBuildError) as caught:
        resolve_meta(m, "default")
    assert (
        str(caught.value) == "no build of longcat-video for default: it offers nvidia"
    )
    assert isinstance(caught.value, LookupError)
    assert (caught.value.meta, caught.value.capability) == ("longcat-video", "default")


def test_it_passes_over_a_cuda13_build_on_a_cuda12_node() -> None:
    # ds4 in the real gallery: its generic nvidia build needs CUDA 13.
    m = meta("ds4", nvidia="cuda13-ds4", nvidia_cuda_13="cuda13-ds4", default="cpu-ds4")
    choice = resolve_meta(m, "nvidia-cuda-12")
    assert choice.concrete == "cpu-ds4"
    assert choice.explanation == (
        "cpu-ds4 chosen for nvidia-cuda-12: no nvidia-cuda-12 build, "
        "cuda13-ds4 (nvidia) needs CUDA 13 (node has CUDA 12), falling back to default"
    )


def test_it_says_which_build_could_not_run_when_nothing_is_left() -> None:
    m = meta(
        "faster-qwen3-tts",
        nvidia="cuda12-faster-qwen3-tts",
        default="cuda12-faster-qwen3-tts",
    )
    with pytest.raises(NoBuildError) as caught:
        resolve_meta(m, "default")
    assert str(caught.value) == (
        "no build of faster-qwen3-tts for default: it offers default, nvidia; "
        "cuda12-faster-qwen3-tts (default) needs an NVIDIA GPU"
    )


def test_it_refuses_a_concrete_entry() -> None:
    with pytest.raises(ValueError, match="not a meta backend"):
        resolve_meta(build("cpu-llama-cpp"), "default")


# --- why_incompatible: LocalAI's cases (reference section 8, 10 and 21-29) ------------------------


@pytest.mark.parametrize(
    ("name", "tag", "capability", "expected"),
    [
        # 21: CPU builds run everywhere.
        ("cpu-llama-cpp", "cpu-llama-cpp", "default", True),
        ("cpu-llama-cpp", "cpu-llama-cpp", "nvidia", True),
        ("cpu-llama-cpp", "cpu-llama-cpp", "amd", True),
        # 22: macOS builds only on macOS.
        ("mlx", "metal-darwin-arm64-mlx", "default", False),
        ("metal-llama-cpp", "metal-darwin-arm64-llama-cpp", "default", False),
        ("mlx", "metal-darwin-arm64-mlx", "metal", True),
        ("metal-llama-cpp", "metal-darwin-arm64-llama-cpp", "metal", True),
        ("metal-llama-cpp", "metal-darwin-arm64-llama-cpp", "metal-darwin-arm64", True),
        # 23: CUDA builds need NVIDIA.
        ("cuda12-llama-cpp", "gpu-nvidia-cuda-12-llama-cpp", "default", False),
        ("cuda12-llama-cpp", "gpu-nvidia-cuda-12-llama-cpp", "amd", False),
        ("cuda12-llama-cpp", "gpu-nvidia-cuda-12-llama-cpp", "nvidia", True),
        ("cuda13-llama-cpp", "gpu-nvidia-cuda-13-llama-cpp", "nvidia", True),
        # 24: ROCm/HIP only on AMD.
        ("rocm-llama-cpp", "gpu-rocm-hipblas-llama-cpp", "amd", True),
        ("rocm-llama-cpp", "gpu-rocm-hipblas-llama-cpp", "nvidia", False),
        ("hip-llama-cpp", "hip-llama-cpp", "amd", True),
        ("hip-llama-cpp", "hip-llama-cpp", "default", False),
        # 25: SYCL only on Intel.
        ("intel-sycl-f16-llama-cpp", "gpu-intel-sycl-f16-llama-cpp", "intel", True),
        ("intel-sycl-f32-llama-cpp", "gpu-intel-sycl-f32-llama-cpp", "default", False),
        ("intel-transformers", "gpu-intel-transformers", "intel", True),
        ("intel-transformers", "gpu-intel-transformers", "amd", False),
        # 26: Vulkan builds are listed on every host.
        ("vulkan-llama-cpp", "gpu-vulkan-llama-cpp", "default", True),
        # 29: a cuda build on an nvidia node, a rocm one hidden there.
        ("some-backend-cuda", "some-backend-cuda", "nvidia", True),
        ("some-backend-rocm", "some-backend-rocm", "nvidia", False),
        # 10: "disable" turns the filter off.
        ("cuda12-llama-cpp", "gpu-nvidia-cuda-12-llama-cpp", "disable", True),
        ("metal-llama-cpp", "metal-darwin-arm64-llama-cpp", "disable", True),
        ("intel-sycl-f16-llama-cpp", "gpu-intel-sycl-f16-llama-cpp", "disable", True),
    ],
)
def test_it_matches_localai_on_the_reference_cases(
    name: str, tag: str, capability: str, expected: bool
) -> None:
    assert (
        not why_incompatible(name, f"{IMAGES}:latest-{tag}", capability)
    ) is expected


@pytest.mark.parametrize(
    ("name", "uri", "capability", "expected"),
    [
        # Whole words: an amd64 image is not an AMD build, intelligence is not Intel.
        ("cpu-tool", "example.org/tools:latest-cpu-amd64", "default", True),
        ("intelligence-kit", "example.org/ik:latest", "default", True),
        # The registry host says who serves an image, not what it runs on.
        ("cpu-x", "amd.example.com/team/backend:latest-cpu-x", "default", True),
        # MLX also ships Linux builds; only the bare or Apple-marked ones are macOS.
        ("cpu-mlx", f"{IMAGES}:latest-cpu-mlx", "default", True),
        (
            "cuda12-mlx",
            f"{IMAGES}:latest-gpu-nvidia-cuda-12-mlx",
            "nvidia-cuda-12",
            True,
        ),
        ("cuda12-mlx", f"{IMAGES}:latest-gpu-nvidia-cuda-12-mlx", "metal", False),
        ("mlx", "", "default", False),
        # A CUDA 13 build does not start on a driver that only supports CUDA 12.
        (
            "cuda13-llama-cpp",
            f"{IMAGES}:latest-gpu-nvidia-cuda-13-llama-cpp",
            "nvidia-cuda-12",
            False,
        ),
        (
            "cuda12-llama-cpp",
            f"{IMAGES}:latest-gpu-nvidia-cuda-12-llama-cpp",
            "nvidia-cuda-13",
            True,
        ),
        # L4T builds need an L4T node; x86 CUDA images do not run on one.
        ("cuda12-nvidia-l4t-arm64-x", "", "nvidia-cuda-12", False),
        ("nvidia-l4t-arm64-llama-cpp", "", "nvidia-l4t-cuda-12", True),
        (
            "cuda13-nvidia-l4t-arm64-x",
            f"{IMAGES}:latest-nvidia-l4t-cuda-13-arm64-x",
            "nvidia-l4t-cuda-12",
            False,
        ),
        ("cuda12-llama-cpp", "", "nvidia-l4t-cuda-12", False),
        # Apple-silicon builds do not run on an Intel Mac.
        (
            "metal-llama-cpp",
            f"{IMAGES}:latest-metal-darwin-arm64-llama-cpp",
            "darwin-x86",
            False,
        ),
        # Unknown forced capabilities still get the CPU builds.
        (
            "cpu-whisper",
            f"{IMAGES}:latest-cpu-whisper",
            "some-future-accelerator",
            True,
        ),
    ],
)
def test_it_avoids_the_lexical_false_positives(
    name: str, uri: str, capability: str, expected: bool
) -> None:
    assert (not why_incompatible(name, uri, capability)) is expected


def test_it_says_why_a_build_cannot_run() -> None:
    assert (
        why_incompatible("rocm-whisper", "", "nvidia-cuda-12")
        == "needs an AMD GPU (ROCm)"
    )
    assert why_incompatible("metal-whisper", "", "default") == "is a macOS build"
    assert why_incompatible("cpu-whisper", "", "default") == ""


# --- available ------------------------------------------------------------------------------------

GALLERY = [
    LLAMA,
    build("cpu-llama-cpp"),
    build("cuda12-llama-cpp", "gpu-nvidia-cuda-12-llama-cpp"),
    build("cuda13-llama-cpp", "gpu-nvidia-cuda-13-llama-cpp"),
    build("rocm-llama-cpp", "gpu-rocm-hipblas-llama-cpp"),
    build("metal-llama-cpp", "metal-darwin-arm64-llama-cpp"),
    build("vulkan-llama-cpp", "gpu-vulkan-llama-cpp"),
    # An MLX-like meta whose only builds are for macOS.
    meta("mlx-like", default="metal-mlx-like", metal="metal-mlx-like"),
    build("metal-mlx-like", "metal-darwin-arm64-mlx-like"),
    # A meta whose builds are missing from the gallery.
    meta("ghost", default="cpu-ghost", nvidia="cuda12-ghost"),
    # 27/28: a GPU-only meta and a meta with a default.
    meta(
        "longcat-video",
        nvidia="cuda12-longcat-video",
        nvidia_l4t_cuda_13="cuda13-nvidia-l4t-arm64-longcat-video",
    ),
    build("cuda12-longcat-video", "gpu-nvidia-cuda-12-longcat-video"),
    build(
        "cuda13-nvidia-l4t-arm64-longcat-video",
        "nvidia-l4t-cuda-13-arm64-longcat-video",
    ),
    meta("whisper", default="cpu-whisper"),
    build("cpu-whisper"),
]


def test_it_lists_what_a_cpu_host_can_run_in_input_order() -> None:
    assert names(available(GALLERY, "default")) == [
        "llama-cpp",
        "cpu-llama-cpp",
        "vulkan-llama-cpp",
        "whisper",
        "cpu-whisper",
    ]


def test_it_hides_a_meta_whose_build_is_for_another_platform() -> None:
    # LocalAI lists it on Linux (its map has "default") and then fails to install it.
    assert "mlx-like" not in names(available(GALLERY, "default"))
    assert "mlx-like" in names(available(GALLERY, "metal"))


def test_it_hides_a_meta_whose_build_is_missing() -> None:
    assert "ghost" not in names(available(GALLERY, "default"))
    assert "ghost" not in names(available(GALLERY, "nvidia-cuda-12"))


def test_it_lists_a_gpu_only_meta_only_where_it_resolves() -> None:
    assert "longcat-video" not in names(available(GALLERY, "default"))
    assert "longcat-video" not in names(available(GALLERY, "amd"))
    assert "longcat-video" in names(available(GALLERY, "nvidia-l4t-cuda-13"))
    assert "longcat-video" in names(available(GALLERY, "nvidia-cuda-13"))


def test_it_lists_the_nvidia_builds_a_cuda12_node_can_run() -> None:
    listed = names(available(GALLERY, "nvidia-cuda-12"))
    assert "cuda12-llama-cpp" in listed
    assert "cuda13-llama-cpp" not in listed
    assert "rocm-llama-cpp" not in listed


def test_disable_lists_every_build() -> None:
    builds = [e.name for e in GALLERY if not e.is_meta]
    listed = names(available(GALLERY, "disable"))
    assert [n for n in listed if n in builds] == builds
    # The filter is off, but a meta still needs a key to install: longcat-video has none.
    assert "whisper" in listed
    assert "longcat-video" not in listed


def test_pick_build_returns_the_gallery_entry() -> None:
    choice, entry = pick_build(
        LLAMA, GALLERY, "nvidia-cuda-13", hardware_explanation="hw"
    )
    assert entry.uri.endswith("gpu-nvidia-cuda-13-llama-cpp")
    assert choice.explanation.endswith("; hw")


def test_pick_build_fails_like_available_hides() -> None:
    ghost = next(e for e in GALLERY if e.name == "ghost")
    with pytest.raises(NoBuildError, match="no build of ghost for default: cpu-ghost"):
        pick_build(ghost, GALLERY, "default")


def test_pick_build_finds_names_case_insensitively() -> None:
    m = meta("kokoro", default="CPU-Kokoro")
    _, entry = pick_build(m, [m, build("cpu-kokoro")], "default")
    assert entry.name == "cpu-kokoro"


# --- the real gallery ------------------------------------------------------------------------------

CAPABILITIES = [
    "nvidia-cuda-13",
    "nvidia-cuda-12",
    "nvidia",
    "nvidia-l4t-cuda-13",
    "nvidia-l4t-cuda-12",
    "nvidia-l4t",
    "amd",
    "intel",
    "vulkan",
    "metal",
    "darwin-x86",
    "default",
]


@pytest.fixture(scope="module")
def index() -> list[Entry]:
    with INDEX.open("rb") as stream:
        raw = yaml.load(stream, Loader=yaml.CSafeLoader)
    return [
        Entry(
            str(e["name"]), str(e.get("uri") or ""), dict(e.get("capabilities") or {})
        )
        for e in raw
    ]


def test_runnable_resolution_in_the_real_gallery_only_skips_unrunnable_builds(
    index: list[Entry],
) -> None:
    for m in (e for e in index if e.is_meta):
        for capability in CAPABILITIES:
            present = [k for k in fallback_chain(capability) if k in m.capabilities]
            runnable = [
                k
                for k in present
                if not why_incompatible(m.capabilities[k], "", capability)
            ]
            try:
                key = resolve_meta(m, capability).key
            except NoBuildError:
                key = None
            assert key == (runnable[0] if runnable else None)


def test_ten_metas_of_the_real_gallery_have_neither_default_nor_cpu(
    index: list[Entry],
) -> None:
    gpu_only = [
        m.name
        for m in index
        if m.is_meta and not {"default", "cpu"} & m.capabilities.keys()
    ]
    assert len(gpu_only) == 10
    assert "longcat-video" in gpu_only


def test_kokoro_resolves_to_its_cpu_image_on_a_cpu_host(index: list[Entry]) -> None:
    kokoro = next(e for e in index if e.name == "kokoro")
    choice, entry = pick_build(kokoro, index, "default")
    assert choice.concrete == "cpu-kokoro"
    assert entry.uri == f"{IMAGES}:latest-cpu-kokoro"


def test_every_meta_offered_in_the_real_gallery_can_be_picked(
    index: list[Entry],
) -> None:
    # A few capabilities only: each pick_build call indexes the whole gallery.
    for capability in ("default", "nvidia-cuda-12", "nvidia-l4t-cuda-12", "metal"):
        for entry in available(index, capability):
            if entry.is_meta:
                _, build_entry = pick_build(entry, index, capability)
                assert not why_incompatible(
                    build_entry.name, build_entry.uri, capability
                )
