"""The data picker: what a step's expressions and templates may refer to, and the references a text uses.

A step may read the run's input and the outputs of the steps that always run before it (the same rule the
publish validator applies). Each step type's output fields are known from its settings where possible (an
extraction's schema, a transform's field names, an approval's decision) so the picker offers them by name;
a sample value from the newest run of the workflow is shown beside each reference when there is one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apps.steps.registry import step_types
from apps.workflows.graph import Graph

_REFERENCE = re.compile(r"\b(input|steps)\.([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


@dataclass(frozen=True)
class Reference:
    """One thing a step may read: `expression` (as CEL writes it), a readable label, and its group."""

    expression: str
    label: str
    group: str
    sample: str = ""


def _schema_fields(schema: Any) -> list[str]:
    if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        return [str(name) for name in schema["properties"]]
    return []


def step_output_fields(step: Mapping[str, Any]) -> list[str]:
    """The dotted output fields a step is known to produce, given its settings."""
    config = step.get("config") if isinstance(step.get("config"), dict) else {}
    assert isinstance(config, dict)
    kind = step.get("type")
    if kind == "llm.extract":
        return [*(f"data.{name}" for name in _schema_fields(config.get("json_schema"))), "confidence", "text"]
    if kind == "llm.generate":
        data = [f"data.{name}" for name in _schema_fields(config.get("json_schema"))]
        return ["text", *data] if config.get("output") == "json" else ["text"]
    if kind == "llm.classify":
        return ["label", "confidence", "branch"]
    if kind == "data.transform":
        return [str(name) for name in (config.get("fields") or {})] if isinstance(config.get("fields"), dict) else []
    if kind == "human.approval":
        return ["decision", "reason", "edits", "decided_by"]
    if kind == "http.request":
        return ["status", "body"]
    if kind == "flow.subworkflow":
        return ["output", "run_id"]
    if kind == "flow.foreach":
        return ["results", "failed"]
    if kind in ("logic.if", "logic.switch"):
        return ["branch"]
    return []


def _sample_text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _dig(value: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def references_for_step(
    graph: Mapping[str, Any],
    input_schema: Mapping[str, Any],
    key: str,
    *,
    sample: Mapping[str, Any] | None = None,
) -> list[Reference]:
    """What step `key` may refer to: run input fields, then each step that always runs before it and its
    fields. `sample` is a recorded run's data ({"input": ..., "steps": {key: output}}) for sample values."""
    sample = sample or {}
    result = []
    properties = input_schema.get("properties") if isinstance(input_schema.get("properties"), dict) else {}
    assert isinstance(properties, dict)
    for name, spec in properties.items():
        title = spec.get("title") if isinstance(spec, dict) else None
        value = _dig(sample.get("input"), [name])
        result.append(
            Reference(
                f"input.{name}", str(title or name), "Run input", _sample_text(value) if value is not None else ""
            )
        )
    try:
        parsed = Graph.parse(graph)
        before = parsed.ancestors(key) if key in parsed.keys else set()
    except (KeyError, TypeError):
        return result
    types = step_types()
    for step in graph.get("steps") or []:
        if not isinstance(step, dict) or step.get("key") not in before:
            continue
        step_key = str(step["key"])
        title = str(step.get("name") or step_key)
        type_name = types[step["type"]].name if step.get("type") in types else str(step.get("type"))
        outputs = _dig(sample.get("steps"), [step_key])
        for name in step_output_fields(step):
            value = _dig(outputs, name.split("."))
            result.append(
                Reference(
                    f"steps.{step_key}.{name}",
                    f"{title} › {name.replace('data.', '')}",
                    f"{title} ({type_name})",
                    _sample_text(value) if value is not None else "",
                )
            )
    return result


def references_in(text: Any, graph: Mapping[str, Any], input_schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The references a text uses, as (expression, readable label) pairs, for the chips under a field."""
    if not isinstance(text, str):
        return []
    names = {
        str(s.get("key")): str(s.get("name") or s.get("key")) for s in graph.get("steps") or [] if isinstance(s, dict)
    }
    properties = input_schema.get("properties") if isinstance(input_schema.get("properties"), dict) else {}
    assert isinstance(properties, dict)
    found: dict[str, str] = {}
    for root, first, rest in _REFERENCE.findall(text):
        expression = f"{root}.{first}{rest}"
        if root == "input":
            spec = properties.get(first)
            title = spec.get("title") if isinstance(spec, dict) else None
            found[expression] = f"Run input › {title or first}{rest.replace('.', ' › ')}"
        else:
            detail = rest.lstrip(".").replace("data.", "", 1).replace(".", " › ")
            found[expression] = f"{names.get(first, first)}{' › ' + detail if detail else ''}"
    return list(found.items())
