"""Step settings as a form, generated from the step type's pydantic JSON Schema, and parsed back.

One definition drives validation and the builder's side panel: `form_fields` turns a schema and the step's
current config into a tree of `FormField`s (text, long text, template, expression, number, yes/no, choice,
list, key/value rows, nested group, and the extraction field table); `config_from_post` reads the posted
form back into a config. Values that do not parse (a word in a number field) are kept as typed, so the
draft saves them and the validator shows the problem under the field instead of losing the input.

Field names are dotted paths under "config." ("config.guardrails.mask_pii"); rows of lists and key/value
fields add an index ("config.fields.0.name").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from django.http import QueryDict

from apps.workflows.input_schema import ORDER_KEY, property_order

ROW_SPARES = 1  # empty rows offered at the end of key/value lists, for adding one without a round trip
TABLE_SPARES = 3  # empty rows at the end of the extraction field table: a first schema takes one save
SCHEMA_TYPES = {
    "string": "Text",
    "number": "Number",
    "integer": "Whole number",
    "boolean": "Yes / no",
    "array": "List of text",
    "enum": "One of",
}


@dataclass
class FormField:
    """One control of the side panel (see the module docstring)."""

    name: str
    label: str
    widget: str
    value: Any = None
    help: str = ""
    required: bool = False
    choices: list[tuple[str, str]] = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None
    rows: int = 3
    children: list[FormField] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    item_widget: str = "text"  # for key/value rows: the value's widget (text, template, cel)
    chips: list[tuple[str, str]] = field(default_factory=list)  # references a template/expression uses
    advanced: bool = False  # shown under "More settings", closed unless one of them has a problem
    key: str = ""  # a "fields" child: its key in the parent's mapping (keys may hold dots)
    apply: str = ""  # a select's button that saves the step so the fields that depend on it follow
    depends_on: str = ""  # a sibling setting: when it changes, this one is reset (its options were the old one's)

    @property
    def html_id(self) -> str:
        return "field-" + re.sub(r"[^A-Za-z0-9_-]", "-", self.name)


def _label(name: str, spec: dict[str, Any]) -> str:
    # pydantic titles every field from its name ("Json Body"); a title the step type gave ("JSON body") is kept.
    title = spec.get("title")
    if title and title != name.replace("_", " ").title():
        return str(title)
    return name.replace("_", " ").capitalize()


def _resolve(spec: dict[str, Any], defs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The spec with a `$ref` followed and an `anyOf [X, null]` unwrapped; and whether null is allowed."""
    nullable = False
    if "anyOf" in spec:
        options = [option for option in spec["anyOf"] if option.get("type") != "null"]
        nullable = len(options) < len(spec["anyOf"])
        if len(options) == 1:
            spec = {**options[0], **{k: v for k, v in spec.items() if k != "anyOf"}}
    if "$ref" in spec:
        target = defs.get(spec["$ref"].split("/")[-1], {})
        spec = {**target, **{k: v for k, v in spec.items() if k != "$ref"}}
    return spec, nullable


def _widget(spec: dict[str, Any]) -> str:
    hint = spec.get("x-widget")
    kind = spec.get("type")
    if hint == "schema-table":
        return "schema_table"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return "keyvalue"
    if kind == "object" and "properties" in spec:
        return "group"
    if "enum" in spec:
        return "select"
    if kind == "boolean":
        return "checkbox"
    if kind in ("integer", "number"):
        return kind
    if kind == "array" and spec.get("items", {}).get("type") == "string":
        return "lines"
    if kind == "array" and "properties" in spec.get("items", {}):
        return "rows"
    if kind == "string":
        if hint in ("template", "cel"):
            return hint
        return "text"
    return "json"


