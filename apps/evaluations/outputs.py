"""What a suite can check: the output fields of a step (or of the run), read from its type, and how an expected
value is compared with the actual one.

A registry of small readers, one per step type whose output has named fields. Each says which fields the step
outputs (with a JSON Schema type where the step declares one), takes the checked fields out of a step run's
output, and says what is wrong with that output against the step's own schema.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from apps.steps.library.llm_generate import schema_errors

# A field whose step declares no type: any single value can be expected of it.
ANY = "any"
SCALAR_TYPES = ("string", "number", "integer", "boolean", ANY)


@dataclass(frozen=True)
class OutputField:
    """One checkable field: its name, its type (a JSON Schema type or ANY) and, for a choice, its values."""

    name: str
    type: str = ANY
    choices: tuple[Any, ...] = ()

    @property
    def type_label(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(choice) for choice in self.choices)
        return {
            "string": "text",
            "number": "number",
            "integer": "whole number",
            "boolean": "yes / no",
        }.get(self.type, "any single value")


class OutputReader:
    """How to read one step type's output. Subclasses set `slugs` and override what differs."""

    slugs: ClassVar[tuple[str, ...]] = ()

    def fields(self, step: dict[str, Any]) -> list[OutputField] | None:
        """The fields the step outputs; None when any field name is possible (the step declares none)."""
        return None

    def actual(self, step: dict[str, Any], output: Any) -> dict[str, Any]:
        return output if isinstance(output, dict) else {}

    def schema_problems(self, step: dict[str, Any], output: Any) -> list[str] | None:
        """What is wrong with `output` against the step's declared schema; None when it declares none."""
        return None


def _config(step: dict[str, Any]) -> dict[str, Any]:
    config = step.get("config")
    return config if isinstance(config, dict) else {}


