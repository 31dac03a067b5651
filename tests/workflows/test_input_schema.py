"""Run input validation (apps.workflows.input_schema): a `format: email` field holds one plain address."""

from __future__ import annotations

from typing import Any

import pytest

from apps.workflows.input_schema import ONE_ADDRESS_MESSAGE, input_form_class, input_schema_errors, input_validate

SCHEMA = {
    "type": "object",
    "properties": {"customer_email": {"type": "string", "title": "Customer's email", "format": "email"}},
    "required": ["customer_email"],
}


def test_one_address_passes_trimmed() -> None:
    assert input_validate(SCHEMA, {"customer_email": "  ana@example.com "}) == (
        {"customer_email": "ana@example.com"},
        {},
    )


@pytest.mark.parametrize(
    "value",
    [
        "a@x.com, b@y.com, c@z.com",
        "a@x.com;b@y.com",
        "a@x.com\nb@y.com",
        "a@x.com b@y.com",
        "Ana <ana@example.com>",
        '"a@x.com, b"@y.com',
        "not-an-address",
        "ana@localhost@example.com",
    ],
)
def test_a_list_or_anything_but_one_plain_address_is_a_field_error(value: str) -> None:
    """Steps address mail with such a field (`to: {{ input.customer_email }}`): a list typed or sent into it must
    not reach several people."""
    assert input_validate(SCHEMA, {"customer_email": value}) == ({}, {"customer_email": [ONE_ADDRESS_MESSAGE]})


def test_the_run_form_asks_for_an_email_address() -> None:
    field = input_form_class(SCHEMA)().fields["customer_email"]
    assert field.widget.input_type == "email"


def test_a_default_that_is_not_one_address_is_a_schema_problem() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"to": {"type": "string", "format": "email", "default": "a@x.com, b@y.com"}},
    }
    assert input_schema_errors(schema) == [
        "input schema: field \"to\": the default 'a@x.com, b@y.com' is not one email address"
    ]
    schema["properties"]["to"]["default"] = "a@x.com"
    assert input_schema_errors(schema) == []