def _fields(
    schema: dict[str, Any], value: Any, prefix: str, defs: dict[str, Any], choices: dict[str, list[tuple[str, str]]]
) -> list[FormField]:
    value = value if isinstance(value, dict) else {}
    required = set(schema.get("required", []))
    result = []
    operations: dict[str, Any] = {}  # OpenAPI operations resolved for this group of settings, by setting name
    for name, raw_spec in schema.get("properties", {}).items():
        spec, nullable = _resolve(raw_spec, defs)
        path = f"{prefix}.{name}"
        if spec.get("x-unless") and value.get(str(spec["x-unless"])):
            continue  # replaced by what the other setting brings (an operation's method and path)
        if str(spec.get("x-widget", "")).startswith("openapi-"):
            openapi_field = _openapi_field(name, spec, value, path, choices, operations)
            if openapi_field is not None:
                result.append(openapi_field)
            continue
        widget = _widget(spec)
        current = value.get(name, spec.get("default"))
        form_field = FormField(
            name=path,
            label=_label(name, spec),
            widget=widget,
            value=current,
            help=str(spec.get("description") or raw_spec.get("description") or ""),
            required=name in required,
            minimum=spec.get("minimum", spec.get("exclusiveMinimum")),
            maximum=spec.get("maximum"),
            rows=int(spec.get("x-rows", 4)),
            advanced=bool(raw_spec.get("x-advanced") or spec.get("x-advanced")),
        )
        if spec.get("x-widget") in choices and widget == "lines":
            # Several things that exist (knowledge collections): one checkbox each; a named one that no longer
            # exists (or that this person may not use) stays listed and ticked, so opening the form never
            # changes the step.
            form_field.widget = "choices"
            chosen = [str(item) for item in current] if isinstance(current, list) else []
            known = choices[str(spec["x-widget"])]
            names = {v for v, _ in known}
            form_field.value = chosen
            form_field.choices = [*known, *((item, f"{item} (missing)") for item in chosen if item not in names)]
        elif spec.get("x-widget") in choices:
            # A choice among things that exist (model endpoints): a value that no longer exists stays listed,
            # so opening the form never changes the step.
            form_field.widget = "select"
            known = choices[str(spec["x-widget"])]
            missing = (
                []
                if current in (None, "") or current in {v for v, _ in known}
                else [(str(current), f"{current} (missing)")]
            )
            form_field.choices = [*known, *missing]
        elif widget == "select":
            form_field.choices = [("", "—")] if nullable or (name not in required and "default" not in spec) else []
            form_field.choices += [(str(option), str(option).replace("_", " ")) for option in spec["enum"]]
        elif widget == "group":
            form_field.children = _fields(spec, current, path, defs, choices)
        elif widget == "rows":
            item, _ = _resolve(spec["items"], defs)
            rows = current if isinstance(current, list) else []
            form_field.children = [
                FormField(
                    name=f"{path}.{index}",
                    label=f"{form_field.label} {index + 1}",
                    widget="group",
                    children=_fields(item, row, f"{path}.{index}", defs, choices),
                )
                for index, row in enumerate([*rows, *([{}] * ROW_SPARES)])
            ]
        elif widget == "keyvalue":
            form_field.item_widget = str(spec.get("x-widget") or "text")
            pairs = list(current.items()) if isinstance(current, dict) else []
            form_field.value = [
                (key, item, f"{form_field.html_id}-{index}-value")
                for index, (key, item) in enumerate([*pairs, *([("", "")] * ROW_SPARES)])
            ]
        elif widget == "lines" and isinstance(current, list):
            form_field.value = "\n".join(str(item) for item in current)
        elif widget == "json":
            form_field.value = "" if current is None else json.dumps(current, indent=2)
        elif widget == "schema_table" and not schema_table_fits(current):
            # Nothing the table cannot show is ever rewritten by it: such a schema is edited as JSON Schema.
            form_field.widget = "json"
            form_field.value = json.dumps(current, indent=2)
            form_field.help = (
                "This schema uses features the field table cannot show (nested objects, formats, limits), so it "
                "is edited as JSON Schema here."
            )
        elif widget == "schema_table":
            rows = schema_rows(current)
            form_field.value = rows + [SchemaRow()] * (TABLE_SPARES if len(rows) < 3 else ROW_SPARES)
        result.append(form_field)
    for form_field in result:
        # The setting an operation belongs to gets a button that shows that setting's operations.
        if form_field.name.rsplit(".", 1)[1] in operations.get("__of__", ()):
            form_field.apply = "Show its operations"
    return result


