"""The workflow exchange format: one YAML document per workflow, for export, import and promotion through git.

    apiVersion: aios/v1
    kind: Workflow
    metadata: {slug, name, description, team?, baseline_minutes_per_case}
    version: {number, note, checksum}          # a published version only; absent for a draft
    spec: {input_schema, graph}                # the graph exactly as stored
    requires: {step_types, model_endpoints, queues, workflows}

The document holds semantics only: no database ids, owners, timestamps, secrets, layout or test data. The
slug is the workflow's identity across instances; model endpoints, approval queues and sub-workflows are
referenced by name and listed under `requires`, which export computes and import checks.

Canonical form: keys in a fixed order (the envelope, steps, edges and each step type's config in their
documented order, everything else sorted), lists as stored, dumped by `yaml.safe_dump` with fixed options.
Key order never changes the graph checksum (it hashes canonical JSON), so export → import → export is
byte-identical and keeps the checksum.

Import reads untrusted text. It loads with PyYAML's safe loader only (tags such as `!!python/object` are
refused, never executed), refuses aliases (a small file with nested aliases expands exponentially once
walked), duplicate keys (the last would silently win), values JSON cannot hold (dates, binary, NaN), files
over `MAX_DOCUMENT_BYTES`, and reports every problem at once with the line it is on.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import UnionType
from typing import Any, TypedDict, Union, get_args, get_origin

import yaml
from django.db import transaction
from django.utils.text import slugify
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaViolation
from pydantic import BaseModel

from apps.accounts.models import Team, User
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, Forbidden
from apps.core.permissions import has_object_perm
from apps.inference.models import ModelEndpoint
from apps.steps.base import QUEUE_CHECKS
from apps.steps.library.human import ApprovalConfig
from apps.steps.llm import LlmStepConfig
from apps.steps.registry import step_types
from apps.workflows.diff import VersionDiff, version_diff
from apps.workflows.graph import EdgeOptions, RetryPolicy, StepOptions, graph_checksum, graph_errors
from apps.workflows.input_schema import input_schema_errors
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import team_list_assignable, workflow_can_edit
from apps.workflows.services import EMPTY_INPUT_SCHEMA, workflow_create, workflow_draft_save

API_VERSION = "aios/v1"
KIND = "Workflow"
SUPPORTED_API_VERSIONS = (API_VERSION,)
MAX_DOCUMENT_BYTES = 1_000_000
# Enough to fix a file in a few passes; a file with hundreds of problems is the wrong file.
MAX_PROBLEMS = 50
_MAX_MESSAGE_CHARS = 300
REQUIRE_KINDS = ("step_types", "model_endpoints", "queues", "workflows")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_DOCUMENT_KEYS = ("apiVersion", "kind", "metadata", "version", "spec", "requires")
_METADATA_KEYS = ("slug", "name", "description", "team", "baseline_minutes_per_case")
_VERSION_KEYS = ("number", "note", "checksum")
_SPEC_KEYS = ("input_schema", "graph")
_GRAPH_KEYS = ("steps", "edges", "budget", "output", "timeout_seconds")
_STEP_KEYS = ("key", "type", "name", "config", "inputs", "join", "retry", "timeout_seconds")
_EDGE_KEYS = ("from", "to", "when")
_BUDGET_KEYS = ("max_tokens", "max_cost")
_INPUT_SCHEMA_KEYS = ("type", "title", "description", "properties", "required")
_INPUT_FIELD_KEYS = (
    "type",
    "title",
    "description",
    "format",
    "items",
    "enum",
    "default",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
)
_SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
_STEP_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

# yaml's C parser is ten times faster on a 1 MB file; both build the same nodes and use SafeConstructor.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Problem(TypedDict):
    """One reason a file is refused: `line` is 1-based (None when unknown), `path` is dotted
    ("spec.graph.steps.2.type", "" for the whole document)."""

    line: int | None
    path: str
    message: str


class ImportProblems(ApplicationError):
    """The file cannot be imported; `problems` lists every reason found (at most MAX_PROBLEMS), in file order."""

    status_code = 400

    def __init__(self, problems: list[Problem], message: str = "") -> None:
        kept = problems[:MAX_PROBLEMS]
        count = len(problems)
        super().__init__(
            message or f"The file cannot be imported: {count} {'problem' if count == 1 else 'problems'}.",
            extra={"problems": kept},
        )
        self.problems = kept


class ExportNotFound(ApplicationError):
    """The workflow has no version to export: none yet, or no published version with the number asked for."""

    status_code = 404


def problem_text(problem: Problem) -> str:
    """One problem on one line for a terminal: "line 12: spec.graph.steps.2.type: message"."""
    where = f"line {problem['line']}" if problem["line"] is not None else "line ?"
    return f"{where}: {problem['path'] or '(document)'}: {problem['message']}"


# --- building and dumping ---------------------------------------------------------------------------------


def document_build(workflow: Workflow, version: WorkflowVersion) -> dict[str, Any]:
    """The canonical document of `version` of `workflow` (a `version` block only if it is published)."""
    metadata: dict[str, Any] = {"slug": workflow.slug, "name": workflow.name, "description": workflow.description}
    if workflow.team is not None:
        metadata["team"] = workflow.team.slug
    metadata["baseline_minutes_per_case"] = _number(workflow.baseline_minutes_per_case)
    document: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata}
    if version.is_published:
        document["version"] = {"number": version.number, "note": version.note, "checksum": version.checksum}
    graph, input_schema = copy.deepcopy(version.graph), copy.deepcopy(version.input_schema)
    document["spec"] = {"input_schema": input_schema, "graph": graph}
    document["requires"] = requires_compute(graph)
    return _canonical_document(document)


def document_dump(document: Mapping[str, Any]) -> str:
    """The document as canonical YAML text (keys in canonical order whatever order `document` has)."""
    return yaml.dump(
        _canonical_document(document),
        Dumper=_BlockDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


class _BlockDumper(yaml.SafeDumper):
    """Safe dumping, with text of several lines (prompts, templates) as `|` blocks: a one-line change to a prompt
    is then a one-line change in a git diff."""


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # A block cannot keep trailing spaces on a line or a leading space on the first; such text stays quoted.
    block = "\n" in text and not any(line != line.rstrip() for line in text.split("\n")) and not text.startswith(" ")
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if block else None)


_BlockDumper.add_representer(str, _represent_text)


def _number(value: Decimal) -> int | float:
    """A Decimal as the plainest YAML number: 12.00 → 12, 12.50 → 12.5."""
    return int(value) if value == value.to_integral_value() else float(value)


def _ordered(mapping: Mapping[str, Any], first: Sequence[str]) -> dict[str, Any]:
    """`mapping` with the keys in `first` (those present) in that order, then the others sorted; values
    below are sorted deeply unless the caller orders them itself."""
    ordered = {key: _sorted_deep(mapping[key]) for key in first if key in mapping}
    ordered.update({key: _sorted_deep(mapping[key]) for key in sorted(mapping, key=str) if key not in ordered})
    return ordered


def _sorted_deep(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _sorted_deep(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list):
        return [_sorted_deep(item) for item in value]
    return value


def _canonical_document(document: Mapping[str, Any]) -> dict[str, Any]:
    canonical = _ordered(document, _DOCUMENT_KEYS)
    if isinstance(document.get("metadata"), Mapping):
        canonical["metadata"] = _ordered(document["metadata"], _METADATA_KEYS)
    if isinstance(document.get("version"), Mapping):
        canonical["version"] = _ordered(document["version"], _VERSION_KEYS)
    spec = document.get("spec")
    if isinstance(spec, Mapping):
        canonical["spec"] = _ordered(spec, _SPEC_KEYS)
        if isinstance(spec.get("input_schema"), Mapping):
            canonical["spec"]["input_schema"] = _canonical_input_schema(spec["input_schema"])
        if isinstance(spec.get("graph"), Mapping):
            canonical["spec"]["graph"] = _canonical_graph(spec["graph"])
    if isinstance(document.get("requires"), Mapping):
        canonical["requires"] = _ordered(document["requires"], REQUIRE_KINDS)
    return canonical


def _canonical_input_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    canonical = _ordered(schema, _INPUT_SCHEMA_KEYS)
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        canonical["properties"] = {
            name: _ordered(spec, _INPUT_FIELD_KEYS) if isinstance(spec, Mapping) else spec
            for name, spec in sorted(properties.items())
        }
    return canonical


def _canonical_graph(graph: Mapping[str, Any]) -> dict[str, Any]:
    canonical = _ordered(graph, _GRAPH_KEYS)
    # Lists keep their order: step order and edge order are part of the stored graph and of its checksum.
    if isinstance(graph.get("steps"), list):
        canonical["steps"] = [_canonical_step(step) for step in graph["steps"]]
    if isinstance(graph.get("edges"), list):
        canonical["edges"] = [_ordered(e, _EDGE_KEYS) if isinstance(e, Mapping) else e for e in graph["edges"]]
    if isinstance(graph.get("budget"), Mapping):
        canonical["budget"] = _ordered(graph["budget"], _BUDGET_KEYS)
    return canonical


def _canonical_step(step: Any) -> Any:
    if not isinstance(step, Mapping):
        return _sorted_deep(step)
    canonical = _ordered(step, _STEP_KEYS)
    type_name = step.get("type")
    step_type = step_types().get(type_name) if isinstance(type_name, str) else None
    if step_type is not None and "config" in step:
        # A config reads best in the order its step type declares its fields (prompt before model ...).
        canonical["config"] = _model_ordered(step["config"], step_type.Config)
    if "retry" in step:
        canonical["retry"] = _model_ordered(step["retry"], RetryPolicy)
    return canonical


def _model_ordered(value: Any, model: type[BaseModel]) -> Any:
    """A pydantic model's data with its keys in the model's field order, nested models (a switch's cases,
    an LLM step's routing) likewise; keys the model does not know follow, sorted."""
    if not isinstance(value, Mapping):
        return _sorted_deep(value)
    ordered = _ordered(value, list(model.model_fields))
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is None or name not in value:
            continue
        item = value[name]
        ordered[name] = (
            [_model_ordered(element, nested) for element in item]
            if isinstance(item, list)
            else _model_ordered(item, nested)
        )
    return ordered


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model in `Model`, `Model | None` or `list[Model]`; None for anything else (a dict of models too)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType, list):
        for argument in get_args(annotation):
            found = _nested_model(argument)
            if found is not None:
                return found
    return None


