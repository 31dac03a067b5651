"""OpenAPI documents of HTTP connections: parse one (3.0 or 3.1, JSON or YAML) into the operations an
`http.request` step can call, store it on the connection, and build a request for one operation.

Parsing resolves every local `$ref` (`#/components/...`), refuses references to other files or URLs, and caps
the document's size, the number of operations and how deep and how large resolved schemas may grow (a
recursive schema is cut where it recurses: the cut accepts any value). OpenAPI 3.0's schema dialect is
rewritten as JSON Schema (`nullable`, boolean `exclusiveMinimum`), so one validator checks bodies of both
versions.

A step names an operation by its `operationId` (or "METHOD /path" when the document gives none), and its
parameters by name ("in:name" when two parameters of the operation share a name). At run time
`build_request` turns the step's rendered templates into a path with URL-encoded path parameters, a query
string, headers and a JSON body typed by the schema (numbers and booleans as JSON values), validated before
anything is sent.

Writes (`openapi_document_load`, `openapi_document_fetch`, `openapi_document_remove`) are services: managers
only, audited in the same transaction (source, title, hash and count; never the text). Reads take a connection
its caller has already been allowed to see.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import yaml
from django.apps import apps as django_apps
from django.db import transaction
from django.utils import timezone
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.connectors import kinds
from apps.connectors.models import Connection, OpenApiDocument, OpenApiOperation
from apps.connectors.rules import user_manages_connection
from apps.connectors.runtime import (
    ConnectionFailed,
    ConnectionUnavailable,
    http_auth_headers,
    join_url,
    redact,
    resolve,
    secret_needles,
)
from apps.core import http
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed

MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
MAX_OPERATIONS = 1000
MAX_PARAMETERS = 100  # per operation
MAX_SCHEMA_DEPTH = 24  # nesting of a resolved schema; deeper parts accept any value
MAX_RESOLVED_NODES = 200_000  # the whole document's resolved schemas; refs reused many times multiply
METHODS = ("get", "post", "put", "patch", "delete")  # what http.request sends
LOCATIONS = ("path", "query", "header")
# OpenAPI: header parameters with these names are ignored (the request's own machinery sets them).
_IGNORED_HEADERS = {"accept", "content-type", "authorization"}
# Keywords whose value is a schema, a map of schemas, or a list of schemas (JSON Schema 2020-12 and 3.0).
_SCHEMA_KEYWORDS = {
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_JSON_MEDIA = re.compile(r"^application/([\w.+-]+\+)?json$")
_VERSION = re.compile(r"^3\.(?P<minor>\d+)(\.\d+)?(-[\w.]+)?$")


def _refusal(message: str) -> ValidationFailed:
    return ValidationFailed(message, fields={"document": [message]})


# --- what a parsed operation is ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One path, query or header parameter. `key` is what a step's `parameters` name it by."""

    name: str
    location: str
    key: str
    required: bool = False
    description: str = ""
    schema: dict[str, Any] = field(default_factory=dict)
    explode: bool = True  # query arrays: repeated (?tag=a&tag=b) or joined by commas (?tag=a,b)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.location,
            "key": self.key,
            "required": self.required,
            "description": self.description,
            "schema": self.schema,
            "explode": self.explode,
        }


@dataclass(frozen=True)
class BodyField:
    """A top-level property of a JSON request body: what a step's `body_fields` name it by."""

    name: str
    required: bool
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class RequestBody:
    """An operation's request body: its media type, and its JSON Schema when the body is JSON (else None)."""

    content_type: str
    required: bool = False
    description: str = ""
    schema: dict[str, Any] | None = None
    # The document's order of the top-level fields: a jsonb column keeps object keys in an order of its own.
    order: tuple[str, ...] = ()

    @property
    def is_json(self) -> bool:
        return self.schema is not None

    def fields(self) -> list[BodyField]:
        """The body's top-level properties (read-only ones are the server's and are never sent); empty when the
        body is not an object with properties (it is then written whole, as the raw body)."""
        schema = self.schema or {}
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return []
        required = set(schema.get("required") or [])
        names = [name for name in self.order if name in properties]
        names += [name for name in properties if name not in names]
        return [
            BodyField(
                name=str(name),
                required=name in required,
                description=str(spec.get("description") or spec.get("title") or "") if isinstance(spec, dict) else "",
                schema=spec if isinstance(spec, dict) else {},
            )
            for name, spec in ((name, properties[name]) for name in names)
            if not (isinstance(spec, dict) and spec.get("readOnly"))
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "content_type": self.content_type,
            "required": self.required,
            "description": self.description,
            "schema": self.schema,
            "order": list(self.order),
        }


