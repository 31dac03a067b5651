"""Just enough JSON Schema for a stand-in model: check a value against a schema, build a valid one.

The development server must answer a constrained-generation request (TGI `grammar`, OpenAI
`response_format`) with JSON that satisfies the requested schema, as a real server with guided decoding
would. It runs as its own process from the runtime requirements only, so it cannot lean on the
`jsonschema` package (a test-only dependency); this module covers the keywords that structured-output
schemas use in practice: type, properties, required, additionalProperties, items, prefixItems, enum,
const, min/max (length, items, value), anyOf/oneOf/allOf, local `$ref`, and regex `pattern`.
Keywords it does not know are ignored, the same leniency guided decoders have.
"""

from __future__ import annotations

import math
import re
from typing import Any

_MAX_DEPTH = 32


class SchemaError(ValueError):
    """The schema itself cannot be used (e.g. a `$ref` that points nowhere)."""


def _resolve(schema: Any, root: Any, depth: int) -> Any:
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        if depth > _MAX_DEPTH:
            raise SchemaError("schema references nest too deeply")
        ref: str = schema["$ref"]
        if not ref.startswith("#"):
            raise SchemaError(f"only local references are supported, got {ref!r}")
        target: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise SchemaError(f"reference {ref!r} points nowhere")
        schema = target
        depth += 1
    return schema


def _type_matches(value: Any, type_name: str) -> bool:
    if type_name == "null":
        return value is None
    if type_name == "boolean":
        return isinstance(value, bool)
    if type_name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if type_name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_name == "string":
        return isinstance(value, str)
    if type_name == "array":
        return isinstance(value, list)
    if type_name == "object":
        return isinstance(value, dict)
    return True


def is_valid(value: Any, schema: Any, root: Any | None = None) -> bool:
    """Whether `value` satisfies `schema` (for the keywords this module knows)."""
    try:
        return _valid(value, schema, schema if root is None else root, 0)
    except SchemaError:
        return False


def _valid(value: Any, schema: Any, root: Any, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        raise SchemaError("schema nests too deeply")
    if schema is True or schema is None:
        return True
    if schema is False:
        return False
    if not isinstance(schema, dict):
        return True
    schema = _resolve(schema, root, depth)
    if not isinstance(schema, dict):
        return True

    types = schema.get("type")
    if isinstance(types, str):
        types = [types]
    if types is not None and not any(_type_matches(value, t) for t in types):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False

    if isinstance(value, bool):
        pass
    elif isinstance(value, int | float):
        if "minimum" in schema and value < schema["minimum"]:
            return False
        if "maximum" in schema and value > schema["maximum"]:
            return False
        exclusive_min = schema.get("exclusiveMinimum")
        if isinstance(exclusive_min, int | float) and not isinstance(exclusive_min, bool) and value <= exclusive_min:
            return False
        exclusive_max = schema.get("exclusiveMaximum")
        if isinstance(exclusive_max, int | float) and not isinstance(exclusive_max, bool) and value >= exclusive_max:
            return False
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return False
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return False
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                if re.search(pattern, value) is None:
                    return False
            except re.error:
                pass
    elif isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            return False
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return False
        prefix = schema.get("prefixItems")
        rest = value
        if isinstance(prefix, list):
            for item, item_schema in zip(value, prefix, strict=False):
                if not _valid(item, item_schema, root, depth + 1):
                    return False
            rest = value[len(prefix) :]
        items = schema.get("items")
        if isinstance(items, list):  # draft-04 tuple form
            for item, item_schema in zip(value, items, strict=False):
                if not _valid(item, item_schema, root, depth + 1):
                    return False
        elif items is not None and not all(_valid(item, items, root, depth + 1) for item in rest):
            return False
    elif isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return False
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            properties = {}
        additional = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                if not _valid(item, properties[key], root, depth + 1):
                    return False
            elif additional is False or (
                isinstance(additional, dict) and not _valid(item, additional, root, depth + 1)
            ):
                return False
        if len(value) < schema.get("minProperties", 0):
            return False

    if "allOf" in schema and not all(_valid(value, s, root, depth + 1) for s in schema["allOf"]):
        return False
    if "anyOf" in schema and not any(_valid(value, s, root, depth + 1) for s in schema["anyOf"]):
        return False
    if "oneOf" in schema and sum(1 for s in schema["oneOf"] if _valid(value, s, root, depth + 1)) != 1:
        return False
    return not ("not" in schema and _valid(value, schema["not"], root, depth + 1))


_FORMAT_EXAMPLES = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def example_value(schema: Any, root: Any | None = None) -> Any:
    """A deterministic value valid for `schema`, built the way the dev server documents.

    Objects get every declared property, enums their first value, strings a short word, numbers 0 (or
    the lower bound), arrays one item (or `minItems`), booleans false. Unions take their first branch
    that yields a valid value.
    """
    return _example(schema, schema if root is None else root, 0, "value")


def _example(schema: Any, root: Any, depth: int, name: str) -> Any:
    if depth > _MAX_DEPTH:
        return None
    if not isinstance(schema, dict):
        return None
    schema = _resolve(schema, root, depth)
    if not isinstance(schema, dict):
        return None

    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema and _valid(schema["default"], schema, root, depth):
        return schema["default"]
    for keyword in ("anyOf", "oneOf"):
        branches = schema.get(keyword)
        if isinstance(branches, list) and branches:
            for branch in branches:
                candidate = _example(branch, root, depth + 1, name)
                if _valid(candidate, schema, root, depth):
                    return candidate
            return _example(branches[0], root, depth + 1, name)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(part, root, depth + 1)
            if isinstance(part, dict):
                for key, value in part.items():
                    if key == "properties" and isinstance(value, dict):
                        merged.setdefault("properties", {}).update(value)
                    elif key == "required" and isinstance(value, list):
                        merged["required"] = [*merged.get("required", []), *value]
                    else:
                        merged.setdefault(key, value)
        return _example(merged, root, depth + 1, name)

    types = schema.get("type")
    if isinstance(types, list):
        non_null = [t for t in types if t != "null"]
        type_name = non_null[0] if non_null else "null"
    elif isinstance(types, str):
        type_name = types
    elif "properties" in schema:
        type_name = "object"
    elif "items" in schema or "prefixItems" in schema:
        type_name = "array"
    else:
        type_name = "string"

    if type_name == "object":
        properties = schema.get("properties") or {}
        result: dict[str, Any] = {}
        for key, sub in properties.items():
            result[key] = _example(sub, root, depth + 1, key)
        return result
    if type_name == "array":
        prefix = schema.get("prefixItems")
        items: list[Any] = []
        if isinstance(prefix, list):
            items = [_example(s, root, depth + 1, name) for s in prefix]
        count = max(1, int(schema.get("minItems", 0))) - len(items)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]) - len(items))
        item_schema = schema.get("items", {})
        if isinstance(item_schema, list):
            return [_example(s, root, depth + 1, name) for s in item_schema]
        items.extend(_example(item_schema, root, depth + 1, name) for _ in range(max(0, count)))
        return items
    if type_name in ("integer", "number"):
        return _number(schema, integer=type_name == "integer")
    if type_name == "boolean":
        return False
    if type_name == "null":
        return None
    return _string(schema, name)


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    def bound(key: str) -> float | None:
        value = schema.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    value: float = 0
    minimum, maximum = bound("minimum"), bound("maximum")
    exclusive_min, exclusive_max = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    if minimum is not None:
        value = max(value, math.ceil(minimum) if integer else minimum)
    if exclusive_min is not None and value <= exclusive_min:
        value = math.floor(exclusive_min) + 1 if integer else exclusive_min + 0.5
    if maximum is not None and value > maximum:
        value = math.floor(maximum) if integer else maximum
    if exclusive_max is not None and value >= exclusive_max:
        value = math.ceil(exclusive_max) - 1 if integer else exclusive_max - 0.5
    if integer or float(value).is_integer():
        return int(value)
    return float(value)