# --- requires ---------------------------------------------------------------------------------------------


def requires_compute(graph: Any) -> dict[str, list[str]]:
    """What `graph` needs from the instance it runs on, each list sorted: the step types it uses, the model
    endpoints its LLM steps name (model, fallbacks, routing), the approval queues, and the workflows its
    sub-workflow and for-each steps run. Malformed parts are skipped (validation reports them)."""
    found: dict[str, set[str]] = {kind: set() for kind in REQUIRE_KINDS}
    registry = step_types()
    steps = graph.get("steps") if isinstance(graph, Mapping) else None
    for step in steps if isinstance(steps, list) else []:
        if not isinstance(step, Mapping) or not isinstance(step.get("type"), str):
            continue
        found["step_types"].add(step["type"])
        step_type = registry.get(step["type"])
        config = step.get("config")
        if step_type is None or not isinstance(config, Mapping):
            continue
        if issubclass(step_type.Config, LlmStepConfig):
            routing = config.get("routing")
            fallbacks = config.get("fallbacks")
            names = [config.get("model"), *(fallbacks if isinstance(fallbacks, list) else [])]
            if isinstance(routing, Mapping):
                names += [routing.get("small"), routing.get("large")]
            # An empty model means the default endpoint, which every instance has by definition.
            found["model_endpoints"].update(name for name in names if isinstance(name, str) and name)
        if issubclass(step_type.Config, ApprovalConfig) and isinstance(config.get("queue"), str):
            found["queues"].add(config["queue"])
        if step_type.pins_workflow_version and isinstance(config.get("workflow"), str):
            found["workflows"].add(config["workflow"])
    return {kind: sorted(names) for kind, names in found.items()}