@dataclass(frozen=True)
class Operation:
    """One operation a step can call (see the module docstring)."""

    operation_id: str
    method: str
    path: str
    summary: str = ""
    description: str = ""
    deprecated: bool = False
    parameters: tuple[Parameter, ...] = ()
    body: RequestBody | None = None

    @property
    def label(self) -> str:
        """How pickers list it: "POST /invoices · Create an invoice"."""
        text = f"{self.method} {self.path}"
        return f"{text} · {self.summary}" if self.summary else text

    def spec(self) -> dict[str, Any]:
        """What is stored beside the operation's id, method, path and summary."""
        return {
            "description": self.description,
            "deprecated": self.deprecated,
            "parameters": [parameter.as_dict() for parameter in self.parameters],
            "body": self.body.as_dict() if self.body else None,
        }

    @classmethod
    def from_row(cls, row: OpenApiOperation) -> Operation:
        spec = row.spec if isinstance(row.spec, dict) else {}
        body = spec.get("body")
        return cls(
            operation_id=row.operation_id,
            method=row.method,
            path=row.path,
            summary=row.summary,
            description=str(spec.get("description", "")),
            deprecated=bool(spec.get("deprecated")),
            parameters=tuple(
                Parameter(
                    name=item["name"],
                    location=item["in"],
                    key=item["key"],
                    required=bool(item.get("required")),
                    description=str(item.get("description", "")),
                    schema=item.get("schema") or {},
                    explode=bool(item.get("explode", True)),
                )
                for item in spec.get("parameters", [])
            ),
            body=RequestBody(
                content_type=str(body["content_type"]),
                required=bool(body.get("required")),
                description=str(body.get("description", "")),
                schema=body.get("schema"),
                order=tuple(str(name) for name in body.get("order") or ()),
            )
            if isinstance(body, dict)
            else None,
        )


@dataclass
class ParsedDocument:
    """A parsed document: versions, title, its operations, and notes on what was left out."""

    openapi_version: str
    title: str
    api_version: str
    operations: list[Operation]
    notes: list[str]


# --- reading the text -------------------------------------------------------------------------------------------


class _NoAliasLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: an alias can make a small text expand into a huge document
    (each alias a pointer to a node that may itself hold aliases), and OpenAPI reuses by `$ref` instead."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in an OpenAPI document", event.start_mark
            )
        return super().compose_node(parent, index)


def document_load(data: bytes | str) -> dict[str, Any]:
    """The document in `data` (JSON, or YAML), as a mapping. Raises ValidationFailed (field "document") for
    text over `MAX_DOCUMENT_BYTES`, text that is neither, or anything but a mapping at the top."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise _refusal(
            f"The document is too large: {len(raw) / 1_048_576:.1f} MB, the most is "
            f"{MAX_DOCUMENT_BYTES // 1_048_576} MB."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _refusal("The document is not text (UTF-8): give the OpenAPI document as JSON or YAML.") from None
    if not text.strip():
        raise _refusal("The document is empty.")
    try:
        document = json.loads(text)
    except ValueError:
        try:
            document = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise _refusal(f"The document is neither JSON nor valid YAML{where}: {problem}.") from None
        except RecursionError:
            raise _refusal("The document nests too deeply to be read.") from None
    if not isinstance(document, dict):
        raise _refusal('This is not an OpenAPI document: it must be a mapping with an "openapi" field at the top.')
    return document


# --- resolving references ---------------------------------------------------------------------------------------


def _refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every `$ref` in the document, with where it is (a JSON pointer)."""
    stack: list[tuple[Any, str]] = [(node, where)]
    while stack:
        current, at = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                if key == "$ref":
                    yield (value if isinstance(value, str) else repr(value)), at
                else:
                    stack.append((value, f"{at}/{str(key).replace('~', '~0').replace('/', '~1')}"))
        elif isinstance(current, list):
            stack.extend((value, f"{at}/{index}") for index, value in enumerate(current))


