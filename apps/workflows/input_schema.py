"""A workflow's input schema (a small JSON Schema subset) as a Django form: one definition drives the
"Run" form's fields, its inline errors, and the API's 400 field errors.

Supported per property: `type` string / integer / number / boolean / array (of strings, or of records whose
fields are all text, such as a conversation's `{"role", "text"}` messages), `title`,
`description`, `enum`, `default`, `minLength`, `maxLength`, `minimum`, `maximum`, `format: "textarea"` or
`"date"` (an ISO date, kept as text in the run's input); `required` at the top. A property
`{"type": "object", "format": "document"}` is a document (a PDF, Word, HTML, Markdown, text or CSV file; see
apps.knowledge.parsing): the Run form shows a file input, and the
run's input holds `{"document": id, "name", "sha256", "pages", "text"}`, made by apps.runs.documents from the
upload (this module only checks that shape: reading files is the runs app's business).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.core.validators import validate_email

from apps.knowledge.parsing import accept_attribute, supported_formats_sentence

_TYPES = {"string", "integer", "number", "boolean", "array", "object"}
DOCUMENT_FORMAT = "document"
_COERCE: dict[str, Callable[[Any], Any]] = {"integer": int, "number": float}


ORDER_KEY = "x-order"


def property_order(schema: Any) -> list[str]:
    """A schema's property names in the order the analyst designed them.

    PostgreSQL's jsonb keeps an object's keys sorted by length, not as written, so a field order is kept in a
    list beside the properties (`x-order`, written by the builder's run form designer and field table). Without
    one: the required fields in their listed order, then the rest as stored.
    """
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return []
    properties = schema["properties"]
    order = schema.get(ORDER_KEY)
    listed = [name for name in order if isinstance(name, str) and name in properties] if isinstance(order, list) else []
    if not listed:
        required = schema.get("required")
        listed = (
            [name for name in required if isinstance(name, str) and name in properties]
            if isinstance(required, list)
            else []
        )
    listed = list(dict.fromkeys(listed))
    return listed + [name for name in properties if name not in listed]


def input_schema_errors(schema: Any) -> list[str]:
    """Every problem with an input schema, as readable messages (empty when valid)."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return ['input schema: must be an object schema ({"type": "object", "properties": {...}})']
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return ["input schema: properties must be an object"]
    problems = []
    for name, spec in properties.items():
        if not str(name).isidentifier():
            problems.append(f'input schema: "{name}" is not a valid field name')
        if not isinstance(spec, dict) or spec.get("type") not in _TYPES:
            problems.append(f'input schema: field "{name}" needs a type of {", ".join(sorted(_TYPES))}')
        elif spec["type"] == "object" and spec.get("format") != DOCUMENT_FORMAT:
            problems.append(f'input schema: field "{name}" is an object, and only documents (files) are supported')
        elif spec["type"] == "array" and (spec.get("items") or {}).get("type") != "string":
            if not is_record_list(spec):
                problems.append(
                    f'input schema: field "{name}" is a list, and only lists of text, or of records whose fields '
                    "are all text, are supported"
                )
        elif "enum" in spec and (not isinstance(spec["enum"], list) or not spec["enum"]):
            problems.append(f'input schema: field "{name}" is a choice without options')
    for name in schema.get("required", []):
        if name not in properties:
            problems.append(f'input schema: required field "{name}" is not defined')
    for name, spec in properties.items():
        if isinstance(spec, dict) and "default" in spec and spec.get("type") in _TYPES:
            problem = _default_problem(spec)
            if problem:
                problems.append(f'input schema: field "{name}": the default {problem}')
    order = schema.get(ORDER_KEY)
    if order is not None and (not isinstance(order, list) or not all(isinstance(name, str) for name in order)):
        problems.append(f"input schema: {ORDER_KEY} must be a list of field names")
    return problems


EMAIL_FORMAT = "email"
ONE_ADDRESS_MESSAGE = "Enter one email address, such as ana@example.com."


def validate_one_email(value: str) -> None:
    """One plain address: a field with `format: email` names one person. Steps address mail with such a value
    (`to: {{ input.customer_email }}`), so a list typed or sent into it ("a@x.com, b@y.com") must not pass as one,
    and neither may a display name or a quoted local part that could hide a separator."""
    if any(character in value for character in ',;<>"\r\n\t ') or value.count("@") != 1:
        raise ValidationError(ONE_ADDRESS_MESSAGE, code="invalid")
    try:
        validate_email(value)
    except ValidationError:
        raise ValidationError(ONE_ADDRESS_MESSAGE, code="invalid") from None


class OneEmailField(forms.EmailField):
    """An email address field that accepts exactly one plain address (see `validate_one_email`)."""

    default_validators = [validate_one_email]
    default_error_messages = {"invalid": ONE_ADDRESS_MESSAGE}


class TextListField(forms.CharField):
    """A list of short texts, typed one per line (an API client sends a JSON list)."""

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        if isinstance(value, list):
            return [str(item).strip() for item in value if str(item).strip()]
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(map(str, value)) if isinstance(value, list) else value

    def validate(self, value: Any) -> None:
        if self.required and not value:
            raise forms.ValidationError(self.error_messages["required"], code="required")


def is_record_list(spec: Any) -> bool:
    """Whether `spec` is a list of records whose fields are all text (`{"type": "array", "items": {"type":
    "object", "properties": {name: {"type": "string"}, ...}}}`), such as a conversation's messages."""
    if not isinstance(spec, dict) or spec.get("type") != "array" or not isinstance(spec.get("items"), dict):
        return False
    items = spec["items"]
    properties = items.get("properties")
    return (
        items.get("type") == "object"
        and isinstance(properties, dict)
        and bool(properties)
        and all(str(key).isidentifier() for key in properties)
        and all(isinstance(field, dict) and field.get("type") == "string" for field in properties.values())
    )


class RecordListField(forms.CharField):
    """A list of records of text fields. An API client sends a JSON list of objects; the Run form takes one
    record per line, its fields in order separated by ": " (a conversation reads `user: What is waiting?`),
    the last field taking the rest of the line."""

    def __init__(self, *, item_schema: dict[str, Any], max_items: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item_schema = item_schema
        self.names = list(item_schema["properties"])
        self.max_items = max_items

    def to_python(self, value: Any) -> Any:
        if isinstance(value, list):
            return value
        text = super().to_python(value) or ""
        records = []
        for number, line in enumerate((line for line in text.splitlines() if line.strip()), start=1):
            parts = line.split(": ", len(self.names) - 1)
            if len(parts) != len(self.names):
                raise forms.ValidationError(
                    f"Line {number}: write {' and '.join(self.names)} separated by a colon, as in "
                    f'"{": ".join(self.names)}".',
                    code="invalid",
                )
            records.append(dict(zip(self.names, (part.strip() for part in parts), strict=True)))
        return records

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list):
            return "\n".join(
                ": ".join(str(record.get(name, "")) for name in self.names) if isinstance(record, dict) else str(record)
                for record in value
            )
        return value

    def validate(self, value: Any) -> None:
        if self.required and not value:
            raise forms.ValidationError(self.error_messages["required"], code="required")
        if self.max_items is not None and len(value) > self.max_items:
            raise forms.ValidationError(f"At most {self.max_items} entries.", code="max_items")
        properties: dict[str, Any] = self.item_schema["properties"]
        required = set(self.item_schema.get("required", []))
        for number, record in enumerate(value, start=1):
            if not isinstance(record, dict):
                raise forms.ValidationError(f"Entry {number}: must be an object of {', '.join(self.names)}.")
            unknown = sorted(set(record) - set(properties))
            if unknown:
                raise forms.ValidationError(f'Entry {number}: "{unknown[0]}" is not one of {", ".join(self.names)}.')
            missing = [name for name in self.names if name in required and not record.get(name)]
            if missing:
                raise forms.ValidationError(f"Entry {number}: {missing[0]} is required.")
            for name, text in record.items():
                field = properties[name]
                if not isinstance(text, str):
                    raise forms.ValidationError(f"Entry {number}: {name} must be text.")
                if "enum" in field and text not in field["enum"]:
                    raise forms.ValidationError(
                        f"Entry {number}: {name} must be one of {', '.join(map(str, field['enum']))}."
                    )
                if field.get("maxLength") is not None and len(text) > field["maxLength"]:
                    raise forms.ValidationError(
                        f"Entry {number}: {name} is longer than {field['maxLength']} characters."
                    )


def _default_problem(spec: dict[str, Any]) -> str | None:
    """Why a field's default does not fit it (None when it does)."""
    value, kind = spec["default"], spec["type"]
    if kind == "object":
        return "cannot be set: a document is uploaded with each run"
    fits = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list) and all(isinstance(item, str) for item in value),
    }[kind]
    if not fits:
        return f"{value!r} is not a {'whole number' if kind == 'integer' else 'yes/no' if kind == 'boolean' else kind}"
    if "enum" in spec and value not in spec["enum"]:
        return f"{value!r} is not one of the options"
    if spec.get("format") == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            return f"{value!r} is not a date like 2026-12-31"
    if spec.get("format") == EMAIL_FORMAT and isinstance(value, str):
        try:
            validate_one_email(value)
        except ValidationError:
            return f"{value!r} is not one email address"
    return None


