"""The request shapes: what they refuse, and the messages that name the field."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from backends.api import schemas
from backends.core.gallery import validate_backend_id, validate_name


@pytest.mark.parametrize(
    ("schema", "body", "message"),
    [
        (schemas.APPLY_BODY, {}, "id is required"),
        (schemas.APPLY_BODY, {"id": ""}, "id is required"),
        (schemas.APPLY_BODY, {"id": 3}, "id must be a string"),
        (
            schemas.APPLY_BODY,
            {"id": "a", "force": "yes"},
            "force must be true or false",
        ),
        (schemas.APPLY_BODY, [], "request body must be a JSON object"),
        (schemas.EXTERNAL_BODY, {"name": "x"}, "uri is required"),
        (schemas.EXTERNAL_BODY, {"uri": "  "}, "uri is required"),
        (schemas.EXTERNAL_BODY, {"uri": "a\x00"}, "uri may not contain NUL characters"),
        (schemas.NODE_INSTALL_BODY, {}, "backend name or uri required"),
        (
            schemas.NODE_INSTALL_BODY,
            {"backend": "", "uri": ""},
            "backend name or uri required",
        ),
        (schemas.NODE_BACKEND_BODY, {}, "backend is required"),
        (
            schemas.REGISTER_BODY,
            {"name": "n", "hardware": {"os": "x" * 40}},
            "hardware.os is longer than 32 characters",
        ),
    ],
)
def test_a_refusal_names_the_field(schema, body, message) -> None:
    with pytest.raises(schemas.Invalid) as refused:
        schemas.check(schema, body)
    assert str(refused.value) == message


def test_localai_clients_may_send_unused_fields_empty() -> None:
    schemas.check(schemas.EXTERNAL_BODY, {"uri": "x", "name": "", "alias": None})
    schemas.check(schemas.NODE_INSTALL_BODY, {"backend": "cpu-bar", "uri": ""})


@pytest.mark.parametrize(
    "value",
    [
        "cpu-bar",
        "a.b_c-1",
        "localai@cpu-bar",
        "",
        ".hidden",
        "../x",
        "a/b",
        "x y",
        "g@.x",
        "@x",
        "x@",
        "a" * 255,
        "a" * 256,
        f"{'g' * 255}@{'n' * 255}",
    ],
)
def test_the_name_patterns_say_what_validate_name_says(value) -> None:
    # validate_name stays the core's rule; the schemas must not drift from it.
    def core(check) -> bool:
        try:
            check(value)
        except ValueError:
            return False
        return True

    assert Draft202012Validator(schemas.NAME).is_valid(value) == core(validate_name)
    assert Draft202012Validator(schemas.BACKEND_ID).is_valid(value) == core(
        validate_backend_id
    )