class _Resolver:
    """Local `$ref`s followed through the document, with a budget on what resolution may produce."""

    def __init__(self, document: dict[str, Any], is_30: bool) -> None:
        self.document = document
        self.is_30 = is_30
        self.budget = MAX_RESOLVED_NODES

    def target(self, ref: str) -> Any:
        if ref == "#":
            return self.document
        node: Any = self.document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _refusal(f'The reference "{ref}" points at nothing in the document.')
        return node

    def follow(self, node: Any, seen: tuple[str, ...] = ()) -> tuple[Any, tuple[str, ...]]:
        """`node` with `$ref`s at its top followed (siblings of a `$ref` kept over the target's keys); and the
        references followed, for cycle detection."""
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen:
                return {"x-recursive": ref.rsplit("/", 1)[-1]}, seen
            seen = (*seen, ref)
            target = self.target(ref)
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            node = {**target, **siblings} if isinstance(target, dict) else target
        return node, seen

    def schema(self, node: Any, seen: tuple[str, ...] = (), depth: int = 0) -> dict[str, Any]:
        """A JSON Schema with every local reference resolved; cut (accepting any value) where it recurses or
        nests deeper than MAX_SCHEMA_DEPTH."""
        self.budget -= 1
        if self.budget < 0:
            raise _refusal(
                f"The document's schemas are too large once their references are resolved (more than "
                f"{MAX_RESOLVED_NODES:,} parts); give a smaller document, e.g. only the operations you need."
            )
        if isinstance(node, bool):
            return {} if node else {"not": {}}
        node, seen = self.follow(node, seen)
        if not isinstance(node, dict):
            return {}
        if depth >= MAX_SCHEMA_DEPTH or "x-recursive" in node:
            return {key: value for key, value in node.items() if key in ("description", "x-recursive")}
        result: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SCHEMA_KEYWORDS and isinstance(value, dict | bool):
                result[key] = self.schema(value, seen, depth + 1)
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                result[key] = {str(name): self.schema(item, seen, depth + 1) for name, item in value.items()}
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                result[key] = [self.schema(item, seen, depth + 1) for item in value]
            elif key == "items" and isinstance(value, list):  # draft 4 tuples, seen in 3.0 documents
                result["prefixItems"] = [self.schema(item, seen, depth + 1) for item in value]
            elif key != "$ref":
                result[key] = value
        return _json_schema(result) if self.is_30 else result


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.0 schema object as JSON Schema: `nullable` becomes a "null" type, and boolean
    `exclusiveMinimum`/`exclusiveMaximum` become the numbers they qualify."""
    schema = dict(schema)
    if schema.pop("nullable", False) is True:
        kind = schema.get("type")
        if isinstance(kind, str):
            schema["type"] = [kind, "null"]
            if isinstance(schema.get("enum"), list) and None not in schema["enum"]:
                schema["enum"] = [*schema["enum"], None]
        elif kind is None:
            schema = {"anyOf": [schema, {"type": "null"}]}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        flag = schema.get(bound)
        if isinstance(flag, bool):
            del schema[bound]
            if flag and limit in schema:
                schema[bound] = schema.pop(limit)
    return schema


# --- parsing ----------------------------------------------------------------------------------------------------


def _text(value: Any, limit: int) -> str:
    return str(value).strip()[:limit] if isinstance(value, str | int | float) else ""


def document_parse(document: dict[str, Any]) -> ParsedDocument:
    """The operations of an OpenAPI 3.0 or 3.1 document (see the module docstring). Raises ValidationFailed
    (field "document") with one clear sentence: not OpenAPI, a version we do not read, a reference outside the
    document or to nothing, too many operations, schemas too large, or no operation a step can call."""
    version = document.get("openapi")
    if not isinstance(version, str):
        if "swagger" in document:
            raise _refusal(
                f"This is a Swagger {document.get('swagger')} document; convert it to OpenAPI 3 first "
                "(most API tools export OpenAPI 3 directly)."
            )
        raise _refusal('This is not an OpenAPI document: it has no "openapi" field naming its version.')
    match = _VERSION.match(version.strip())
    if not match or match["minor"] not in ("0", "1"):
        raise _refusal(f"OpenAPI {version[:20]} is not supported: give an OpenAPI 3.0 or 3.1 document.")
    for ref, where in _refs(document):
        if not ref.startswith("#"):
            raise _refusal(
                f'The document refers to "{ref[:200]}" (at {where[:200]}), outside itself. Only references inside '
                'the document ("#/components/...") can be used: bundle it into one file first.'
            )
    resolver = _Resolver(document, is_30=match["minor"] == "0")
    info = document.get("info") if isinstance(document.get("info"), dict) else {}
    assert isinstance(info, dict)
    paths = document.get("paths")
    if paths is not None and not isinstance(paths, dict):
        raise _refusal('The document\'s "paths" must be a mapping of paths to their operations.')
    operations: list[Operation] = []
    notes: list[str] = []
    taken: set[str] = set()
    for path, item in (paths or {}).items():
        if not isinstance(path, str) or not path.startswith("/"):
            notes.append(f'Skipped "{str(path)[:100]}": a path starts with "/".')
            continue
        item, _ = resolver.follow(item)
        if not isinstance(item, dict):
            continue
        shared: list[Any] = item["parameters"] if isinstance(item.get("parameters"), list) else []
        for method, raw in item.items():
            if method in ("head", "options", "trace"):
                notes.append(
                    f"Skipped {method.upper()} {path}: the HTTP request step sends GET, POST, PUT, PATCH and DELETE."
                )
                continue
            if method not in METHODS or not isinstance(raw, dict):
                continue
            operation = _operation(resolver, path, method.upper(), raw, shared, taken, notes)
            taken.add(operation.operation_id)
            operations.append(operation)
            if len(operations) > MAX_OPERATIONS:
                raise _refusal(f"The document has more than {MAX_OPERATIONS} operations; give a smaller one.")
    if not operations:
        raise _refusal(
            "The document lists no operation the HTTP request step can call (GET, POST, PUT, PATCH or DELETE "
            'under "paths").'
        )
    servers: list[Any] = document["servers"] if isinstance(document.get("servers"), list) else []
    named = [str(server["url"])[:200] for server in servers if isinstance(server, dict) and server.get("url")]
    if named:
        notes.insert(
            0,
            "The document names these servers: " + ", ".join(named[:5]) + ". Its paths are called "
            "under the connection's base URL, which should end where these end.",
        )
    return ParsedDocument(
        openapi_version=version.strip()[:20],
        title=_text(info.get("title"), 300),
        api_version=_text(info.get("version"), 100),
        operations=operations,
        notes=notes[:50],
    )


def _operation(
    resolver: _Resolver,
    path: str,
    method: str,
    raw: dict[str, Any],
    shared: list[Any],
    taken: set[str],
    notes: list[str],
) -> Operation:
    label = f"{method} {path}"
    operation_id = _text(raw.get("operationId"), 300)
    if not operation_id or operation_id in taken:
        if operation_id:
            notes.append(f'{label}: its operationId "{operation_id}" is used twice; this one is named "{label}".')
        operation_id = label[:300]
    # Operation-level parameters override the path's by (name, location).
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    own: list[Any] = raw["parameters"] if isinstance(raw.get("parameters"), list) else []
    for item in [*shared, *own]:
        parameter, seen = resolver.follow(item)
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            continue
        location = parameter.get("in")
        if location == "cookie":
            notes.append(f'{label}: the cookie parameter "{parameter["name"]}" is not sent.')
            continue
        if location not in LOCATIONS:
            continue
        if location == "header" and parameter["name"].lower() in _IGNORED_HEADERS:
            continue
        merged[(parameter["name"], str(location))] = {**parameter, "__seen": seen}
    if len(merged) > MAX_PARAMETERS:
        raise _refusal(f"{label} has more than {MAX_PARAMETERS} parameters.")
    names = [name for name, _ in merged]
    parameters = []
    for (name, location), parameter in merged.items():
        schema_node = parameter.get("schema")
        if schema_node is None and isinstance(parameter.get("content"), dict):
            # A parameter described by a media type (rare): its first media type's schema.
            first: Any = next(iter(parameter["content"].values()), {})
            schema_node = first.get("schema") if isinstance(first, dict) else None
        schema = resolver.schema(schema_node, parameter["__seen"]) if schema_node is not None else {}
        style = parameter.get("style")
        parameters.append(
            Parameter(
                name=name[:200],
                location=location,
                key=name if names.count(name) == 1 else f"{location}:{name}",
                required=location == "path" or parameter.get("required") is True,
                description=_text(parameter.get("description"), 1000),
                schema=schema,
                explode=parameter.get("explode", style in (None, "form")) is True,
            )
        )
    for name in re.findall(r"{([^}/]+)}", path):
        if (name, "path") not in merged:
            # A template the document does not describe still needs a value.
            parameters.append(Parameter(name=name, location="path", key=name, required=True))
    return Operation(
        operation_id=operation_id,
        method=method,
        path=path[:1000],
        summary=_text(raw.get("summary"), 500),
        description=_text(raw.get("description"), 2000),
        deprecated=raw.get("deprecated") is True,
        parameters=tuple(parameters),
        body=_body(resolver, raw.get("requestBody")),
    )


def _body(resolver: _Resolver, node: Any) -> RequestBody | None:
    body, seen = resolver.follow(node)
    if not isinstance(body, dict) or not isinstance(body.get("content"), dict) or not body["content"]:
        return None
    content: dict[str, Any] = body["content"]
    chosen = next((media for media in content if _JSON_MEDIA.match(str(media).split(";")[0].strip())), None)
    required, description = body.get("required") is True, _text(body.get("description"), 1000)
    if chosen is None:
        return RequestBody(content_type=str(next(iter(content)))[:100], required=required, description=description)
    media = content[chosen] if isinstance(content[chosen], dict) else {}
    schema = resolver.schema(media.get("schema", {}), seen)
    properties = schema.get("properties")
    order = tuple(str(name) for name in properties) if isinstance(properties, dict) else ()
    return RequestBody(
        content_type=str(chosen)[:100], required=required, description=description, schema=schema, order=order
    )


def describe_schema(schema: dict[str, Any]) -> str:
    """A schema in a few words, for help texts: "Whole number, 1 to 100", "One of: open, paid"."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), None)
    words = {
        "string": "Text",
        "integer": "Whole number",
        "number": "Number",
        "boolean": "Yes or no (true / false)",
        "array": "A list (JSON)",
        "object": "An object (JSON)",
    }
    if isinstance(schema.get("enum"), list):
        text = "One of: " + ", ".join(str(value) for value in schema["enum"][:12] if value is not None)
    else:
        text = words.get(str(kind), "Any value")
        if kind == "string" and schema.get("format"):
            text += f" ({schema['format']})"
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        text += f", {low} to {high}"
    elif low is not None:
        text += f", at least {low}"
    elif high is not None:
        text += f", at most {high}"
    if schema.get("exclusiveMinimum") is not None:
        text += f", more than {schema['exclusiveMinimum']}"
    if schema.get("exclusiveMaximum") is not None:
        text += f", less than {schema['exclusiveMaximum']}"
    return text


