"""Choose the build of a meta backend for a capability, and filter what a node can run.

Pure functions over gallery entries (anything shaped like ``Candidate``): the gallery
parser's dataclasses, the Django models and the tests' stand-ins all fit.

Two changes from LocalAI, both so that a node is never offered a build it cannot run:

* a meta resolves through a fallback chain that stays in the vendor family
  (``nvidia-cuda-13`` -> ``nvidia-cuda-12`` -> ``nvidia`` -> ``default`` -> ``cpu``)
  instead of jumping from the exact key straight to the CPU build;
* the lexical compatibility rule works on whole words, knows that MLX also ships Linux
  builds, and compares the CUDA major of a build with the node's.

No Django imports.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class Candidate(Protocol):
    """A gallery entry as far as resolution is concerned."""

    @property
    def name(self) -> str: ...

    @property
    def uri(self) -> str: ...

    @property
    def capabilities(self) -> Mapping[str, str]: ...

    @property
    def is_meta(self) -> bool: ...


# --- fallback chain --------------------------------------------------------------------

# Keys tried before `default` and `cpu`, per capability. A newer CUDA driver runs older
# CUDA builds, so each NVIDIA chain walks down the majors. Vulkan is deliberately absent:
# a Vulkan build does run on most GPUs, but it is a different, usually slower, code path
# that the gallery author did not pick for this vendor; stepping outside the family is
# the CPU build's job, where the user expects a compromise.
_FAMILY_CHAINS: dict[str, tuple[str, ...]] = {
    "nvidia-cuda-13": ("nvidia-cuda-13", "nvidia-cuda-12", "nvidia"),
    "nvidia-cuda-12": ("nvidia-cuda-12", "nvidia"),
    "nvidia-l4t-cuda-13": ("nvidia-l4t-cuda-13", "nvidia-l4t-cuda-12", "nvidia-l4t"),
    "nvidia-l4t-cuda-12": ("nvidia-l4t-cuda-12", "nvidia-l4t"),
    # The two spellings of Apple silicon stand in for each other.
    "metal": ("metal", "metal-darwin-arm64"),
    "metal-darwin-arm64": ("metal-darwin-arm64", "metal"),
}


def fallback_chain(capability: str) -> tuple[str, ...]:
    """Capability-map keys to try, best first: the family, then default, then cpu."""
    keys = _FAMILY_CHAINS.get(capability, (capability,) if capability else ())
    # dict.fromkeys keeps the order and drops the duplicate when capability is "default".
    return tuple(dict.fromkeys((*keys, "default", "cpu")))


# --- resolution ------------------------------------------------------------------------


class NoBuildError(LookupError):
    """A meta backend has no build this node can use."""

    def __init__(self, meta: str, capability: str, detail: str) -> None:
        super().__init__(f"no build of {meta} for {capability}: {detail}")
        self.meta = meta
        self.capability = capability


@dataclass(frozen=True)
class Resolution:
    meta: str
    capability: str
    key: str  # the capability-map key that was used
    concrete: str
    explanation: str


def resolve_meta(
    meta: Candidate,
    capability: str,
    *,
    hardware_explanation: str = "",
) -> Resolution:
    """The concrete build a meta backend stands for on a node with ``capability``.

    Walks ``fallback_chain``; the first key present in the meta's map wins, but a key
    is passed over when the name of its build shows it cannot run here, e.g. a CUDA 13 build on a CUDA 12 node, and the chain
    goes on to the next key. Raises NoBuildError when nothing is left.
    """
    if not meta.is_meta:
        raise ValueError(f"{meta.name} is not a meta backend")
    steps: list[str] = []  # what was passed over, in chain order, for the explanation
    skipped: list[str] = []  # builds that exist but cannot run, for the error
    missing: list[str] = []
    for key in fallback_chain(capability):
        concrete = meta.capabilities.get(key, "")
        if not concrete:
            missing.append(key)
            continue
        steps.extend(_missing_step(missing))
        missing = []
        reason = why_incompatible(concrete, "", capability)
        if reason:
            skipped.append(f"{concrete} ({key}) {reason}")
            steps.append(skipped[-1])
            continue
        why = (
            "exact match"
            if key == capability
            else ", ".join([*steps, f"falling back to {key}"])
        )
        explanation = f"{concrete} chosen for {capability}: {why}"
        if hardware_explanation:
            explanation += f"; {hardware_explanation}"
        return Resolution(meta.name, capability, key, concrete, explanation)

    detail = "; ".join(
        [f"it offers {', '.join(sorted(meta.capabilities)) or 'nothing'}", *skipped]
    )
    raise NoBuildError(meta.name, capability, detail)


def _missing_step(missing: list[str]) -> list[str]:
    return [f"no {' or '.join(missing)} build"] if missing else []


def pick_build[C: Candidate](
    meta: Candidate,
    entries: Iterable[C],
    capability: str,
    *,
    hardware_explanation: str = "",
) -> tuple[Resolution, C]:
    """Resolve a meta and find its build among ``entries``, checking that it can run.

    This is what an install should use: it fails, with NoBuildError, exactly when
    ``available`` hides the meta.
    """
    resolution = resolve_meta(
        meta, capability, hardware_explanation=hardware_explanation
    )
    return resolution, _checked_build(resolution, concretes_by_name(entries))


def _checked_build[C: Candidate](
    resolution: Resolution, concretes: Mapping[str, C]
) -> C:
    build = concretes.get(resolution.concrete.lower())
    where = f"{resolution.concrete} ({resolution.key})"
    if build is None:
        raise NoBuildError(
            resolution.meta, resolution.capability, f"{where} is not in the gallery"
        )
    reason = why_incompatible(build.name, build.uri, resolution.capability)
    if reason:
        raise NoBuildError(resolution.meta, resolution.capability, f"{where} {reason}")
    return build


def first_by_name[Named: Candidate](entries: Iterable[Named]) -> list[Named]:
    """One entry per name, case-insensitively: the first one (the first gallery) wins."""
    seen: set[str] = set()
    kept: list[Named] = []
    for entry in entries:
        key = entry.name.lower()
        if key not in seen:
            seen.add(key)
            kept.append(entry)
    return kept


def concretes_by_name[C: Candidate](entries: Iterable[C]) -> dict[str, C]:
    """Concrete builds by lower-cased name, the first one winning (LocalAI's lookup)."""
    builds = first_by_name(entry for entry in entries if not entry.is_meta)
    return {build.name.lower(): build for build in builds}


# --- availability ----------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Whether an entry runs on a node, and for a meta the build it resolves to."""

    resolution: Resolution | None = None
    problem: str = ""  # why it cannot run here; "" when it can

    @property
    def runs_here(self) -> bool:
        return not self.problem


def verdict(
    entry: Candidate, concretes: Mapping[str, Candidate], capability: str
) -> Verdict:
    """The one rule for "does this entry run on a node with ``capability``".

    A concrete build runs when it is compatible. A meta runs only when it resolves to a
    build that is in ``concretes`` and compatible too (LocalAI lists a meta as soon as
    its map has a usable key, even when that key points at a build it hides).
    """
    if not entry.is_meta:
        return Verdict(problem=why_incompatible(entry.name, entry.uri, capability))
    try:
        resolution = resolve_meta(entry, capability)
    except NoBuildError as exc:
        return Verdict(problem=str(exc))
    try:
        _checked_build(resolution, concretes)
    except NoBuildError as exc:
        return Verdict(resolution=None, problem=str(exc))
    return Verdict(resolution=resolution)


def available[C: Candidate](entries: Iterable[C], capability: str) -> list[C]:
    """Entries a node with ``capability`` can install and run, in their input order."""
    listed = list(entries)
    concretes = concretes_by_name(listed)
    return [e for e in listed if verdict(e, concretes, capability).runs_here]


# --- compatibility of a concrete build ---------------------------------------------------

APPLE_CAPABILITIES = frozenset({"metal", "metal-darwin-arm64", "darwin-x86"})

# Words that say a build is for Linux, which overrule "mlx": the gallery ships MLX for
# Linux too (cpu-mlx, cuda12-mlx, nvidia-l4t-mlx) next to the macOS one (metal-mlx).
_LINUX_WORDS = frozenset({"cpu", "linux", "l4t", "sycl", "intel", "vulkan"})
_WORD_SEPARATORS = re.compile(r"[^a-z0-9]+")
_CUDA_WORD = re.compile(r"cuda\d*")
_ROCM_WORD = re.compile(r"rocm\d*|hip|hipblas\w*")
_CUDA_MAJOR = re.compile(r"(?<![a-z0-9])cuda[-_]?(\d{1,2})(?!\d)")
_NODE_CUDA_MAJOR = re.compile(r"nvidia(?:-l4t)?-cuda-(\d+)")


# Pure and called for every gallery entry on every catalogue render: worth caching.
@functools.lru_cache(maxsize=8192)
def why_incompatible(name: str, uri: str, capability: str) -> str:
    """Why a concrete build cannot run here, as a phrase ("needs an AMD GPU"); "" if it can.

    Like LocalAI the verdict comes from words in the build's name and image reference,
    but matched as whole words: "amd64" is not "amd", "intelligence" is not "intel".
    """
    if capability == "disable":
        return ""
    text = f"{name} {_image_path(uri)}".lower()
    words = set(_WORD_SEPARATORS.split(text)) - {""}
    family = build_family(words)
    if family == "apple":
        if capability not in APPLE_CAPABILITIES:
            return "is a macOS build"
        if capability == "darwin-x86" and words & {"arm64", "aarch64"}:
            return "is built for Apple silicon, not an Intel Mac"
        return ""
    if family == "l4t":
        if not capability.startswith("nvidia-l4t"):
            return "is built for NVIDIA Jetson (L4T)"
        return _cuda_gap(text, capability)
    if family == "nvidia":
        if capability.startswith("nvidia-l4t"):
            # x86-64 CUDA images; Jetson-class nodes need the arm64 L4T builds.
            return "is an x86-64 CUDA build, not an L4T one"
        if not capability.startswith("nvidia"):
            return "needs an NVIDIA GPU"
        return _cuda_gap(text, capability)
    if family == "amd" and capability != "amd":
        return "needs an AMD GPU (ROCm)"
    if family == "intel" and capability != "intel":
        return "needs an Intel GPU (SYCL)"
    return ""


def build_family(words: set[str]) -> str:
    """apple / l4t / nvidia / amd / intel, or "any" for CPU, Vulkan and unknown builds."""
    if words & {"darwin", "metal"}:
        return "apple"
    cuda = "nvidia" in words or any(_CUDA_WORD.fullmatch(w) for w in words)
    rocm = "amd" in words or any(_ROCM_WORD.fullmatch(w) for w in words)
    if "mlx" in words and not (cuda or rocm or words & _LINUX_WORDS):
        return "apple"
    if "l4t" in words:
        return "l4t"
    if cuda:
        return "nvidia"
    if rocm:
        return "amd"
    if words & {"sycl", "intel"}:
        return "intel"
    return "any"


def _cuda_gap(text: str, capability: str) -> str:
    """A CUDA build newer than the node's driver supports does not start."""
    node = _NODE_CUDA_MAJOR.fullmatch(capability)
    builds = [int(m) for m in _CUDA_MAJOR.findall(text)]
    # A plain "nvidia"/"nvidia-l4t" node: the driver's CUDA version is unknown, accept.
    if node is None or not builds:
        return ""
    if max(builds) > int(node.group(1)):
        return f"needs CUDA {max(builds)} (node has CUDA {node.group(1)})"
    return ""


def _image_path(uri: str) -> str:
    """The part of a URI that describes the build: no scheme, no registry host.

    The host says who serves the image, not what it runs on ("amd.example.com/...").
    """
    rest = uri.split("://", 1)[-1]
    first, slash, tail = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return tail
    return rest
