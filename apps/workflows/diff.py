"""A semantic diff between two versions of a workflow: its steps, edges, input schema and graph settings.

The versions page, the API and `manage.py workflow_import --dry-run` show it. `version_diff` compares two
(graph, input_schema) pairs and returns a `VersionDiff`; `diff_text` renders one for a terminal. Pure Python:
no database, no Django.

What counts as a change:

- Steps are matched by `key`. A step is *added*, *removed*, *changed* (any field other than `key` differs)
  and/or *moved*: its incoming edges, as (source, when) pairs, differ, i.e. it now runs after different steps
  or on a different branch. A step that is both changed and moved has kind "changed" and `moved=True`.
- Values are compared literally, except that a missing step "name" equals "", a missing "inputs" equals {},
  a missing "join" equals "all", and a graph without "edges" has the implicit sequential success edges the
  engine runs (graph.py), so spelling those out explicitly is no change. `{"retry": {}}` does differ from no
  "retry" at all.
- Nested dicts are compared key by key, their paths joined with "." ("config.json_schema.properties.amount.type");
  lists and scalars are compared whole. As in JSON, `true` and `1` differ while `1` and `1.0` do not.
- In the input schema, each property's attributes have paths "<property>.<attribute>" ("claim_text.title");
  the other top-level keys keep their own names ("required", "examples").
- Settings are the top-level graph keys other than "steps" and "edges" (budget, output, timeout_seconds).

Malformed input never raises, and the diff says nothing about it, because publish validation reports it:
a graph or schema that is not a dict counts as empty; steps that are not dicts, lack a string "key" or "type",
or repeat an earlier key are skipped (the first of a duplicated key wins); edges that are not dicts or name
unknown steps are skipped; "edges" that is not a list counts as absent.

Cost is linear in the number of steps and edges (dict and set lookups) plus the size of the values compared,
since versions of a few hundred steps are compared on page loads.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from apps.workflows.graph import ERROR, SUCCESS

FieldKind = Literal["added", "removed", "changed"]
StepKind = Literal["added", "removed", "changed", "moved"]
EdgeKind = Literal["added", "removed"]

# Equivalences for step keys that the engine defaults (graph.StepOptions); everything else is literal.
_STEP_DEFAULTS: dict[str, Any] = {"name": "", "inputs": {}, "join": "all"}
_VALUE_WIDTH = 80

Incoming = frozenset[tuple[str, str]]  # (source, when) pairs


@dataclass(frozen=True)
class FieldChange:
    """One changed value. `before` is None for an added value, `after` None for a removed one."""

    path: str
    before: Any
    after: Any
    kind: FieldKind


@dataclass(frozen=True)
class StepChange:
    """One step that differs between versions.

    `type` and `name` are the new version's (the old one's for a removed step). `fields` lists the changed
    fields of a changed step, and is empty otherwise. Positions describe a step's incoming edges in each
    version ('first', 'after "extract"', 'on the "true" branch of "check"'); None where the step is absent.
    """

    key: str
    kind: StepKind
    type: str
    name: str
    moved: bool
    fields: tuple[FieldChange, ...]
    before_position: str | None
    after_position: str | None


@dataclass(frozen=True)
class EdgeChange:
    """An edge present in only one version, after resolving implicit sequential edges."""

    source: str
    target: str
    when: str
    kind: EdgeKind


@dataclass(frozen=True)
class VersionDiff:
    """Everything that differs between two versions.

    `steps` follows the new version's step order, each removed step placed after the step that preceded it in
    the old version. Edges are sorted by (source, target, when); field changes by path.
    """

    steps: tuple[StepChange, ...]
    edges: tuple[EdgeChange, ...]
    input_fields: tuple[FieldChange, ...]
    settings: tuple[FieldChange, ...]

    @property
    def is_empty(self) -> bool:
        return not (self.steps or self.edges or self.input_fields or self.settings)

    def summary(self) -> str:
        """One line, e.g. "2 steps added, 1 removed, 3 changed, 1 moved; 2 input fields changed".

        Edges are not counted: every edge change also adds, removes or moves the step it leads to. A step both
        changed and moved counts in both.
        """
        step_counts = {
            "added": sum(1 for step in self.steps if step.kind == "added"),
            "removed": sum(1 for step in self.steps if step.kind == "removed"),
            "changed": sum(1 for step in self.steps if step.kind == "changed"),
            "moved": sum(1 for step in self.steps if step.moved),
        }
        step_parts: list[str] = []
        for verb, count in step_counts.items():
            if count:
                noun = "" if step_parts else f" {_plural(count, 'step')}"
                step_parts.append(f"{count}{noun} {verb}")
        parts = [", ".join(step_parts)] if step_parts else []
        if self.input_fields:
            parts.append(f"{len(self.input_fields)} {_plural(len(self.input_fields), 'input field')} changed")
        if self.settings:
            parts.append(f"{len(self.settings)} {_plural(len(self.settings), 'setting')} changed")
        return "; ".join(parts) or "No changes"


def version_diff(
    before_graph: Any,
    before_input_schema: Any,
    after_graph: Any,
    after_input_schema: Any,
) -> VersionDiff:
    """The semantic diff from one version (graph and input schema) to another; never raises on bad input."""
    before, after = _Version.parse(before_graph), _Version.parse(after_graph)
    steps = _step_changes(before, after)
    edges = sorted(
        [EdgeChange(*edge, kind="removed") for edge in before.edges - after.edges]
        + [EdgeChange(*edge, kind="added") for edge in after.edges - before.edges],
        key=lambda edge: (edge.source, edge.target, edge.when, edge.kind),
    )
    input_fields = _sorted_changes(
        _diff_values("", _schema_fields(before_input_schema), _schema_fields(after_input_schema), [])
    )
    settings = _sorted_changes(_diff_values("", before.settings, after.settings, []))
    return VersionDiff(steps=tuple(steps), edges=tuple(edges), input_fields=input_fields, settings=settings)


def diff_text(diff: VersionDiff) -> str:
    """A plain-text rendering, one change per line (long values truncated), or "No changes"."""
    if diff.is_empty:
        return "No changes"
    lines: list[str] = []
    for step in diff.steps:
        label = f'step "{step.key}" ({step.name or step.type})'
        if step.kind == "added":
            lines.append(f"+ {label} added {step.after_position}")
            continue
        if step.kind == "removed":
            lines.append(f"- {label} removed")
            continue
        for change in step.fields:
            lines.append(f"~ {label}: {change.path} {change.kind}")
            if change.kind != "added":
                lines.append(f"    before: {_render(change.before)}")
            if change.kind != "removed":
                lines.append(f"    after:  {_render(change.after)}")
        if step.moved:
            lines.append(f"> {label} moved: was {step.before_position}, now {step.after_position}")
    for edge in diff.edges:
        when = "" if edge.when == SUCCESS else f' when "{edge.when}"'
        lines.append(f"{'+' if edge.kind == 'added' else '-'} edge {edge.source} → {edge.target}{when}")
    lines.extend(_field_lines("input field", diff.input_fields))
    lines.extend(_field_lines("setting", diff.settings))
    return "\n".join(lines)


@dataclass
class _Version:
    """One version's graph reduced to what the diff compares, with malformed parts dropped."""

    order: list[str]
    index: dict[str, int]  # key -> position in `order`
    steps: dict[str, dict[str, Any]]  # key -> the step's fields other than "key", defaults filled in
    edges: set[tuple[str, str, str]]  # (source, target, when)
    incoming: dict[str, Incoming]
    settings: dict[str, Any]

    @classmethod
    def parse(cls, graph: Any) -> _Version:
        if not isinstance(graph, Mapping):
            graph = {}
        steps: dict[str, dict[str, Any]] = {}
        raw_steps = graph.get("steps")
        for step in raw_steps if isinstance(raw_steps, list) else []:
            if not isinstance(step, Mapping):
                continue
            key, step_type = step.get("key"), step.get("type")
            if not isinstance(key, str) or not key or not isinstance(step_type, str) or key in steps:
                continue
            steps[key] = {**_STEP_DEFAULTS, **{name: value for name, value in step.items() if name != "key"}}
        order = list(steps)

        raw_edges = graph.get("edges")
        edges: set[tuple[str, str, str]] = set()
        if isinstance(raw_edges, list):
            for edge in raw_edges:
                if not isinstance(edge, Mapping):
                    continue
                source, target, when = edge.get("from"), edge.get("to"), edge.get("when", SUCCESS)
                if (
                    isinstance(source, str)
                    and isinstance(target, str)
                    and isinstance(when, str)
                    and (source in steps and target in steps)
                ):
                    edges.add((source, target, when))
        else:
            edges = {(source, target, SUCCESS) for source, target in itertools.pairwise(order)}

        incoming_lists: dict[str, list[tuple[str, str]]] = {key: [] for key in order}
        for source, target, when in edges:
            incoming_lists[target].append((source, when))
        settings = {name: value for name, value in graph.items() if name not in ("steps", "edges")}
        return cls(
            order=order,
            index={key: i for i, key in enumerate(order)},
            steps=steps,
            edges=edges,
            incoming={key: frozenset(pairs) for key, pairs in incoming_lists.items()},
            settings=settings,
        )

    def position(self, key: str) -> str:
        """Where a step runs, in words, from its incoming edges."""
        incoming = sorted(self.incoming[key], key=lambda pair: (self.index[pair[0]], pair[1]))
        if not incoming:
            return "first"
        after = [f'"{source}"' for source, when in incoming if when == SUCCESS]
        parts = [f"after {_join_words(after)}"] if after else []
        for source, when in incoming:
            if when == ERROR:
                parts.append(f'on the error path of "{source}"')
            elif when != SUCCESS:
                parts.append(f'on the "{when}" branch of "{source}"')
        return " and ".join(parts)