# --- building a request at run time -----------------------------------------------------------------------------


class RequestInvalid(Exception):
    """The step's values do not fit the operation; `message` names the parameter or body field."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class BuiltRequest:
    """What `build_request` makes: method, the URL path with its query string, headers, and the body text."""

    method: str
    url: str
    headers: dict[str, str]
    body: str
    content_type: str = ""


_TRUE, _FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}


def _main_type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds_named = [item for item in kind if item != "null"]
        return str(kinds_named[0]) if len(kinds_named) == 1 else None
    return str(kind) if isinstance(kind, str) else None


def _structured(text: str) -> Any:
    """A rendered list or object: JSON, or the Python form a template prints for a list or dict."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise ValueError("give JSON, e.g. with the template filter | tojson") from None


def typed_value(text: str, schema: dict[str, Any]) -> Any:
    """A rendered template as the JSON value `schema` asks for: numbers and booleans as such, lists and objects
    parsed, text as it is. Raises ValueError with what was expected."""
    kind = _main_type(schema)
    stripped = text.strip()
    nullable = schema.get("type") == "null" or (isinstance(schema.get("type"), list) and "null" in schema["type"])
    # A nullable field takes the JSON literal null (a template printing Python's None counts too, except for
    # text, where "None" may be meant).
    if nullable and (stripped == "null" or (stripped == "None" and kind != "string")):
        return None
    if kind == "integer":
        try:
            return int(stripped)
        except ValueError:
            try:
                number = float(stripped)
            except ValueError:
                raise ValueError(f"expected a whole number, got {stripped[:40]!r}") from None
            if not number.is_integer():
                raise ValueError(f"expected a whole number, got {stripped[:40]!r}") from None
            return int(number)
    if kind == "number":
        try:
            number = float(stripped)
        except ValueError:
            raise ValueError(f"expected a number, got {stripped[:40]!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {stripped[:40]!r}")
        return int(number) if re.fullmatch(r"-?\d+", stripped) else number
    if kind == "boolean":
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {stripped[:40]!r}")
    if kind in ("array", "object"):
        value = _structured(stripped)
        if kind == "array" and not isinstance(value, list | tuple):
            raise ValueError("expected a list")
        if kind == "object" and not isinstance(value, dict):
            raise ValueError("expected an object")
        return list(value) if isinstance(value, tuple) else value
    if kind is None and stripped[:1] in ("{", "["):
        try:
            return _structured(stripped)
        except ValueError:
            return text
    return text


