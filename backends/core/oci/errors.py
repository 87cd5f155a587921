"""Every failure the OCI client raises; each message names the image reference."""

from __future__ import annotations


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


class Cancelled(Exception):
    """``should_cancel`` returned True. Not an OCIError: nothing failed."""