def requires_missing(document: Mapping[str, Any]) -> dict[str, list[str]]:
    """What this instance lacks of what the document needs: the union of its declared `requires` and what its
    graph actually uses. Only kinds with something missing appear ({} when everything is there). Queues are
    groups by name; workflows are slugs (whether the importer may see them is checked when they run)."""
    spec = document.get("spec")
    wanted = requires_compute(spec.get("graph") if isinstance(spec, Mapping) else None)
    declared = document.get("requires")
    if isinstance(declared, Mapping):
        for kind in REQUIRE_KINDS:
            names = declared.get(kind)
            if isinstance(names, list):
                wanted[kind] = sorted(set(wanted[kind]) | {name for name in names if isinstance(name, str)})
    present: dict[str, set[str]] = {
        "step_types": set(step_types()),
        "model_endpoints": set(
            ModelEndpoint.objects.filter(name__in=wanted["model_endpoints"]).values_list("name", flat=True)
        ),
        "queues": {name for name in wanted["queues"] if not any(check(name) for check in QUEUE_CHECKS)},
        "workflows": set(Workflow.objects.filter(slug__in=wanted["workflows"]).values_list("slug", flat=True)),
    }
    missing = {kind: [name for name in wanted[kind] if name not in present[kind]] for kind in REQUIRE_KINDS}
    return {kind: names for kind, names in missing.items() if names}


# --- the JSON Schema --------------------------------------------------------------------------------------