def is_document(spec: Any) -> bool:
    """Whether a property of an input schema is a document (a file uploaded with the run)."""
    return isinstance(spec, dict) and spec.get("type") == "object" and spec.get("format") == DOCUMENT_FORMAT


def document_field_names(schema: Any) -> list[str]:
    """The schema's document fields, in form order."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return [name for name in property_order(schema) if is_document((properties or {}).get(name))]


class DocumentInput(forms.FileInput):
    """A document file input. Its value is the uploaded file when there is one, else the field's value in the data
    (a run input from the API or a sub-workflow: the stored document's dict)."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={"accept": accept_attribute(), **(attrs or {})})

    def value_from_datadict(self, data: Any, files: Any, name: str) -> Any:
        if files and files.get(name) is not None:
            return files.get(name)
        return data.get(name)

    def value_omitted_from_data(self, data: Any, files: Any, name: str) -> bool:
        return name not in (files or {}) and name not in data


_DOCUMENT_KEYS = {"document": int, "name": str, "sha256": str, "pages": int, "text": str}


class DocumentField(forms.Field):
    """A document: an uploaded file (which the runs app stores and turns into the dict below) or, as a run's
    input, `{"document": id, "name": ..., "sha256": ..., "pages": n, "text": ...}`."""

    widget = DocumentInput
    is_document = True
    default_error_messages = {"invalid": f"Upload the document as a file: {supported_formats_sentence()}."}

    def to_python(self, value: Any) -> Any:
        if value in self.empty_values:
            return None
        if isinstance(value, UploadedFile):
            return value
        if isinstance(value, dict) and all(
            isinstance(value.get(key), kind) and not isinstance(value.get(key), bool)
            for key, kind in _DOCUMENT_KEYS.items()
        ):
            return {key: value[key] for key in _DOCUMENT_KEYS}
        raise forms.ValidationError(self.error_messages["invalid"], code="invalid")

    def has_changed(self, initial: Any, data: Any) -> bool:
        return data is not None


def _field_for(name: str, spec: dict[str, Any], required: bool) -> forms.Field:
    common: dict[str, Any] = {
        "label": spec.get("title") or name.replace("_", " ").capitalize(),
        "help_text": spec.get("description", ""),
        "required": required,
    }
    if "default" in spec:
        common["initial"] = spec["default"]
    kind = spec["type"]
    if is_document(spec):
        limits = f"A {supported_formats_sentence()} file with text (not a scan), up to 20 MB; a PDF up to 200 pages."
        common["help_text"] = f"{common['help_text']} {limits}".strip()
        return DocumentField(**common)
    if is_record_list(spec):
        names = ", ".join(spec["items"]["properties"])
        return RecordListField(
            item_schema=spec["items"],
            max_items=spec.get("maxItems"),
            widget=forms.Textarea(attrs={"rows": 4}),
            **{**common, "help_text": common["help_text"] or f"One per line: {names}, separated by a colon."},
        )
    if kind == "array":
        return TextListField(
            widget=forms.Textarea(attrs={"rows": 4}), **{**common, "help_text": common["help_text"] or "One per line."}
        )
    if kind == "string" and spec.get("format") == "date":
        return forms.DateField(widget=forms.DateInput(attrs={"type": "date"}), **common)
    if "enum" in spec:
        choices = [(value, str(value)) for value in spec["enum"]]
        field_class = forms.TypedChoiceField
        return field_class(
            choices=([("", "—")] if not required else []) + choices, coerce=_COERCE.get(kind, str), **common
        )
    if kind == "string" and spec.get("format") == EMAIL_FORMAT:
        return OneEmailField(max_length=spec.get("maxLength") or 254, **common)
    if kind == "string":
        widget = forms.Textarea(attrs={"rows": 8}) if spec.get("format") == "textarea" else forms.TextInput
        return forms.CharField(
            min_length=spec.get("minLength"), max_length=spec.get("maxLength"), widget=widget, strip=True, **common
        )
    if kind == "integer":
        return forms.IntegerField(min_value=spec.get("minimum"), max_value=spec.get("maximum"), **common)
    if kind == "number":
        return forms.FloatField(min_value=spec.get("minimum"), max_value=spec.get("maximum"), **common)
    # A required checkbox would force "true"; booleans are always optional and default to false.
    common["required"] = False
    return forms.BooleanField(**common)


def input_form_class(schema: dict[str, Any]) -> type[forms.Form]:
    """A Form class with one field per schema property, in schema order."""
    required = set(schema.get("required", []))
    properties = schema.get("properties", {})
    fields = {name: _field_for(name, properties[name], name in required) for name in property_order(schema)}
    return type("RunInputForm", (forms.Form,), fields)


def input_validate(schema: dict[str, Any], data: Any) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(cleaned values, {}) when `data` is valid for `schema`, else ({}, field → messages).

    Unknown keys are errors too: silently dropping a misspelt field would lose the user's input.
    """
    if not isinstance(data, dict):
        return {}, {"inputs": ["Must be an object of field values."]}
    properties = schema.get("properties", {})
    unknown = sorted(set(data) - set(properties))
    form_data = {key: value for key, value in data.items() if key in properties}
    # Form fields parse strings; JSON booleans arrive as real booleans and must stay so.
    form = input_form_class(schema)(data=form_data)
    errors: dict[str, list[str]] = {}
    if not form.is_valid():
        errors = {field: [str(message) for message in messages] for field, messages in form.errors.items()}
    for key in unknown:
        errors[key] = ["This field is not part of the workflow's input."]
    if errors:
        return {}, errors
    # Dates travel as ISO text: run inputs are JSON.
    return {
        key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in form.cleaned_data.items()
    }, {}