def _schema_problem(value: Any, schema: dict[str, Any], label: str) -> str | None:
    """The first way `value` breaks `schema`, naming `label` and the part inside it; None when it fits."""
    try:
        validator = Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(value), key=lambda found: list(found.absolute_path))
    except SchemaError as broken:
        return f"{label}: the document's schema for it is not valid ({broken.message[:200]})"
    if not errors:
        return None
    first = errors[0]
    parts = [str(part) for part in first.absolute_path]
    where = ".".join([label, *parts] if label else parts)
    return f"{where or 'the body'}: {first.message[:300]}"


def build_request(
    operation: Operation,
    *,
    parameters: dict[str, str],
    body_fields: dict[str, str],
    raw_body: str = "",
) -> BuiltRequest:
    """The request for `operation` from the step's rendered values (text per parameter key and body field; or
    a raw body). Empty text counts as not given. Raises RequestInvalid naming the first parameter or body field
    that is missing or does not fit its schema; nothing is sent then."""
    path = operation.path
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for parameter in operation.parameters:
        text = parameters.get(parameter.key, "")
        label = f'parameter "{parameter.name}" ({parameter.location})'
        if not text.strip():
            if parameter.required:
                raise RequestInvalid(f"{label} is required by the operation, but its value is empty")
            continue
        try:
            value = typed_value(text, parameter.schema)
        except ValueError as error:
            raise RequestInvalid(f"{label}: {error}") from None
        problem = _schema_problem(value, parameter.schema, "")
        if problem:
            raise RequestInvalid(f"{label}: {problem.split(': ', 1)[-1]}")
        if parameter.location == "path":
            path = path.replace("{" + parameter.name + "}", quote(_plain(value), safe=""))
        elif parameter.location == "query":
            if isinstance(value, list) and parameter.explode:
                query += [(parameter.name, _plain(item)) for item in value]
            elif isinstance(value, list):
                query.append((parameter.name, ",".join(_plain(item) for item in value)))
            else:
                query.append((parameter.name, _plain(value)))
        else:
            header = _plain(value)
            if "\n" in header or "\r" in header:
                raise RequestInvalid(f"{label}: a header value must be one line")
            headers[parameter.name] = header
    url = path + ("?" + urlencode(query) if query else "")
    body_text, content_type = _request_body(operation, body_fields, raw_body)
    return BuiltRequest(operation.method, url, headers, body_text, content_type)