def document_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the file, for editors and for import.

    Each step's `config` is checked against its step type's own schema (from its pydantic config) through an
    `if type = X then config matches X` rule per registered step type; `type` must name a registered one.
    """
    defs: dict[str, Any] = {}
    step = _hoisted(StepOptions.model_json_schema(), "step", defs)
    step["properties"]["key"]["pattern"] = _STEP_KEY_PATTERN
    registry = step_types()
    step["properties"]["type"]["enum"] = list(registry)
    rules = []
    for slug, step_type in registry.items():
        defs[f"config.{slug}"] = _hoisted(step_type.config_schema(), f"config.{slug}", defs)
        rules.append(
            {
                "if": {"properties": {"type": {"const": slug}}, "required": ["type"]},
                "then": {"properties": {"config": {"$ref": f"#/$defs/config.{slug}"}}},
            }
        )
    step["allOf"] = rules
    defs["step"] = step
    defs["edge"] = _hoisted(EdgeOptions.model_json_schema(by_alias=True), "edge", defs)
    names = {"type": "array", "items": {"type": "string", "minLength": 1}, "uniqueItems": True}
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "AIOS workflow",
        "description": "One workflow: its identity, its version's input schema and graph, and what it needs.",
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": KIND},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["slug", "name"],
                "properties": {
                    "slug": {"type": "string", "pattern": _SLUG_PATTERN, "maxLength": 120},
                    "name": {"type": "string", "minLength": 1, "maxLength": 120},
                    "description": {"type": "string"},
                    "team": {"type": "string", "minLength": 1, "description": "A team's slug."},
                    "baseline_minutes_per_case": {"type": "number", "minimum": 0, "exclusiveMaximum": 1000000},
                },
            },
            "version": {
                "type": "object",
                "description": "The published version this file was exported from (informative).",
                "additionalProperties": False,
                "required": ["number", "checksum"],
                "properties": {
                    "number": {"type": "integer", "minimum": 1},
                    "note": {"type": "string"},
                    "checksum": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["input_schema", "graph"],
                "properties": {"input_schema": _input_schema_schema(), "graph": _graph_schema()},
            },
            "requires": {
                "type": "object",
                "additionalProperties": False,
                "properties": dict.fromkeys(REQUIRE_KINDS, names),
            },
        },
        "$defs": defs,
    }


def _hoisted(schema: dict[str, Any], name: str, defs: dict[str, Any]) -> dict[str, Any]:
    """`schema` without its `$defs`, which move into `defs` as "<name>.<def>" with every reference rewritten,
    so several pydantic schemas (each with its own "Routing" or "RetryPolicy") live in one document."""
    schema = copy.deepcopy(schema)
    local = schema.pop("$defs", {})

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: (
                    f"#/$defs/{name}.{item[len('#/$defs/') :]}"
                    if key == "$ref" and isinstance(item, str) and item.startswith("#/$defs/")
                    else rewrite(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [rewrite(item) for item in value]
        return value

    for def_name, definition in local.items():
        defs[f"{name}.{def_name}"] = rewrite(definition)
    rewritten: dict[str, Any] = rewrite(schema)
    return rewritten


def _graph_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["steps"],
        "properties": {
            "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
            "edges": {"type": "array", "items": {"$ref": "#/$defs/edge"}},
            "budget": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "max_tokens": {"type": "integer", "minimum": 1},
                    # An amount as a number or as text ("0.50"); graph_errors checks it is positive.
                    "max_cost": {"type": ["number", "string"]},
                },
            },
            "output": {"type": "string", "description": "The key of the step whose output is the run's output."},
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
        },
    }


def _input_schema_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "The run's input fields (a JSON Schema subset, see apps/workflows/input_schema.py).",
        "required": ["type"],
        "properties": {
            "type": {"const": "object"},
            # Which field types and attributes are supported is input_schema_errors' to say, in one place.
            "properties": {"type": "object", "additionalProperties": {"type": "object", "required": ["type"]}},
            "required": {"type": "array", "items": {"type": "string"}},
        },
    }


# --- parsing ----------------------------------------------------------------------------------------------


class _Lines:
    """Maps a path in the loaded document to its line, by walking the YAML node tree (None without one)."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def find(self, path: Sequence[str | int]) -> tuple[int | None, bool]:
        """(line of the deepest node found along `path`, whether the whole path was found). A mapping entry's
        line is its key's line, where a reader looks for it."""
        node = self.root
        if node is None:
            return None, False
        line = node.start_mark.line + 1
        for part in path:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                        line, node = key_node.start_mark.line + 1, value_node
                        break
                else:
                    return line, False
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line, False
        return line, True

    def line(self, path: Sequence[str | int]) -> int | None:
        return self.find(path)[0]

    def problem(self, path: Sequence[str | int], message: str) -> Problem:
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[: _MAX_MESSAGE_CHARS - 1] + "…"
        return {"line": self.line(path), "path": ".".join(str(part) for part in path), "message": message}


@dataclass(frozen=True)
class _Parsed:
    document: dict[str, Any]
    lines: _Lines


