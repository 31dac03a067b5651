"""The run form designer: a workflow's input schema as rows an analyst edits, and back.

Each row is one field of the "Run" form: its name (what steps refer to as `input.<name>`), label, kind,
whether it is required, help text, a default and, for a choice, its options. The schema written is the
subset `apps.workflows.input_schema` turns into the Run form; saved sample inputs stay in `examples`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apps.workflows.input_schema import DOCUMENT_FORMAT, ORDER_KEY, is_document, property_order

KINDS: dict[str, str] = {
    "short_text": "Short text",
    "long_text": "Long text",
    "number": "Number",
    "whole_number": "Whole number",
    "date": "Date",
    "choice": "Choice",
    "yes_no": "Yes / no",
    "text_list": "List of short texts",
    "document": "Document (file)",
}


@dataclass
class InputRow:
    """One field of the Run form as the designer edits it."""

    name: str = ""
    label: str = ""
    kind: str = "short_text"
    required: bool = False
    help: str = ""
    default: str = ""
    choices: str = ""  # comma-separated, for a choice
    errors: list[str] = field(default_factory=list)
    original: str = ""  # the field's name when the form was shown: what a rename renames
    extra: dict[str, Any] = field(default_factory=dict)  # what the designer does not show (limits, patterns): kept


def _kind(spec: dict[str, Any]) -> str:
    kind = spec.get("type")
    if is_document(spec):
        return "document"
    if kind == "boolean":
        return "yes_no"
    if kind == "integer":
        return "whole_number"
    if kind == "number":
        return "number"
    if kind == "array":
        return "text_list"
    if "enum" in spec:
        return "choice"
    if spec.get("format") == "date":
        return "date"
    if spec.get("format") == "textarea":
        return "long_text"
    return "short_text"


# The field settings the designer shows; any other (minLength, pattern, minimum...) is kept as it is.
_SHOWN = frozenset({"type", "format", "items", "enum", "title", "description", "default"})


def _default_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def rows_from_schema(schema: Any) -> list[InputRow]:
    """The designer's rows for an input schema (unknown shapes read as short text, their settings kept)."""
    if not isinstance(schema, dict):
        return []
    required = set(schema.get("required") or [])
    rows = []
    properties = schema.get("properties") or {}
    for name in property_order(schema):
        spec = properties[name] if isinstance(properties[name], dict) else {}
        rows.append(
            InputRow(
                name=str(name),
                label=str(spec.get("title", "")),
                kind=_kind(spec),
                required=name in required,
                help=str(spec.get("description", "")),
                default=_default_text(spec.get("default")),
                choices=", ".join(str(option) for option in spec.get("enum", [])),
                original=str(name),
                extra={key: value for key, value in spec.items() if key not in _SHOWN},
            )
        )
    return rows


def _default(row: InputRow) -> tuple[Any, str | None]:
    text = row.default.strip()
    if not text:
        return None, None
    if row.kind == "document":
        return None, "A document has no default: it is uploaded with each run."
    if row.kind == "yes_no":
        if text.lower() in ("yes", "true", "1"):
            return True, None
        if text.lower() in ("no", "false", "0"):
            return False, None
        return None, "A yes/no default is yes or no."
    if row.kind in ("number", "whole_number"):
        try:
            return (int(text) if row.kind == "whole_number" else float(text)), None
        except ValueError:
            return None, f"The default must be a {'whole ' if row.kind == 'whole_number' else ''}number."
    if row.kind == "text_list":
        return [item.strip() for item in text.split(",") if item.strip()], None
    if row.kind == "choice":
        options = [item.strip() for item in row.choices.split(",") if item.strip()]
        if text not in options:
            return None, "The default must be one of the options."
    return text, None


def schema_from_rows(rows: list[InputRow], *, examples: Any = None) -> tuple[dict[str, Any], bool]:
    """The input schema the rows describe, and whether every row was valid (each invalid row gets its
    `errors`; a row without a name is dropped; its problems never lose the other rows)."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    valid = True
    for row in rows:
        row.errors = []
        name = row.name.strip()
        if not name:
            continue
        if not name.isidentifier():
            row.errors.append("A field name uses letters, digits and _ and does not start with a digit.")
        elif name in properties:
            row.errors.append(f'Another field is already called "{name}".')
        if row.kind not in KINDS:
            row.errors.append("Choose a kind of field.")
        spec: dict[str, Any] = {}
        kind = row.kind
        spec["type"] = {
            "yes_no": "boolean",
            "whole_number": "integer",
            "number": "number",
            "text_list": "array",
            "document": "object",
        }.get(kind, "string")
        if kind == "long_text":
            spec["format"] = "textarea"
        elif kind == "date":
            spec["format"] = "date"
        elif kind == "text_list":
            spec["items"] = {"type": "string"}
        elif kind == "document":
            spec["format"] = DOCUMENT_FORMAT
        elif kind == "choice":
            options = [item.strip() for item in row.choices.split(",") if item.strip()]
            if not options:
                row.errors.append("A choice needs its options, separated by commas.")
            spec["enum"] = options
        if row.label.strip():
            spec["title"] = row.label.strip()
        if row.help.strip():
            spec["description"] = row.help.strip()
        default, problem = _default(row)
        if problem:
            row.errors.append(problem)
            spec["default"] = row.default.strip()  # kept as typed; the problems list names it until fixed
        elif default is not None:
            spec["default"] = default
        if row.errors:
            valid = False
            if name in properties:
                continue  # two fields cannot share a name: the second stays in the form, marked, until renamed
        properties[name] = {**row.extra, **spec}
        if row.required:
            required.append(name)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": required,
        ORDER_KEY: list(properties),
    }
    renamed = {row.original: row.name.strip() for row in rows if row.original and row.name.strip() != row.original}
    if isinstance(examples, list) and examples:
        schema["examples"] = [
            {
                renamed.get(key, key): value
                for key, value in example.items()
                if renamed.get(key, key) in properties or key == "label"
            }
            for example in examples
            if isinstance(example, dict)
        ]
    return schema, valid


def sample_added(schema: dict[str, Any], label: str, values: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The schema with one more saved sample (`values` already validated against it), and the change's words."""
    examples = list(schema.get("examples", []))
    label = label.strip()[:80] or f"Sample {len(examples) + 1}"
    return {**schema, "examples": [*examples, {"label": label, **values}]}, f'Save sample "{label}"'


def sample_removed(schema: dict[str, Any], index: int | None) -> tuple[dict[str, Any], str]:
    """The schema without saved sample number `index` (unchanged when there is none), and the change's words."""
    examples = list(schema.get("examples", []))
    if index is None or not 0 <= index < len(examples):
        return schema, "Change the run form"
    removed = examples.pop(index)
    name = removed.get("label", index + 1) if isinstance(removed, dict) else index + 1
    return {**schema, "examples": examples}, f'Delete sample "{name}"'