def _string(schema: dict[str, Any], name: str) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMAT_EXAMPLES:
        text = _FORMAT_EXAMPLES[fmt]
    else:
        pattern = schema.get("pattern")
        text = "example"
        if isinstance(pattern, str):
            generated = regex_example(pattern)
            if generated is not None:
                text = generated
    min_length = int(schema.get("minLength", 0))
    if len(text) < min_length:
        text = text + "x" * (min_length - len(text))
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text


def regex_example(pattern: str) -> str | None:
    """The shortest-ish deterministic string that `pattern` fully matches, or None if unsure.

    Walks Python's own parse of the pattern, so it covers what `re` understands without a regex
    generator dependency. The result is always checked with `re.fullmatch` before it is returned.
    """
    try:
        from re import _parser as sre_parse  # type: ignore[attr-defined]  # stable since 3.11
    except ImportError:  # pragma: no cover - older interpreters
        import sre_parse

    try:
        parsed = sre_parse.parse(pattern)
        text = _emit(parsed, sre_parse, 0)
    except (re.error, RecursionError, ValueError, TypeError, IndexError):
        return None
    if text is None:
        return None
    try:
        return text if re.fullmatch(pattern, text) else None
    except re.error:
        return None


def _emit(parsed: Any, sre: Any, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None
    out: list[str] = []
    for op, arg in parsed:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("a" if arg != ord("a") else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            char = _first_in_set(arg)
            if char is None:
                return None
            out.append(char)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _high, sub = arg
            piece = _emit(sub, sre, depth + 1)
            if piece is None:
                return None
            out.append(piece * max(int(low), 0))
        elif name == "SUBPATTERN":
            piece = _emit(arg[-1], sre, depth + 1)
            if piece is None:
                return None
            out.append(piece)
        elif name == "ATOMIC_GROUP":
            piece = _emit(arg, sre, depth + 1)
            if piece is None:
                return None
            out.append(piece)
        elif name == "BRANCH":
            piece = _emit(arg[1][0], sre, depth + 1)
            if piece is None:
                return None
            out.append(piece)
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue
        else:
            return None
    return "".join(out)


def _first_in_set(items: Any) -> str | None:
    negate = False
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif negate:
            continue
        elif name == "LITERAL":
            return chr(arg)
        elif name == "RANGE":
            return chr(arg[0])
        elif name == "CATEGORY":
            category = str(arg)
            if "DIGIT" in category and "NOT" not in category:
                return "0"
            if "SPACE" in category and "NOT" not in category:
                return " "
            return "a"
    if negate:
        for candidate in "a0 _-":
            excluded = False
            for op, arg in items:
                name = str(op)
                if (name == "LITERAL" and chr(arg) == candidate) or (
                    name == "RANGE" and arg[0] <= ord(candidate) <= arg[1]
                ):
                    excluded = True
            if not excluded:
                return candidate
    return None