def document_text_from_bytes(data: bytes) -> str:
    """Uploaded bytes as text: at most MAX_DOCUMENT_BYTES, UTF-8 (a byte-order mark is dropped).
    Raises ImportProblems otherwise; callers may pass MAX_DOCUMENT_BYTES + 1 bytes to detect a larger file
    without reading it all."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ImportProblems([_too_large()])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ImportProblems([{"line": line, "path": "", "message": "The file is not UTF-8 text."}]) from None


def _too_large() -> Problem:
    return {
        "line": None,
        "path": "",
        "message": f"The file is larger than {MAX_DOCUMENT_BYTES // 1_000_000} MB, the most a workflow file may be.",
    }


def document_parse(text: str) -> dict[str, Any]:
    """The validated document in `text` (YAML, or JSON, which is YAML too).

    Raises ImportProblems listing every problem found, each with its line and path: text that is not YAML,
    too large, tags, aliases, duplicate keys or values JSON cannot hold; a document that is not a mapping or
    has another apiVersion or kind; schema violations (`document_schema`); graph and input-schema problems
    (`graph_errors`, `input_schema_errors`), except that a model endpoint missing here is not one (it is
    reported by `requires_missing`); a `version.checksum` that the spec no longer matches; and step types
    this instance does not have.
    """
    return _parse(text).document


def _parse(text: str) -> _Parsed:
    if len(text) > MAX_DOCUMENT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise ImportProblems([_too_large()])
    try:
        return _parse_sized(text)
    except RecursionError:
        raise ImportProblems(
            [{"line": None, "path": "", "message": "The file nests values too deeply to be a workflow."}]
        ) from None


def _parse_sized(text: str) -> _Parsed:
    data, lines = _load(text)
    if data is None:
        raise ImportProblems([lines.problem([], "The file is empty.")])
    if not isinstance(data, dict):
        message = f"The file must be a mapping (apiVersion, kind, ...), not a {_json_kind(data)}."
        raise ImportProblems([lines.problem([], message)])
    _check_envelope(data, lines)
    problems = _schema_problems(data, lines)
    if problems:
        raise ImportProblems(problems)
    problems = _content_problems(data, lines)
    if problems:
        raise ImportProblems(problems)
    return _Parsed(document=data, lines=lines)


def _load(text: str) -> tuple[Any, _Lines]:
    """The data in `text` and its node tree, refusing what plain JSON-like YAML does not need."""
    loader = _SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.YAMLError as error:
            data = _json_fallback(text)
            if data is not _NOT_JSON:
                return data, _Lines(None)
            raise ImportProblems([_yaml_problem(error, "The file is not valid YAML")]) from None
        lines = _Lines(root)
        problems = list(_node_problems(root))
        if problems:
            raise ImportProblems(problems)
        try:
            data = loader.construct_document(root) if root is not None else None
        except yaml.YAMLError as error:
            raise ImportProblems(
                [_yaml_problem(error, "Only plain YAML values are allowed; tags such as !!python/object never run")]
            ) from None
    finally:
        loader.dispose()
    problems = list(_value_problems(data, [], lines))
    if problems:
        raise ImportProblems(problems)
    return data, lines


_NOT_JSON = object()


def _json_fallback(text: str) -> Any:
    """JSON that YAML 1.1 cannot read (tab indentation), or _NOT_JSON. NaN and Infinity are not JSON."""
    if not text.lstrip().startswith("{"):
        return _NOT_JSON

    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):  # nesting deep enough to exhaust the parser is no workflow either
        return _NOT_JSON


def _yaml_problem(error: yaml.YAMLError, prefix: str) -> Problem:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    detail = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    message = f"{prefix}: {detail}" + (f" ({context})" if context else "")
    if mark is not None:
        message += f" at column {mark.column + 1}"
    return {"line": mark.line + 1 if mark is not None else None, "path": "", "message": message}


def _node_problems(root: yaml.Node | None) -> Iterator[Problem]:
    """Aliases and duplicate keys, found by walking the node tree once in document order. An alias is a node
    seen a second time: the walk never descends into it again, so it stays linear however aliases nest."""
    if root is None:
        return
    seen: set[int] = set()
    # (node, path, line): a mapping value's line is its key's, since an alias node carries its anchor's marks.
    stack: list[tuple[yaml.Node, list[str | int], int]] = [(root, [], root.start_mark.line + 1)]
    while stack:
        node, path, line = stack.pop()
        if id(node) in seen:
            yield {
                "line": line,
                "path": ".".join(str(part) for part in path),
                "message": "Anchors and aliases (&name, *name) are not allowed: write the value out.",
            }
            continue
        seen.add(id(node))
        children: list[tuple[yaml.Node, list[str | int], int]] = []
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                if key in keys:
                    yield {
                        "line": key_node.start_mark.line + 1,
                        "path": ".".join(str(part) for part in [*path, key]),
                        "message": f'"{key}" appears twice in the same mapping: keep one.',
                    }
                keys.add(key)
                children.append((value_node, [*path, key], key_node.start_mark.line + 1))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, [*path, index], item.start_mark.line + 1) for index, item in enumerate(node.value)]
        stack.extend(reversed(children))


def _value_problems(value: Any, path: list[str | int], lines: _Lines) -> Iterator[Problem]:
    """Values JSON cannot hold: YAML turns unquoted dates into dates, and has binary, sets and NaN."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                yield lines.problem(path, f"The key {key!r} must be text: quote it.")
                continue
            yield from _value_problems(item, [*path, key], lines)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _value_problems(item, [*path, index], lines)
    elif isinstance(value, float) and not math.isfinite(value):
        yield lines.problem(path, "Not a finite number (.nan and .inf are not allowed).")
    elif not (value is None or isinstance(value, str | int | float | bool)):
        yield lines.problem(path, f"A {type(value).__name__} value is not allowed here: quote it to keep it as text.")