def _step_changes(before: _Version, after: _Version) -> list[StepChange]:
    changes: dict[str, StepChange] = {}
    for key in after.order:
        step = after.steps[key]
        if key not in before.steps:
            changes[key] = _step_change(key, "added", step, after_position=after.position(key))
            continue
        fields = _sorted_changes(_diff_values("", before.steps[key], step, []))
        moved = before.incoming[key] != after.incoming[key]
        if fields or moved:
            changes[key] = _step_change(
                key,
                "changed" if fields else "moved",
                step,
                moved=moved,
                fields=fields,
                before_position=before.position(key),
                after_position=after.position(key),
            )

    # Each removed step goes right after the nearest step before it (in the old order) that still exists,
    # so the list reads like the new version with the removals left in place.
    removed_after: dict[str | None, list[StepChange]] = {}
    anchor: str | None = None
    for key in before.order:
        if key in after.steps:
            anchor = key
        else:
            removal = _step_change(key, "removed", before.steps[key], before_position=before.position(key))
            removed_after.setdefault(anchor, []).append(removal)

    ordered = list(removed_after.get(None, []))
    for key in after.order:
        if key in changes:
            ordered.append(changes[key])
        ordered.extend(removed_after.get(key, []))
    return ordered


def _step_change(
    key: str,
    kind: StepKind,
    step: Mapping[str, Any],
    *,
    moved: bool = False,
    fields: tuple[FieldChange, ...] = (),
    before_position: str | None = None,
    after_position: str | None = None,
) -> StepChange:
    name = step.get("name")
    return StepChange(
        key=key,
        kind=kind,
        type=step["type"],
        name=name if isinstance(name, str) else "",
        moved=moved,
        fields=fields,
        before_position=before_position,
        after_position=after_position,
    )


