"""The case form: run inputs from the workflow's run form, and one control per field of the checked output, typed
by what the step declares (a choice, yes / no, a number, text). A field left empty is not checked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.http import QueryDict

from apps.evaluations.outputs import ANY, OutputField
from apps.workflows.input_schema import input_form_class

INPUT_PREFIX = "input"
EXPECTED_PREFIX = "expected-"
EXPECTED_JSON = "expected_json"


@dataclass
class ExpectedRow:
    """One expected-output control as the template renders it."""

    name: str
    type_label: str
    widget: str  # "select" or "text"
    choices: list[tuple[str, str]] = field(default_factory=list)
    value: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def html_name(self) -> str:
        return f"{EXPECTED_PREFIX}{self.name}"


def _shown(value: Any) -> str:
    """An expected value as its control shows it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def expected_rows(
    fields: list[OutputField], values: dict[str, Any], errors: dict[str, list[str]], raw: QueryDict | None = None
) -> list[ExpectedRow]:
    """The controls for `fields`, filled with `values` (or what was posted, when the form comes back with errors)."""
    rows = []
    for item in fields:
        shown = raw.get(f"{EXPECTED_PREFIX}{item.name}", "") if raw is not None else _shown(values.get(item.name))
        row = ExpectedRow(
            name=item.name, type_label=item.type_label, widget="text", value=shown, errors=errors.get(item.name, [])
        )
        if item.choices:
            row.widget = "select"
            row.choices = [("", "Not checked"), *[(str(choice), str(choice)) for choice in item.choices]]
        elif item.type == "boolean":
            row.widget = "select"
            row.choices = [("", "Not checked"), ("yes", "Yes"), ("no", "No")]
        rows.append(row)
    return rows


def expected_from_post(
    fields: list[OutputField] | None, post: QueryDict
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The expected output a posted form describes, and what cannot be read (per field)."""
    if fields is None:
        text = post.get(EXPECTED_JSON, "").strip()
        try:
            value = json.loads(text or "{}")
        except json.JSONDecodeError as error:
            return {}, {"expected": [f"Not valid JSON ({error.msg}, line {error.lineno})."]}
        if not isinstance(value, dict):
            return {}, {"expected": ['Give an object of fields and values, e.g. {"route": "auto_approve"}.']}
        return value, {}
    expected: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for item in fields:
        raw = post.get(f"{EXPECTED_PREFIX}{item.name}", "").strip()
        if not raw:
            continue
        if item.choices:
            match = next((choice for choice in item.choices if str(choice) == raw), None)
            if match is None:
                errors[item.name] = [f"Choose {item.type_label}."]
            else:
                expected[item.name] = match
        elif item.type == "boolean":
            if raw not in ("yes", "no"):
                errors[item.name] = ["Choose yes or no."]
            else:
                expected[item.name] = raw == "yes"
        elif item.type in ("number", "integer"):
            try:
                number = float(raw)
            except ValueError:
                errors[item.name] = ["Give a number, e.g. 850 or 850.50 (no thousands separators)."]
                continue
            if item.type == "integer":
                if not number.is_integer():
                    errors[item.name] = ["Give a whole number."]
                    continue
                expected[item.name] = int(number)
            else:
                expected[item.name] = number
        elif item.type == ANY:
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                parsed = raw
            expected[item.name] = parsed if isinstance(parsed, int | float | bool | str) else raw
        else:
            expected[item.name] = raw
    return expected, errors


def input_form(
    schema: dict[str, Any], *, data: QueryDict | None = None, initial: dict[str, Any] | None = None
) -> forms.Form:
    """The workflow's run form for a case's inputs."""
    return input_form_class(schema)(data=data, initial=initial, prefix=INPUT_PREFIX)


def inputs_from_post(form: forms.Form, post: QueryDict) -> dict[str, Any]:
    """The run inputs a posted case form holds, as typed (the service validates them with the run form itself)."""
    return {name: post.get(form.add_prefix(name)) for name in form.fields if form.add_prefix(name) in post}