def form_fields(
    config_schema: dict[str, Any], config: dict[str, Any], choices: dict[str, list[tuple[str, str]]] | None = None
) -> list[FormField]:
    """The side panel's controls for a step type's config schema, filled with `config`. `choices` gives the
    options of fields that name things by `x-widget` ({"model-endpoint": [(name, label), ...]})."""
    return _fields(config_schema, config, "config", config_schema.get("$defs", {}), choices or {})


def attach_errors(fields: list[FormField], problems: list[tuple[str, str]]) -> list[str]:
    """Put each (path, message) under the field whose name is the longest prefix of "config.<path>"; returns
    the messages that fit no field (shown at the top of the panel)."""
    index: dict[str, FormField] = {}

    def collect(items: list[FormField]) -> None:
        for item in items:
            index[item.name] = item
            collect(item.children)

    collect(fields)
    unplaced = []
    for path, message in problems:
        parts = f"config.{path}".split(".") if path else []
        for end in range(len(parts), 1, -1):
            candidate = index.get(".".join(parts[:end]))
            if candidate is not None:
                candidate.errors.append(message)
                break
        else:
            unplaced.append(f"{path}: {message}" if path else message)
    return unplaced


# --- the extraction field table ---------------------------------------------------------------------------


@dataclass
class SchemaRow:
    """One field of an output schema as the table edits it."""

    name: str = ""
    type: str = "string"
    required: bool = True
    description: str = ""
    allowed: str = ""  # comma-separated allowed values, for text fields


_TABLE_FIELD_KEYS = frozenset({"type", "description", "enum", "items"})
_TABLE_TYPES = frozenset({"string", "number", "integer", "boolean", "array"})


def schema_table_fits(schema: Any) -> bool:
    """Whether the field table shows `schema` exactly, so saving the table cannot change it: an object of
    flat fields (text, numbers, yes/no, lists of text), each with at most a description and, for text, a list
    of allowed values."""
    if schema is None:
        return True
    if not isinstance(schema, dict) or set(schema) - {"type", "properties", "required", ORDER_KEY}:
        return False
    properties, required = schema.get("properties"), schema.get("required", [])
    if schema.get("type") != "object" or not isinstance(properties, dict) or not isinstance(required, list):
        return False
    for spec in properties.values():
        if not isinstance(spec, dict) or set(spec) - _TABLE_FIELD_KEYS:
            return False
        kind = spec.get("type")
        if not isinstance(kind, str) or kind not in _TABLE_TYPES or not isinstance(spec.get("description", ""), str):
            return False
        if ("items" in spec or kind == "array") and (kind != "array" or spec.get("items") != {"type": "string"}):
            return False
        enum = spec.get("enum")
        if enum is not None and (
            kind != "string" or not enum or not all(isinstance(v, str) and "," not in v for v in enum)
        ):
            return False
    return all(isinstance(name, str) and name in properties for name in required)


def schema_rows(schema: Any) -> list[SchemaRow]:
    """The table rows of an object schema; unknown shapes keep their type as "string" (raw view shows all)."""
    if not isinstance(schema, dict):
        return []
    required = set(schema.get("required") or [])
    rows = []
    properties = schema.get("properties") or {}
    for name in property_order(schema):
        spec = properties[name] if isinstance(properties[name], dict) else {}
        kind = spec.get("type", "string")
        if kind == "array":
            kind = "array"
        allowed = ", ".join(str(option) for option in spec.get("enum", []))
        rows.append(
            SchemaRow(
                name=str(name),
                type=kind if kind in SCHEMA_TYPES else "string",
                required=name in required,
                description=str(spec.get("description", "")),
                allowed=allowed,
            )
        )
    return rows


