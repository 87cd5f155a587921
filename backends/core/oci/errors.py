"""Every failure the OCI client raises; each message names the image reference."""

from __future__ import annotations

from backends.core.transfer import Cancelled, Stalled

__all__ = [
    "AuthenticationError",
    "Cancelled",
    "DigestMismatchError",
    "InvalidReferenceError",
    "NotFoundError",
    "OCIError",
    "PlatformNotFoundError",
    "RegistryError",
    "RegistryStalled",
    "UnsupportedMediaTypeError",
    "VerificationError",
]


class OCIError(Exception):
    """Base of every registry/pull failure."""


class InvalidReferenceError(OCIError, ValueError):
    pass


class AuthenticationError(OCIError):
    """401/403, or the token service refused the credentials."""


class NotFoundError(OCIError):
    """404: unknown repository, manifest (tag) or blob."""


class PlatformNotFoundError(OCIError):
    pass


class DigestMismatchError(OCIError):
    pass


class UnsupportedMediaTypeError(OCIError):
    pass


class RegistryError(OCIError):
    """Any other unexpected answer, or the registry stayed unreachable after retries."""


class RegistryStalled(RegistryError, Stalled):
    """The registry, its token service or a blob store stalled (see core.transfer)."""


class VerificationError(OCIError):
    """The image's signatures do not satisfy its gallery's verification policy. Not
    worth a mirror: the job fails before any layer is fetched."""