def _schema_fields(schema: Any) -> list[OutputField]:
    if not isinstance(schema, dict):
        return []
    fields = []
    for name, spec in (schema.get("properties") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type") if spec.get("type") in SCALAR_TYPES else ANY
        if spec.get("type") in ("object", "array"):
            continue  # lists and nested objects are not compared field by field
        fields.append(OutputField(name=str(name), type=str(kind), choices=tuple(spec.get("enum") or ())))
    return fields


class SchemaDataReader(OutputReader):
    """Steps that output `data` for a JSON Schema in their settings (extraction; generation with JSON output)."""

    slugs = ("llm.extract", "llm.generate")

    def _schema(self, step: dict[str, Any]) -> dict[str, Any] | None:
        config = _config(step)
        if step.get("type") == "llm.generate" and config.get("output") != "json":
            return None
        schema = config.get("json_schema")
        return schema if isinstance(schema, dict) else None

    def fields(self, step: dict[str, Any]) -> list[OutputField] | None:
        schema = self._schema(step)
        if schema is None:
            return [OutputField(name="text", type="string")]
        return _schema_fields(schema)

    def actual(self, step: dict[str, Any], output: Any) -> dict[str, Any]:
        output = output if isinstance(output, dict) else {}
        if self._schema(step) is None:
            return {"text": output.get("text")}
        data = output.get("data")
        return data if isinstance(data, dict) else {}

    def schema_problems(self, step: dict[str, Any], output: Any) -> list[str] | None:
        schema = self._schema(step)
        if schema is None:
            return None
        data = output.get("data") if isinstance(output, dict) else None
        return schema_errors(data, {key: value for key, value in schema.items() if key != "x-order"})


class ClassifyReader(OutputReader):
    """`llm.classify`: the label it chose, one of its settings' labels."""

    slugs = ("llm.classify",)

    def fields(self, step: dict[str, Any]) -> list[OutputField] | None:
        labels = _config(step).get("labels")
        return [OutputField(name="label", type="string", choices=tuple(labels if isinstance(labels, list) else ()))]

    def actual(self, step: dict[str, Any], output: Any) -> dict[str, Any]:
        return {"label": output.get("label") if isinstance(output, dict) else None}

    def schema_problems(self, step: dict[str, Any], output: Any) -> list[str] | None:
        labels = _config(step).get("labels") or []
        label = output.get("label") if isinstance(output, dict) else None
        return [] if label in labels else [f"label: {label!r} is not one of the step's labels"]


class TransformReader(OutputReader):
    """`data.transform`: the fields its settings compute."""

    slugs = ("data.transform",)

    def fields(self, step: dict[str, Any]) -> list[OutputField] | None:
        fields = _config(step).get("fields")
        return [OutputField(name=str(name)) for name in fields] if isinstance(fields, dict) else []


READERS: dict[str, OutputReader] = {
    slug: reader for reader in (SchemaDataReader(), ClassifyReader(), TransformReader()) for slug in reader.slugs
}
RUN_OUTPUT = OutputReader()  # the run's output: whatever its last steps made, no declared fields


def checked_step(graph: Any, step_key: str) -> dict[str, Any] | None:
    """The step definition called `step_key` in `graph` (None when absent)."""
    steps = graph.get("steps") if isinstance(graph, dict) else None
    return next(
        (step for step in steps or [] if isinstance(step, dict) and step.get("key") == step_key),
        None,
    )


def reader_for(graph: Any, step_key: str) -> tuple[OutputReader, dict[str, Any]] | None:
    """The reader and step definition for a suite's checked step ("" for the run's output); None when the step is
    missing or its type's output has no named fields."""
    if not step_key:
        return RUN_OUTPUT, {}
    step = checked_step(graph, step_key)
    if step is None:
        return None
    reader = READERS.get(str(step.get("type")))
    return (reader, step) if reader is not None else None


def checkable_steps(graph: Any) -> list[dict[str, Any]]:
    """The steps of `graph` a suite can check, in graph order."""
    steps = graph.get("steps") if isinstance(graph, dict) else None
    return [step for step in steps or [] if isinstance(step, dict) and str(step.get("type")) in READERS]


def expected_problems(fields: list[OutputField] | None, expected: Any) -> dict[str, list[str]]:
    """Why `expected` ({field: value}) cannot be expected of an output with `fields`, per field (empty when it can)."""
    if not isinstance(expected, dict):
        return {"expected": ["Give the expected output as fields and values."]}
    if not expected:
        return {"expected": ["Expect at least one field: a case that checks nothing cannot fail."]}
    known = {field.name: field for field in fields} if fields is not None else None
    problems: dict[str, list[str]] = {}
    for name, value in expected.items():
        if known is not None and name not in known:
            names = ", ".join(sorted(known)) or "no fields"
            problems[name] = [f'"{name}" is not a field of this output (it has {names}).']
            continue
        field = known[name] if known is not None else OutputField(name=name)
        problem = _value_problem(field, value)
        if problem:
            problems[name] = [problem]
    return problems


def _value_problem(field: OutputField, value: Any) -> str | None:
    if field.choices:
        return None if value in field.choices else f'"{field.name}" must be {field.type_label}, not {value!r}.'
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if field.type == "string" and not isinstance(value, str):
        return f'"{field.name}" is text: give it in quotes, not {value!r}.'
    if field.type == "number" and not (is_number and math.isfinite(float(value))):
        return f'"{field.name}" is a number, not {value!r}.'
    if field.type == "integer" and not (is_number and float(value).is_integer()):
        return f'"{field.name}" is a whole number, not {value!r}.'
    if field.type == "boolean" and not isinstance(value, bool):
        return f'"{field.name}" is yes / no (true or false), not {value!r}.'
    if field.type == ANY and not (value is None or isinstance(value, str | bool) or is_number):
        return f'"{field.name}" must be a single value (text, a number, true or false), not a list or an object.'
    return None


def values_match(expected: Any, actual: Any) -> bool:
    """Exact comparison after trimming text at both ends: 850 and 850.0 are equal, "Maria Lopez " and
    "Maria Lopez" are equal, "maria lopez" and "Maria Lopez" are not."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(expected) == float(actual)
    if isinstance(expected, str) and isinstance(actual, str):
        return expected.strip() == actual.strip()
    return bool(expected == actual)