def _plain(value: Any) -> str:
    """A value as it goes into a URL or a header: booleans as true/false, objects as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _request_body(operation: Operation, body_fields: dict[str, str], raw_body: str) -> tuple[str, str]:
    body = operation.body
    given = {name: text for name, text in body_fields.items() if text.strip()}
    if body is None:
        if raw_body or given:
            raise RequestInvalid(f"{operation.method} {operation.path} takes no request body, but one was given")
        return "", ""
    if not body.is_json:
        if given:
            raise RequestInvalid(f"the body is {body.content_type}, not JSON: write it as the raw body")
        if body.required and not raw_body:
            raise RequestInvalid("the operation requires a request body, but none was given")
        return raw_body, body.content_type
    schema = body.schema or {}
    if raw_body:
        try:
            value = json.loads(raw_body)
        except ValueError as error:
            raise RequestInvalid(f"the raw body is not JSON ({error})") from None
    elif given:
        fields = {item.name: item for item in body.fields()}
        value = {}
        for name, text in given.items():
            if name not in fields:
                raise RequestInvalid(f'body field "{name}" is not a field of the operation\'s body')
            try:
                value[name] = typed_value(text, fields[name].schema)
            except ValueError as error:
                raise RequestInvalid(f'body field "{name}": {error}') from None
    elif body.required:
        raise RequestInvalid("the operation requires a request body, but its fields are empty")
    else:
        return "", ""
    problem = _schema_problem(value, _request_schema(schema), "body" if not raw_body else "")
    if problem:
        raise RequestInvalid(f"the request body does not match the operation's schema: {problem}")
    return json.dumps(value, ensure_ascii=False), body.content_type


def _request_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema a request is checked against: read-only properties are the server's, so they are not
    required of a request (OpenAPI's rule for `readOnly`)."""
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not isinstance(schema.get("required"), list):
        return schema
    server_side = {name for name, spec in properties.items() if isinstance(spec, dict) and spec.get("readOnly")}
    return {**schema, "required": [name for name in schema["required"] if name not in server_side]}


# --- storing a document on a connection (services) --------------------------------------------------------------


def _require_manager(actor: User | None, connection: Connection) -> None:
    if actor is not None and not user_manages_connection(actor, connection):
        raise Forbidden(f'You may not change the connection "{connection.name}".')
    if connection.kind != kinds.HTTP:
        raise ValidationFailed(
            "Only HTTP connections have an OpenAPI document.",
            fields={"document": [f'"{connection.name}" is not an HTTP API connection.']},
        )