def schema_from_rows(rows: list[SchemaRow]) -> dict[str, Any] | None:
    """The JSON Schema of the table (None when it has no rows)."""
    properties: dict[str, Any] = {}
    required = []
    for row in rows:
        if not row.name:
            continue
        spec: dict[str, Any] = {"type": row.type}
        if row.type == "array":
            spec["items"] = {"type": "string"}
        allowed = [item.strip() for item in row.allowed.split(",") if item.strip()]
        if allowed and row.type == "string":
            spec["enum"] = allowed
        if row.description:
            spec["description"] = row.description
        properties[row.name] = spec
        if row.required:
            required.append(row.name)
    if not properties:
        return None
    # The order as listed: jsonb would otherwise sort the fields by name length (see property_order).
    return {"type": "object", "properties": properties, "required": required, ORDER_KEY: list(properties)}


# --- parsing the posted form back ----------------------------------------------------------------------------


def _number(text: str, kind: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text) if kind == "integer" else float(text)
    except ValueError:
        return text  # kept as typed: the validator reports it under the field


def _read(form_field: FormField, data: QueryDict) -> tuple[bool, Any]:
    """(present, value) for one field from the posted data; absent optional values fall back to defaults."""
    name, widget = form_field.name, form_field.widget
    if widget == "checkbox":
        return f"{name}.present" in data, name in data
    if widget == "choices":
        if f"{name}.present" not in data:
            return False, None
        return True, list(dict.fromkeys(value for value in data.getlist(name) if value)) or None
    if widget == "fields":
        if f"{name}.present" not in data:
            return False, None
        texts = {child.key: data.get(child.name, "") for child in form_field.children if child.name in data}
        return True, {key: text for key, text in texts.items() if text.strip()} or None
    if widget == "group":
        values = {}
        for child in form_field.children:
            present, value = _read(child, data)
            if present and value not in (None, ""):
                values[child.name.rsplit(".", 1)[1]] = value
        return bool(values) or form_field.required, values or None
    if widget == "rows":
        rows = []
        for child in form_field.children:
            _, row = _read(child, data)
            if row:
                rows.append(row)
        return True, rows
    if widget == "keyvalue":
        pairs: dict[str, str] = {}
        for index in range(int(data.get(f"{name}.count", 0) or 0)):
            key = data.get(f"{name}.{index}.key", "").strip()
            if key:
                pairs[key] = data.get(f"{name}.{index}.value", "")
        return f"{name}.count" in data, pairs
    if widget == "schema_table":
        rows = [
            SchemaRow(
                name=data.get(f"{name}.{index}.name", "").strip(),
                type=data.get(f"{name}.{index}.type", "string"),
                required=f"{name}.{index}.required" in data,
                description=data.get(f"{name}.{index}.description", "").strip(),
                allowed=data.get(f"{name}.{index}.allowed", ""),
            )
            for index in range(int(data.get(f"{name}.count", 0) or 0))
        ]
        return f"{name}.count" in data, schema_from_rows(rows)
    if name not in data:
        return False, None
    text = data.get(name, "")
    if widget in ("integer", "number"):
        return True, _number(text, widget)
    if widget == "lines":
        return True, [line.strip() for line in text.splitlines() if line.strip()]
    if widget == "json":
        if not text.strip():
            return True, None
        try:
            return True, json.loads(text)
        except ValueError:
            return True, text
    if widget == "select":
        return True, text or None
    return True, text


def config_from_post(fields: list[FormField], data: QueryDict, current: dict[str, Any]) -> dict[str, Any]:
    """The config the panel's posted form describes, over `current` (keys the form does not show stay)."""
    config = dict(current)
    for form_field in fields:
        key = form_field.name.rsplit(".", 1)[1]
        present, value = _read(form_field, data)
        if not present:
            continue
        if value in (None, "") and not form_field.required:
            config.pop(key, None)
        else:
            config[key] = value
    for form_field in fields:
        # Values chosen among the options of another setting do not survive that setting's change.
        if form_field.depends_on and config.get(form_field.depends_on) != current.get(form_field.depends_on):
            config.pop(form_field.name.rsplit(".", 1)[1], None)
    return config


# --- OpenAPI operations (http.request): the picker, and a form for the chosen operation's values ----------------