def _json_kind(value: Any) -> str:
    return "list" if isinstance(value, list) else "text" if isinstance(value, str) else "single value"


def _check_envelope(data: dict[str, Any], lines: _Lines) -> None:
    """apiVersion and kind first: a file of another format or version is refused before its details."""
    problems = []
    supported = ", ".join(SUPPORTED_API_VERSIONS)
    if "apiVersion" not in data:
        problems.append(lines.problem([], f'"apiVersion" is required; this instance reads {supported}.'))
    elif data["apiVersion"] not in SUPPORTED_API_VERSIONS:
        problems.append(
            lines.problem(
                ["apiVersion"], f'apiVersion "{data["apiVersion"]}" is not supported; this instance reads {supported}.'
            )
        )
    if "kind" not in data:
        problems.append(lines.problem([], f'"kind" is required; the supported kind is {KIND}.'))
    elif data["kind"] != KIND:
        problems.append(
            lines.problem(["kind"], f'kind "{data["kind"]}" is not supported; the supported kind is {KIND}.')
        )
    if problems:
        raise ImportProblems(problems)


def _schema_problems(data: dict[str, Any], lines: _Lines) -> list[Problem]:
    validator = Draft202012Validator(document_schema())
    problems: list[Problem] = []
    for error in validator.iter_errors(data):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
            for key in sorted(set(error.instance) - allowed):
                known = f" (known: {', '.join(sorted(allowed))})" if allowed else ""
                problems.append(lines.problem([*path, key], f'Unknown field "{key}"{known}.'))
            continue
        problems.append(lines.problem(path, _schema_message(error, path)))
    return _sorted_problems(problems)


def _schema_message(error: SchemaViolation, path: list[str | int]) -> str:
    if error.validator == "enum" and len(path) >= 2 and path[-1] == "type" and path[-3:-2] == ["steps"]:
        return f'Unknown step type "{error.instance}" (known: {", ".join(step_types())}).'
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = [name for name in error.validator_value if name not in (error.instance or {})]
        return f'"{missing[0]}" is required.' if missing else error.message
    return error.message


def _sorted_problems(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda problem: (problem["line"] or 0, problem["path"]))


# graph_errors checks endpoints exist on this instance; for an import that is what `requires` reports instead.
# Things an instance may lack that `requires_missing` reports instead (the import is a draft to adapt).
_MISSING_ENDPOINT = re.compile(r'(model endpoint|approval queue) "[^"]*" does not exist$')
_STEP_BY_KEY = re.compile(r'^step "(?P<key>[^"]+)": (?P<rest>.*)$', re.DOTALL)
_STEP_BY_NUMBER = re.compile(r"^step (?P<number>\d+): (?P<rest>.*)$", re.DOTALL)
_EDGE_BY_NUMBER = re.compile(r"^edge (?P<number>\d+): ")
_DOTTED_PREFIX = re.compile(r"^(?P<path>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*): ")
_INPUT_FIELD = re.compile(r'^input schema: (?:field )?"(?P<name>[^"]+)"')
_INPUT_REQUIRED = re.compile(r'^input schema: required field "')


def _content_problems(data: dict[str, Any], lines: _Lines) -> list[Problem]:
    """What the schema cannot see: the graph's and input schema's own checks, the version checksum, and
    step types named in `requires` that this instance lacks."""
    spec = data["spec"]
    graph, input_schema = spec["graph"], spec["input_schema"]
    problems = [_input_schema_problem(message, input_schema, lines) for message in input_schema_errors(input_schema)]
    problems += [
        _graph_problem(message, graph, lines)
        for message in graph_errors(graph)
        if not _MISSING_ENDPOINT.search(message)
    ]
    version = data.get("version")
    if version is not None and version["checksum"] != graph_checksum(graph, input_schema):
        problems.append(
            lines.problem(
                ["version", "checksum"],
                f"The spec was changed after version {version['number']} was exported (its checksum no longer "
                "matches). Remove the version block to import an edited file.",
            )
        )
    known = step_types()
    for index, name in enumerate(data.get("requires", {}).get("step_types", [])):
        if name not in known:
            problems.append(lines.problem(["requires", "step_types", index], f'Unknown step type "{name}".'))
    return _sorted_problems(problems)


