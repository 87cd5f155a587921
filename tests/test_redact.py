from __future__ import annotations

import base64
import logging

import pytest

from backends.core.redact import (
    RedactingFilter,
    redact_message,
    redact_text,
    redact_uri,
    scrub,
    secrets_in,
    unredacted,
)


def test_it_masks_the_password_of_userinfo_and_keeps_the_user() -> None:
    assert (
        redact_uri("https://alice:hunter2@example.com/b.tar.gz")
        == "https://alice:***@example.com/b.tar.gz"
    )


def test_it_masks_a_userinfo_without_password_whole() -> None:
    # A token passed as the user name (https://<token>@host) is the usual form.
    assert (
        redact_uri("https://ghp_abcdef123@example.com:8443/x")
        == "https://***@example.com:8443/x"
    )


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "access_token",
        "api_key",
        "APIKEY",
        "client_secret",
        "password",
        "passwd",
        "pwd",
        "signature",
        "sig",
        "auth",
        "Authorization",
        "credential",
        "X-Amz-Signature",
        "x-amz-credential",
        "X-Amz-Security-Token",
        "X-Amz-Date",
        "X-Goog-Signature",
        "x-goog-credential",
    ],
)
def test_it_masks_each_family_of_secret_parameters(name: str) -> None:
    uri = f"https://cdn.example/b.tar.gz?ref=main&{name}=s3cr3t-value&v=2"

    assert redact_uri(uri) == f"https://cdn.example/b.tar.gz?ref=main&{name}=***&v=2"


def test_it_masks_secret_parameters_in_the_fragment_too() -> None:
    assert (
        redact_uri("https://h.example/cb#access_token=abcd&state=1")
        == "https://h.example/cb#access_token=***&state=1"
    )


@pytest.mark.parametrize(
    "reference",
    [
        "quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp",
        "oci://127.0.0.1:5000/backends/cpu@sha256:" + "a" * 64,
        "ubuntu@sha256:" + "b" * 64,
        "localhost:5000/repo:tag",
        "github:mudler/LocalAI/backend/index.yaml@master",
        "/srv/backends/cpu-llama",
        "file:///srv/imports/b.tar.gz",
        "llama-cpp",
        "localai@llama-cpp",
        "https://example.com/b.tar.gz?ref=main&v=2",
        "",
    ],
)
def test_it_leaves_references_paths_and_plain_urls_alone(reference: str) -> None:
    assert redact_uri(reference) == reference


def test_it_masks_userinfo_of_a_reference_without_scheme() -> None:
    assert (
        redact_uri("bob:pw1234@registry.example:5000/repo:tag")
        == "bob:***@registry.example:5000/repo:tag"
    )
    assert (
        redact_uri("oci://bob:pw1234@registry.example/repo:tag")
        == "oci://bob:***@registry.example/repo:tag"
    )


@pytest.mark.parametrize(
    "uri",
    [
        "https://alice:hunter2@example.com/b.tar.gz?token=abc&X-Amz-Signature=f00",
        "https://tok123@example.com/x#sig=1",
        "oci://u:p@r.example/repo:tag",
        "not a url at all ?token=x",
    ],
)
def test_it_is_idempotent(uri: str) -> None:
    once = redact_uri(uri)

    assert redact_uri(once) == once
    assert redact_text(f"failed: {once}") == f"failed: {once}"


def test_it_redacts_every_url_in_a_text_and_keeps_the_punctuation() -> None:
    text = (
        "every source failed: https://u:pw12@a.example/x.tgz: HTTP 500; "
        "Redirect for url 'https://b.example/y?X-Amz-Signature=abcd'."
    )

    assert redact_text(text) == (
        "every source failed: https://u:***@a.example/x.tgz: HTTP 500; "
        "Redirect for url 'https://b.example/y?X-Amz-Signature=***'."
    )


def test_it_lists_the_secrets_a_uri_holds() -> None:
    uri = "https://alice:p%40ss@example.com/b.tgz?token=t0k3n&ref=main"

    assert set(secrets_in(uri)) == {
        "alice:p%40ss",
        "alice:p@ss",
        "p%40ss",
        "p@ss",
        "t0k3n",
    }
    assert secrets_in("quay.io/org/image:tag") == []


def test_it_scrubs_known_secrets_and_their_base64_forms() -> None:
    basic = base64.b64encode(b"alice:hunter22").decode()
    body = f"denied: Authorization: Basic {basic} (password hunter22, token abcdef)"

    assert scrub(body, ["alice:hunter22", "hunter22", "abcdef"]) == (
        "denied: Authorization: Basic *** (password ***, token ***)"
    )


def test_it_does_not_scrub_secrets_too_short_to_search_for() -> None:
    assert scrub("a backend", ["a"]) == "a backend"


def test_it_redacts_a_message_about_a_uri() -> None:
    uri = "http://127.0.0.1:9/b.tar.gz?token=s3cr3tvalue"
    message = f"download failed: {uri}: the server said s3cr3tvalue is wrong"

    shown = redact_message(message, uri)

    assert "s3cr3tvalue" not in shown
    assert "http://127.0.0.1:9/b.tar.gz?token=***" in shown


def test_it_finds_the_full_uri_behind_its_redacted_form() -> None:
    full = "https://h.example/b.tgz?token=new"
    shown = redact_uri(full)

    assert unredacted(shown, "", full, "https://h.example/b.tgz?token=old") == full
    assert unredacted(shown, "https://other.example/") == shown


def test_its_log_filter_redacts_messages_and_tracebacks() -> None:
    try:
        raise ValueError("GET https://x.example/a?token=zzzz failed")
    except ValueError as exc:
        record = logging.LogRecord(
            "t", logging.INFO, __file__, 1, "fetch %s: %s", ("u", exc), None
        )
        record.exc_info = (type(exc), exc, exc.__traceback__)

    assert RedactingFilter().filter(record)
    assert record.getMessage() == "fetch u: GET https://x.example/a?token=*** failed"
    assert record.exc_text and "zzzz" not in record.exc_text
