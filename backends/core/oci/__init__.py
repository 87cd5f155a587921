"""OCI registry client (distribution v2 API) and image pull, on httpx. No Django here.

* ``reference``: image references and platforms (``Reference.parse``, ``Platform.host``).
* ``manifest``: manifests, indexes and their media types; the index entry for a platform.
* ``auth``: registry auth as an ``httpx.Auth`` flow (bearer tokens, basic credentials).
* ``client``: ``RegistryClient``, the transport (retries, redirects, Range resume).
* ``pull``: ``pull_image`` streams every layer through ``backends.core.extract``.
* ``verify``: cosign signature checks against a gallery's verification policy.
* ``errors``: ``OCIError`` and its subclasses, each message naming the reference;
  ``Cancelled`` (not an OCIError) when ``should_cancel`` says so.
"""

from __future__ import annotations

from backends.core.oci.auth import Credentials
from backends.core.oci.client import RegistryClient, tls_context
from backends.core.oci.errors import (
    AuthenticationError,
    Cancelled,
    DigestMismatchError,
    InvalidReferenceError,
    NotFoundError,
    OCIError,
    PlatformNotFoundError,
    RegistryError,
    UnsupportedMediaTypeError,
    VerificationError,
)
from backends.core.oci.manifest import Descriptor, ResolvedImage
from backends.core.oci.pull import Progress, pull_image
from backends.core.oci.reference import Platform, Reference, parse_reference

__all__ = [
    "AuthenticationError",
    "Cancelled",
    "Credentials",
    "Descriptor",
    "DigestMismatchError",
    "InvalidReferenceError",
    "NotFoundError",
    "OCIError",
    "Platform",
    "PlatformNotFoundError",
    "Progress",
    "Reference",
    "RegistryClient",
    "RegistryError",
    "ResolvedImage",
    "UnsupportedMediaTypeError",
    "VerificationError",
    "parse_reference",
    "pull_image",
    "tls_context",
]
