"""The redaction policy: what of a URI or a message may be shown to people.

Sources carry credentials: a password in the URI's userinfo (``https://user:pw@host``),
a signed or tokenised query (``?token=...``, ``?X-Amz-Signature=...``), registry
credentials from the configuration. The database keeps them, because the product needs
them to fetch again; everything a person or another program reads (pages, API answers,
``metadata.json``, logs, job messages) goes through this module first.

* ``redact_uri``: one URI (or image reference, or path) with its secrets masked.
* ``redact_text``: every URL inside a free text (an error message) redacted.
* ``scrub``: known secret values, and their base64 forms, removed from a free text.
* ``redact_message``: both, for an error about given URIs (the job boundary).

Masking is idempotent: a redacted URI redacts to itself. No Django imports.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

MASK = "***"

# Query (and fragment) parameters whose value is a secret, by name, case-insensitively:
# a name containing one of these words, or starting with one of these prefixes (every
# parameter of a presigned S3 or GCS URL: the signature is only one of them, and the
# credential and security token sit beside it).
SECRET_WORDS = (
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "pwd",
    "signature",
    "sig",
    "auth",
    "credential",
)
SECRET_PREFIXES = ("x-amz-", "x-goog-")
# A secret shorter than this is not searched for in free text: replacing every "ab" would
# wreck the message, and URLs in the text are redacted by their structure anyway.
MIN_SCRUB_LENGTH = 4

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# A URL inside free text: up to white space or a quote, without trailing punctuation.
_URL_IN_TEXT = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]*[^\s\"'<>`.,;:!?)\]}]"
)


def is_secret_parameter(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return lowered.startswith(SECRET_PREFIXES) or any(
        word in lowered for word in SECRET_WORDS
    )


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its userinfo and its secret parameters masked.

    A userinfo without a password is masked whole (a token is often passed as the user
    name). Strings without a scheme (image references, paths, gallery names) are left
    alone unless they start with userinfo (``user:pw@host/path``). Never raises.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        authority, slash, path = uri.partition("/")
        # An "@" after the first "/" is a digest or a git ref, not userinfo.
        if slash and "@" in authority:
            return _masked_userinfo(authority) + slash + path
        return uri
    end = min((rest.find(c) for c in "/?#" if c in rest), default=len(rest))
    authority, remainder = rest[:end], rest[end:]
    if "@" in authority:
        authority = _masked_userinfo(authority)
    remainder, hash_, fragment = remainder.partition("#")
    path, question, query = remainder.partition("?")
    return (
        f"{scheme}://{authority}{path}{question}{_masked_parameters(query)}"
        f"{hash_}{_masked_parameters(fragment)}"
    )


def _masked_userinfo(authority: str) -> str:
    userinfo, _, host = authority.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if colon:
        return f"{user}:{MASK}@{host}"
    return f"{MASK}@{host}"


def _masked_parameters(query: str) -> str:
    if "=" not in query:
        return query
    pieces = []
    for piece in query.split("&"):
        name, eq, value = piece.partition("=")
        if eq and value and is_secret_parameter(name):
            piece = f"{name}={MASK}"
        pieces.append(piece)
    return "&".join(pieces)


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (``redact_uri``)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_uri(match.group(0)), text)


def secrets_in(uri: str) -> list[str]:
    """The secret values ``uri`` holds, as written and percent-decoded, for ``scrub``."""
    found: list[str] = []
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        authority = uri.partition("/")[0] if "/" in uri else ""
        query = fragment = ""
    else:
        end = min((rest.find(c) for c in "/?#" if c in rest), default=len(rest))
        authority = rest[:end]
        remainder, _, fragment = rest[end:].partition("#")
        query = remainder.partition("?")[2]
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        found += [userinfo, password] if colon else [user]
    for part in (query, fragment):
        for piece in part.split("&"):
            name, eq, value = piece.partition("=")
            if eq and value and is_secret_parameter(name):
                found.append(value)
    return [form for value in found for form in {value, unquote(value)} if form]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` without any of ``secrets``, nor their base64 forms (``user:password``
    is what a Basic Authorization header carries, base64-encoded)."""
    forms: set[str] = set()
    for secret in secrets:
        if len(secret) < MIN_SCRUB_LENGTH:
            continue
        encoded = base64.b64encode(secret.encode()).decode()
        forms.update((secret, encoded, encoded.rstrip("=")))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def redact_message(text: str, *uris: str, secrets: Iterable[str] = ()) -> str:
    """An error about ``uris``, fit to show: their secrets (and ``secrets``) scrubbed
    wherever the text quotes them, and every URL in it redacted."""
    known = [*secrets, *(value for uri in uris if uri for value in secrets_in(uri))]
    return redact_text(scrub(text, known))


def unredacted(shown: str, *candidates: str) -> str:
    """The first candidate whose redacted form is ``shown``, else ``shown`` itself.

    How a database row keeps the full URI when the file it is reconciled from holds the
    redacted one.
    """
    for candidate in candidates:
        if candidate and redact_uri(candidate) == shown:
            return candidate
    return shown


class RedactingFilter(logging.Filter):
    """A log handler filter: every URL in a record (its message and its traceback) is
    redacted before it is written. A safety net under the call sites, which redact what
    they log themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(
                logging.Formatter().formatException(record.exc_info)
            )
        return True