def _graph_problem(message: str, graph: dict[str, Any], lines: _Lines) -> Problem:
    """A graph_errors message placed at its step, edge or setting, as precisely as the message says."""
    base: list[str | int] = ["spec", "graph"]
    keys = [step.get("key") if isinstance(step, dict) else None for step in graph.get("steps", [])]
    step_index, rest = None, ""
    if match := _STEP_BY_KEY.match(message):
        key = match["key"]
        step_index, rest = (keys.index(key) if key in keys else None), match["rest"]
    elif match := _STEP_BY_NUMBER.match(message):
        step_index, rest = int(match["number"]) - 1, match["rest"]
    if step_index is not None:
        path: list[str | int] = [*base, "steps", step_index]
        # "prompt: the template ..." names a config field, "inputs.x: ..." a step field: point at it if present.
        if prefix := _DOTTED_PREFIX.match(rest):
            parts: list[str | int] = [int(p) if p.isdigit() else p for p in prefix["path"].split(".")]
            for candidate in ([*path, "config", *parts], [*path, *parts]):
                if lines.find(candidate)[1]:
                    return lines.problem(candidate, message)
        return lines.problem(path, message)
    if match := _EDGE_BY_NUMBER.match(message):
        return lines.problem([*base, "edges", int(match["number"]) - 1], message)
    if message.startswith("budget"):
        return lines.problem([*base, "budget"], message)
    return lines.problem(base, message)


def _input_schema_problem(message: str, schema: dict[str, Any], lines: _Lines) -> Problem:
    base: list[str | int] = ["spec", "input_schema"]
    if _INPUT_REQUIRED.match(message):
        return lines.problem([*base, "required"], message)
    if match := _INPUT_FIELD.match(message):
        return lines.problem([*base, "properties", match["name"]], message)
    return lines.problem(base, message)


# --- services ---------------------------------------------------------------------------------------------


@transaction.atomic
def workflow_export(*, actor: User, workflow: Workflow, version_number: int | None = None) -> str:
    """The workflow's file as canonical YAML: published version `version_number`; without one, the draft if
    there is one, else the newest published version. The caller got `workflow` through a selector; the actor
    must be able to view it. Audited as `workflow.exported` with the checksum of what was exported."""
    if not has_object_perm(actor, "workflows.view_workflow", workflow):
        raise Forbidden("You may not view this workflow.")
    versions = workflow.versions.all()
    if version_number is not None:
        version = versions.filter(state=WorkflowVersion.State.PUBLISHED, number=version_number).first()
        if version is None:
            raise ExportNotFound(f'Workflow "{workflow.slug}" has no published version {version_number}.')
    else:
        version = versions.filter(state=WorkflowVersion.State.DRAFT).first() or (
            versions.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number").first()
        )
        if version is None:
            raise ExportNotFound(f'Workflow "{workflow.slug}" has no version to export yet.')
    document = document_build(workflow, version)
    text = document_dump(document)
    audit_record(
        actor=actor,
        verb="workflow.exported",
        target=version,
        data={
            "workflow": workflow.slug,
            "number": version.number,
            "state": version.state,
            "checksum": graph_checksum(version.graph, version.input_schema),
        },
    )
    return text


@dataclass(frozen=True)
class ImportResult:
    """What an import did, or would do on a dry run.

    `workflow` is None on a dry run that would create one; `draft` is the draft written (None on a dry run);
    `diff` compares the file with `diff_base` (the target's draft, else its newest published version, else an
    empty workflow); `missing` is `requires_missing` of the file; `checksum` is the imported spec's.
    """

    workflow: Workflow | None
    created: bool
    draft: WorkflowVersion | None
    diff: VersionDiff
    missing: dict[str, list[str]]
    checksum: str
    diff_base: str