def openapi_document_load(
    *, actor: User | None, connection: Connection, data: bytes | str, source_kind: str, source: str
) -> tuple[OpenApiDocument, dict[str, list[str]]]:
    """Parse `data` and store it as `connection`'s OpenAPI document, replacing the one it had; managers only.
    Returns the document and the operations that published workflows name but the new document lacks
    ({operation: [workflow names]}: their runs will fail until it is fixed). A document that does not parse
    is refused (ValidationFailed on "document") and nothing changes."""
    _require_manager(actor, connection)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    parsed = document_parse(document_load(raw))
    document = _store(actor, connection, parsed, raw, source_kind, source[:500])
    present = {operation.operation_id for operation in parsed.operations}
    lost = {name: users for name, users in operations_in_use(connection.name).items() if name not in present}
    return document, lost


@transaction.atomic
def _store(
    actor: User | None, connection: Connection, parsed: ParsedDocument, raw: bytes, source_kind: str, source: str
) -> OpenApiDocument:
    # The connection's row first: two loads of one connection's document queue instead of interleaving.
    Connection.objects.select_for_update().filter(pk=connection.pk).first()
    OpenApiDocument.objects.filter(connection=connection).delete()
    document = OpenApiDocument.objects.create(
        connection=connection,
        source_kind=source_kind,
        source=source,
        title=parsed.title,
        api_version=parsed.api_version,
        openapi_version=parsed.openapi_version,
        sha256=hashlib.sha256(raw).hexdigest(),
        size_bytes=len(raw),
        notes=parsed.notes,
        loaded_at=timezone.now(),
        loaded_by=actor if actor is not None and actor.is_authenticated else None,
    )
    OpenApiOperation.objects.bulk_create(
        OpenApiOperation(
            document=document,
            position=position,
            operation_id=operation.operation_id,
            method=operation.method,
            path=operation.path,
            summary=operation.summary,
            spec=operation.spec(),
        )
        for position, operation in enumerate(parsed.operations)
    )
    audit_record(
        actor=actor,
        verb="connection.openapi_loaded",
        target=connection,
        data={
            "source": source_kind,
            "location": source,
            "title": parsed.title,
            "api_version": parsed.api_version,
            "openapi": parsed.openapi_version,
            "sha256": document.sha256,
            "operations": len(parsed.operations),
        },
    )
    return document


def openapi_document_fetch(
    *, actor: User | None, connection: Connection, path: str
) -> tuple[OpenApiDocument, dict[str, list[str]]]:
    """Fetch the document from `path` under the connection's base URL (GET, with the connection's headers and
    authentication, through the SSRF-guarded client) and load it as `openapi_document_load` does. Refusals
    name the field "path" (cannot be reached, not 200) or "document" (does not parse); nothing changes then.
    The request happens outside any transaction."""
    _require_manager(actor, connection)
    path = (path or "").strip()
    if not path:
        raise ValidationFailed("Give the document's path.", fields={"path": ["Give a path, e.g. /openapi.json."]})
    if "://" in path or path.startswith("//"):
        raise ValidationFailed(
            "Give a path under the base URL.",
            fields={"path": ["Give a path under the connection's base URL, e.g. /openapi.json, not a full URL."]},
        )
    resolved = resolve(connection)
    try:
        url = join_url(str(connection.config["base_url"]), path)
        headers = http.merge_headers(
            {"Accept": "application/json, application/yaml;q=0.9, */*;q=0.5"},
            connection.config.get("headers", {}),
            http_auth_headers(resolved),
        )
    except (ConnectionUnavailable, ConnectionFailed) as error:
        raise ValidationFailed(error.message, fields={"path": [error.message]}) from None
    timeout = min(float(connection.config.get("timeout_seconds", 30)), 30.0)
    try:
        response = http.request("GET", url, headers=headers, timeout=timeout, destinations=resolved.destinations)
    except http.OutboundError as error:
        message = redact(f"The document could not be fetched: {error}", secret_needles(resolved, headers))
        raise ValidationFailed(message, fields={"path": [message]}) from None
    if response.status != 200:
        answer = redact(response.text(), secret_needles(resolved, headers))[:200]
        message = f"{url} answered HTTP {response.status}: {answer}"
        raise ValidationFailed(message, fields={"path": [message]})
    return openapi_document_load(
        actor=actor, connection=connection, data=response.body, source_kind=OpenApiDocument.Source.URL, source=path
    )


@transaction.atomic
def openapi_document_remove(*, actor: User | None, connection: Connection) -> None:
    """Remove the connection's OpenAPI document; refused while published versions name its operations (their
    runs would fail), naming those workflows."""
    _require_manager(actor, connection)
    in_use = operations_in_use(connection.name)
    if in_use:
        workflows = sorted({name for names in in_use.values() for name in names})
        raise Conflict(
            f"Published versions of {', '.join(workflows)} call operations of this document; publish versions "
            "that do not, or load a newer document instead of removing it.",
            extra={"workflows": workflows},
        )
    deleted, _ = OpenApiDocument.objects.filter(connection=connection).delete()
    if deleted:
        audit_record(actor=actor, verb="connection.openapi_removed", target=connection)


