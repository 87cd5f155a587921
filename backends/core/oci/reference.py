"""Image references and platforms, as Docker and the OCI distribution spec name them.

``Reference.parse`` reads ``quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp``,
``oci://host/repo:tag``, ``127.0.0.1:5000/repo:tag``, ``repo@sha256:...`` and Docker Hub
short names (``localai/localai-backends:tag`` -> ``registry-1.docker.io``, ``ubuntu`` ->
``library/ubuntu``); the tag defaults to ``latest``.
"""

from __future__ import annotations

import hashlib
import platform as host_platform
import re
import sys
from dataclasses import dataclass

from backends.core.oci.errors import InvalidReferenceError

DOCKER_HUB = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB})
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_HOST = re.compile(
    r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


def is_digest(text: str) -> bool:
    """A content digest we can verify (sha256 or sha512, lowercase hex)."""
    return _DIGEST.fullmatch(text) is not None


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The content digest of ``data`` (``<algorithm>:<hex>``)."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def canonical_registry(host: str) -> str:
    """Docker Hub under the one name its API answers on; any other host unchanged."""
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest = text.strip().removeprefix("oci://")
        if not rest or any(char.isspace() for char in rest):
            raise InvalidReferenceError(f"invalid image reference {text!r}")
        name, at, digest = rest.partition("@")
        if at and not is_digest(digest):
            raise InvalidReferenceError(f"invalid digest in image reference {text!r}")
        tag = None
        if name.rfind(":") > name.rfind("/"):
            name, _, tag = name.rpartition(":")
            if not _TAG.fullmatch(tag):
                raise InvalidReferenceError(f"invalid tag in image reference {text!r}")
        first, slash, remainder = name.partition("/")
        # Docker's rule: the first component is a registry if it looks like a host.
        if slash and (
            "." in first
            or ":" in first
            or first == "localhost"
            or first.startswith("[")
        ):
            registry, repository = canonical_registry(first), remainder
        else:
            registry, repository = DOCKER_HUB, name
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        if not _HOST.fullmatch(registry) or not all(
            _PATH_COMPONENT.fullmatch(part) for part in repository.split("/")
        ):
            raise InvalidReferenceError(f"invalid image reference {text!r}")
        return cls(registry, repository, tag if tag or at else "latest", digest or None)

    @property
    def reference(self) -> str:
        """What goes in the manifest URL: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    return Reference.parse(text)


def as_reference(ref: Reference | str) -> Reference:
    return ref if isinstance(ref, Reference) else Reference.parse(ref)


# uname's machine names -> Go's GOARCH (and GOARM variant), which image indexes use.
_MACHINES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def host(cls) -> Platform:
        machine = host_platform.machine().lower()
        architecture, variant = _MACHINES.get(machine, (machine, None))
        system = {"win32": "windows", "cygwin": "windows"}.get(
            sys.platform, sys.platform
        )
        return cls(system, architecture, variant)

    def __str__(self) -> str:
        return "/".join(
            part for part in (self.os, self.architecture, self.variant) if part
        )

    def normalized_variant(self) -> str | None:
        # arm64 images are published both with and without "v8"; they are the same.
        if self.architecture == "arm64" and self.variant in (None, "", "v8"):
            return None
        return self.variant or None