@transaction.atomic
def workflow_import(
    *,
    actor: User,
    text: str,
    workflow: Workflow | None = None,
    dry_run: bool = False,
    team: Team | None = None,
    create_only: bool = False,
) -> ImportResult:
    """Import a workflow file as a draft; never publishes.

    The target is `workflow` (which the caller got through a selector), else the workflow with the file's
    `metadata.slug`. An existing target gets its draft overwritten (created when it has none); its name,
    team and other settings, and its published versions, are left as they are. Without one, a workflow is
    created from the metadata (its slug kept; `team`, if given, instead of the file's team) with the file's
    content as its draft. Refuses (ImportProblems) a file with problems (`document_parse`), an unknown team,
    and a slug taken by a workflow the actor may not change (saying no more than that); Forbidden when the
    actor may not change `workflow` or may not create workflows. Unmet requirements other than step types
    are reported in `missing`, not refused: the draft can be fixed later. A dry run checks everything and
    writes nothing. Audited as `workflow.imported` with the checksum.
    """
    parsed = _parse(text)
    document, lines = parsed.document, parsed.lines
    metadata, spec = document["metadata"], document["spec"]
    graph, input_schema = spec["graph"], spec["input_schema"]
    checksum = graph_checksum(graph, input_schema)
    missing = requires_missing(document)

    target = workflow
    if target is not None:
        if not workflow_can_edit(actor, target):
            raise Forbidden("You may view this workflow but not change it.")
    else:
        target = Workflow.objects.filter(slug=metadata["slug"]).first()
        if target is not None and create_only:
            raise ImportProblems(
                [
                    lines.problem(
                        ["metadata", "slug"],
                        f'A workflow with the slug "{metadata["slug"]}" exists already: to replace its draft, import '
                        "the file from that workflow's Versions page.",
                    )
                ]
            )
        if target is not None and not workflow_can_edit(actor, target):
            raise ImportProblems(
                [
                    lines.problem(
                        ["metadata", "slug"],
                        f'A workflow with the slug "{metadata["slug"]}" exists and you may not change it.',
                    )
                ]
            )

    new_team: Team | None = None
    if target is None:
        if not actor.has_perm("workflows.add_workflow"):
            raise Forbidden("You may not create workflows.")
        new_team = team if team is not None else _team_named(actor, metadata, lines)
        if slugify(metadata["slug"]) != metadata["slug"]:
            raise ImportProblems(
                [
                    lines.problem(
                        ["metadata", "slug"],
                        f'"{metadata["slug"]}" is not a slug this instance creates: use lowercase letters, '
                        f'digits and single hyphens, e.g. "{slugify(metadata["slug"])}".',
                    )
                ]
            )
        base_graph: Any = {"steps": []}
        base_schema: Any = EMPTY_INPUT_SCHEMA
        diff_base = "an empty workflow"
    else:
        if not dry_run:
            # Lock before reading what the diff compares with, so it is exactly what the save replaces
            # (the order services use: the workflow row, then its versions).
            Workflow.objects.select_for_update().filter(pk=target.pk).first()
        base = target.versions.filter(state=WorkflowVersion.State.DRAFT).first() or (
            target.versions.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number").first()
        )
        if base is None:
            base_graph, base_schema, diff_base = {"steps": []}, EMPTY_INPUT_SCHEMA, "an empty workflow"
        else:
            base_graph, base_schema = base.graph, base.input_schema
            diff_base = f"version {base.number} ({'published' if base.is_published else 'the draft'})"
    diff = version_diff(base_graph, base_schema, graph, input_schema)

    if dry_run:
        return ImportResult(
            workflow=target,
            created=target is None,
            draft=None,
            diff=diff,
            missing=missing,
            checksum=checksum,
            diff_base=diff_base,
        )

    created = target is None
    if target is None:
        target = _workflow_create_from(actor, metadata, new_team)
    draft = workflow_draft_save(
        actor=actor, workflow=target, graph=graph, input_schema=input_schema, expected_revision=None, label="Import"
    )
    audit_record(
        actor=actor,
        verb="workflow.imported",
        target=draft,
        data={
            "workflow": target.slug,
            "created": created,
            "number": draft.number,
            "revision": draft.revision,
            "checksum": checksum,
            "source_version": document.get("version", {}).get("number"),
            "missing": missing,
        },
    )
    return ImportResult(
        workflow=target,
        created=created,
        draft=draft,
        diff=diff,
        missing=missing,
        checksum=checksum,
        diff_base=diff_base,
    )


def _team_named(actor: User, metadata: Mapping[str, Any], lines: _Lines) -> Team | None:
    """The file's team, if the importer may give workflows to it (as on the pages: one of their own teams, or
    any team for admins): a file never grants a team rights its importer could not."""
    slug = metadata.get("team")
    if slug is None:
        return None
    if not Team.objects.filter(slug=slug).exists():
        found = None
    else:
        found = team_list_assignable(actor).filter(slug=slug).first()
        if found is None:
            raise ImportProblems(
                [
                    lines.problem(
                        ["metadata", "team"],
                        f'You are not on the team "{slug}": remove "team" to import the workflow as yours alone, '
                        "or ask an administrator.",
                    )
                ]
            )
    if found is None:
        raise ImportProblems(
            [
                lines.problem(
                    ["metadata", "team"],
                    f'There is no team "{slug}" here: create it first, or remove "team" to import without one.',
                )
            ]
        )
    return found


def _workflow_create_from(actor: User, metadata: Mapping[str, Any], team: Team | None) -> Workflow:
    slug, name = metadata["slug"], metadata["name"]
    baseline = Decimal(str(metadata.get("baseline_minutes_per_case", 0))).quantize(Decimal("0.01"))
    description = metadata.get("description", "")
    return workflow_create(
        actor=actor, name=name, description=description, team=team, baseline_minutes_per_case=baseline, slug=slug
    )