def _schema_fields(schema: Any) -> dict[str, Any]:
    """An input schema flattened so that each property sits at the top level beside "required", "examples"."""
    if not isinstance(schema, Mapping):
        return {}
    fields = {name: value for name, value in schema.items() if name != "properties"}
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        fields.update(properties)
    elif "properties" in schema:
        fields["properties"] = properties
    return fields


def _diff_values(path: str, before: Any, after: Any, out: list[FieldChange]) -> list[FieldChange]:
    """Append to `out` the changes from `before` to `after`, recursing into dicts; return `out`."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        for name in before.keys() | after.keys():
            child = f"{path}.{name}" if path else str(name)
            if name not in after:
                out.append(FieldChange(child, before[name], None, "removed"))
            elif name not in before:
                out.append(FieldChange(child, None, after[name], "added"))
            else:
                _diff_values(child, before[name], after[name], out)
    elif not _same(before, after):
        out.append(FieldChange(path, before, after, "changed"))
    return out


def _same(before: Any, after: Any) -> bool:
    """Equality as JSON sees it: Python's `True == 1` would hide a change from a number to a boolean."""
    if isinstance(before, bool) or isinstance(after, bool):
        return type(before) is type(after) and before == after
    if isinstance(before, list | tuple) and isinstance(after, list | tuple):
        return len(before) == len(after) and all(_same(a, b) for a, b in zip(before, after, strict=True))
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        return before.keys() == after.keys() and all(_same(before[name], after[name]) for name in before)
    return bool(before == after)


def _sorted_changes(changes: list[FieldChange]) -> tuple[FieldChange, ...]:
    return tuple(sorted(changes, key=lambda change: change.path))


def _field_lines(noun: str, changes: tuple[FieldChange, ...]) -> list[str]:
    lines = []
    for change in changes:
        if change.kind == "added":
            lines.append(f"+ {noun} {change.path} added: {_render(change.after)}")
        elif change.kind == "removed":
            lines.append(f"- {noun} {change.path} removed (was {_render(change.before)})")
        else:
            lines.append(f"~ {noun} {change.path}: {_render(change.before)} → {_render(change.after)}")
    return lines


def _render(value: Any) -> str:
    """A value on one line as JSON (strings in double quotes), cut to about 80 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # non-string dict keys or a cycle: not JSON, but still worth showing
        text = repr(value)
    if len(text) <= _VALUE_WIDTH:
        return text
    if not isinstance(value, str):
        return text[: _VALUE_WIDTH - 1] + "…"
    # Cut the string, not its JSON, so an escape such as \n is never split and the closing quote stays.
    kept, width = [], 2
    for character in value:
        escaped = json.dumps(character, ensure_ascii=False)[1:-1]
        if width + len(escaped) > _VALUE_WIDTH - 1:
            break
        kept.append(escaped)
        width += len(escaped)
    return '"' + "".join(kept) + '…"'


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"