def _openapi_field(
    name: str,
    spec: dict[str, Any],
    config: dict[str, Any],
    path: str,
    choices: dict[str, list[tuple[str, str]]],
    operations: dict[str, Any],
) -> FormField | None:
    """The field of an `x-widget: openapi-*` setting, or None when it has nothing to show.

    "openapi-operation" picks an operation of the connection named by the sibling `x-operation-of`; its
    options come from the connection's OpenAPI document, and only for a connection among the person's
    `connection-http` choices (those she may use). "openapi-parameters" and "openapi-body" (after it, naming it
    by `x-operation-in`) become one text template per parameter or top-level body field of the chosen
    operation, required ones marked; values the operation does not have stay listed so they can be cleared.
    """
    from apps.connectors.openapi import describe_schema, operation_choices, operation_get

    widget, current = str(spec["x-widget"]), config.get(name)
    help_text = str(spec.get("description") or "")
    if widget == "openapi-operation":
        connection = str(config.get(str(spec.get("x-operation-of")), "") or "")
        operations.setdefault("__of__", set()).add(str(spec.get("x-operation-of")))
        usable = {value for value, _ in choices.get("connection-http", []) if value}
        if not connection and not current:
            return None
        options = operation_choices(connection) if connection in usable else None
        known = [("", "None: write the method and URL")]
        if options is None:
            help_text = (
                f'The connection "{connection}" has no OpenAPI document: an admin loads one on the '
                "connection's page. Until then, write the method and URL below."
                if connection
                else "Choose a connection first."
            )
        else:
            known += options
        operation = operation_get(connection, str(current)) if current and options is not None else None
        operations[name] = operation
        if operation is not None:
            help_text = f"{operation.method} {operation.path}" + (
                f": {operation.description}" if operation.description else ""
            )
        missing = [] if not current or current in {v for v, _ in known} else [(str(current), f"{current} (missing)")]
        return FormField(
            name=path,
            label="Operation",
            widget="select",
            value=current or "",
            help=help_text,
            choices=[*known, *missing],
            apply="Show its fields",
            depends_on=str(spec.get("x-operation-of") or ""),
        )
    operation = operations.get(str(spec.get("x-operation-in")))
    values = current if isinstance(current, dict) else {}
    children: list[FormField] = []
    if widget == "openapi-parameters":
        label = "Parameters"
        help_text = "Text templates: Insert puts in data from the run's input or an earlier step."
        for parameter in operation.parameters if operation is not None else ():
            where = {"path": "In the path", "query": "In the query string", "header": "A header"}[parameter.location]
            details = [where, describe_schema(parameter.schema), parameter.description]
            children.append(
                FormField(
                    name=f"{path}.{parameter.key}",
                    key=parameter.key,
                    label=parameter.name,
                    widget="template",
                    value=values.get(parameter.key, ""),
                    help=". ".join(part.rstrip(".") for part in details if part) + ".",
                    required=parameter.required,
                    rows=1,
                )
            )
    else:
        label = "Request body"
        body = operation.body if operation is not None else None
        help_text = (
            "One text template per field of the JSON body; numbers and yes/no values are sent as such. For a "
            "nested body, leave these empty and write the whole body under Body."
        )
        for item in body.fields() if body is not None else []:
            structured = item.schema.get("type") in ("object", "array")
            details = [describe_schema(item.schema), item.description]
            if structured:
                details.append("Give JSON, e.g. {{ steps.extract.lines | tojson }}")
            children.append(
                FormField(
                    name=f"{path}.{item.name}",
                    key=item.name,
                    label=item.name,
                    widget="template",
                    value=values.get(item.name, ""),
                    help=". ".join(part.rstrip(".") for part in details if part) + ".",
                    required=item.required,
                    rows=3 if structured else 1,
                )
            )
    shown = {child.key for child in children}
    for key, text in values.items():
        if key not in shown:
            children.append(
                FormField(
                    name=f"{path}.{key}",
                    key=str(key),
                    label=f"{key} (not in this operation: clear it)",
                    widget="template",
                    value=text,
                    rows=1,
                )
            )
    if not children:
        return None
    return FormField(
        name=path,
        label=label,
        widget="fields",
        help=help_text,
        children=children,
        depends_on=str(spec.get("x-operation-in") or ""),
    )