# --- reads ------------------------------------------------------------------------------------------------------


def openapi_document_for(connection: Connection) -> OpenApiDocument | None:
    """The connection's document (callers have checked that the person may see the connection)."""
    return OpenApiDocument.objects.filter(connection=connection).first()


def operations_of(connection: Connection) -> list[Operation]:
    """Every operation of the connection's document, in the document's order (none without one)."""
    rows = OpenApiOperation.objects.filter(document__connection=connection).order_by("position")
    return [Operation.from_row(row) for row in rows]


def operation_choices(connection_name: str) -> list[tuple[str, str]] | None:
    """(operation id, "METHOD /path · summary") for the builder's picker; None when the connection has no
    document. The caller decides whether the person may use the connection."""
    if not OpenApiDocument.objects.filter(connection__name=connection_name).exists():
        return None
    rows = OpenApiOperation.objects.filter(document__connection__name=connection_name).order_by("position")
    return [
        (operation_id, f"{method} {path} · {summary}" if summary else f"{method} {path}")
        for operation_id, method, path, summary in rows.values_list("operation_id", "method", "path", "summary")
    ]


def operation_get(connection_name: str, operation_id: str) -> Operation | None:
    """One operation of the named connection's document, or None (no document, or no such operation)."""
    row = OpenApiOperation.objects.filter(document__connection__name=connection_name, operation_id=operation_id).first()
    return Operation.from_row(row) if row is not None else None


def operation_config_problems(
    connection_name: str, operation_id: str, *, parameters: dict[str, str], body_fields: dict[str, str], body: str
) -> list[str]:
    """What stops a step from calling `operation_id` of the connection, each as "field: message": the
    operation is not (or no longer) in the connection's document, a required parameter or body field is
    empty, a value names something the operation does not have. Nothing when the connection does not exist or
    is not an HTTP connection (publishing reports that)."""
    connection = Connection.objects.filter(name=connection_name, kind=kinds.HTTP).first()
    if connection is None:
        return []
    if not OpenApiDocument.objects.filter(connection=connection).exists():
        return [
            f'operation: the connection "{connection_name}" has no OpenAPI document any more; an admin loads it '
            "on the connection's page"
        ]
    operation = operation_get(connection_name, operation_id)
    if operation is None:
        return [f'operation: "{operation_id}" is not an operation of the connection\'s OpenAPI document (any more)']
    problems = []
    keys = {parameter.key for parameter in operation.parameters}
    for parameter in operation.parameters:
        if parameter.required and not parameters.get(parameter.key, "").strip():
            problems.append(f"parameters.{parameter.key}: required by the operation")
    problems += [f"parameters.{key}: not a parameter of {operation.label}" for key in parameters if key not in keys]
    fields = {item.name: item for item in operation.body.fields()} if operation.body else {}
    problems += [
        f"body_fields.{name}: not a field of the operation's body" for name in body_fields if name not in fields
    ]
    if operation.body is None and body.strip():
        problems.append(f"body: {operation.method} {operation.path} takes no request body")
    elif operation.body is not None and not body.strip():
        for item in fields.values():
            if item.required and not body_fields.get(item.name, "").strip():
                problems.append(f"body_fields.{item.name}: required by the operation's body")
        if operation.body.required and not fields and not body.strip():
            problems.append("body: the operation requires a request body; write it here")
    return problems


def operations_in_use(connection_name: str) -> dict[str, list[str]]:
    """{operation id: names of the workflows whose published versions call it over connection
    `connection_name`}. The workflows app sits above this one, so its table is read by model name."""
    version_model = django_apps.get_model("workflows", "WorkflowVersion")
    versions = version_model.objects.filter(
        state="published",
        graph__steps__contains=[{"type": "http.request", "config": {"connection": connection_name}}],
    ).values_list("workflow__name", "graph")
    found: dict[str, set[str]] = {}
    for workflow_name, graph in versions:
        for step in graph.get("steps", []) if isinstance(graph, dict) else []:
            config = step.get("config") if isinstance(step, dict) else None
            if (
                isinstance(config, dict)
                and step.get("type") == "http.request"
                and config.get("connection") == connection_name
                and config.get("operation")
            ):
                found.setdefault(str(config["operation"]), set()).add(str(workflow_name))
    return {name: sorted(workflows) for name, workflows in found.items()}
