"""A version's graph: its model, the step options common to every step type, and validation on publish.

`graph["steps"]` lists the steps; `graph["edges"]` lists `{"from", "to", "when"}`, where `when` is
"success" (the default), "error" (an error branch, taken when the step fails) or a branch label that a
`logic.if` / `logic.switch` step puts in its output's `branch`. A graph without "edges" runs its steps in
list order.

Publishing reports every problem at once, each naming its step: unknown step types, invalid configs,
duplicate keys, edges to nowhere, cycles (repetition only through `flow.foreach`), and expressions that
refer to the output of a step that cannot have run before them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from apps.steps.expressions import cel_check, template_check
from apps.steps.registry import step_config_errors

SUCCESS, ERROR = "success", "error"


class RetryPolicy(BaseModel):
    """How a failed attempt is retried: exponential backoff with jitter, for retryable errors or any."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(1, ge=1, le=20)
    backoff_seconds: float = Field(1.0, ge=0, le=3600)
    multiplier: float = Field(2.0, ge=1, le=10)
    max_backoff_seconds: float = Field(300.0, ge=0, le=86400)
    jitter: float = Field(0.2, ge=0, le=1, description="Up to this fraction of the delay is added at random.")
    retry_on: Literal["retryable", "any"] = "retryable"

    def delay_for(self, attempt: int, random_fraction: float) -> float:
        """Seconds before attempt `attempt + 1`, given a random number in [0, 1)."""
        base = min(self.backoff_seconds * self.multiplier ** (attempt - 1), self.max_backoff_seconds)
        return base * (1 + self.jitter * random_fraction)


class TemplateMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str


class StepOptions(BaseModel):
    """The parts of a step definition that the engine reads, whatever the step type.

    `inputs` maps names to a CEL expression (a string) or a text template (`{"template": "..."}`) over
    `input` and `steps`; the step sees the results as `params`.
    """

    model_config = ConfigDict(extra="forbid")

    key: str
    type: str
    name: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str | TemplateMapping] = Field(default_factory=dict)
    join: Literal["all", "any"] = "all"
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_seconds: float | None = Field(None, gt=0, le=86400)


class EdgeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: str = Field(alias="from")
    target: str = Field(alias="to")
    when: str = "success"


def step_options(step: dict[str, Any]) -> StepOptions:
    """The validated options of one step definition (raises pydantic's ValidationError)."""
    return StepOptions.model_validate(step)


_STEPS_WORD = re.compile(r"(?<![\w.])steps(?!\w)")
_STEP_REFERENCE = re.compile(r"(?<![\w.])steps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)(\s*\()?")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def step_references(value: Any) -> tuple[set[str], bool]:
    """The step keys that a config's expressions and templates read as `steps.<key>`, and whether that is all
    they read of `steps`: False when some use cannot be told from the text (`steps["key"]`, `steps.items()`,
    `steps` passed whole). Each string is read as written, not as JSON, where an escaped newline or tab before
    `steps` would hide it."""
    names: set[str] = set()
    complete = True
    for text in _strings(value):
        found = list(_STEP_REFERENCE.finditer(text))
        names.update(match.group(1) for match in found)
        if len(found) != len(_STEPS_WORD.findall(text)) or any(match.group(2) for match in found):
            complete = False
    return names, complete


def _referenced_steps(config: Any) -> set[str]:
    """Step keys that a config's expressions and templates read (`steps.<key>`)."""
    return step_references(config)[0]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    when: str = SUCCESS


@dataclass
class Graph:
    """A version's graph with its edges resolved (implicit sequential edges made explicit)."""

    keys: list[str]
    joins: dict[str, str]
    incoming: dict[str, list[Edge]] = field(default_factory=dict)
    outgoing: dict[str, list[Edge]] = field(default_factory=dict)

    @classmethod
    def parse(cls, graph: Mapping[str, Any]) -> Graph:
        steps = list(graph.get("steps", []))
        keys = [step["key"] for step in steps]
        joins = {step["key"]: step.get("join", "all") for step in steps}
        if "edges" in graph:
            edges = [Edge(e["from"], e["to"], e.get("when", SUCCESS)) for e in graph["edges"]]
        else:
            edges = [Edge(a, b) for a, b in itertools.pairwise(keys)]
        parsed = cls(keys=keys, joins=joins)
        for key in keys:
            parsed.incoming[key] = []
            parsed.outgoing[key] = []
        for edge in edges:
            parsed.outgoing[edge.source].append(edge)
            parsed.incoming[edge.target].append(edge)
        return parsed

    def sinks(self) -> list[str]:
        """Steps with no outgoing edges: their outputs form the run's output."""
        return [key for key in self.keys if not self.outgoing[key]]

    def handles_errors(self, key: str) -> bool:
        return any(edge.when == ERROR for edge in self.outgoing[key])

    def descendants(self, key: str) -> set[str]:
        """Every step reachable from `key` (not including it)."""
        seen: set[str] = set()
        frontier = [key]
        while frontier:
            for edge in self.outgoing[frontier.pop()]:
                if edge.target not in seen:
                    seen.add(edge.target)
                    frontier.append(edge.target)
        return seen

    def ancestors(self, key: str) -> set[str]:
        """Every step from which `key` is reachable."""
        seen: set[str] = set()
        frontier = [key]
        while frontier:
            for edge in self.incoming[frontier.pop()]:
                if edge.source not in seen:
                    seen.add(edge.source)
                    frontier.append(edge.source)
        return seen

    def cycle(self) -> list[str] | None:
        """A list of keys forming a cycle, or None when the graph is acyclic.

        Iterative, so a workflow of thousands of sequential steps is checked without running out of stack."""
        colour: dict[str, int] = dict.fromkeys(self.keys, 0)  # 0 new, 1 on the path, 2 done
        for root in self.keys:
            if colour[root]:
                continue
            colour[root] = 1
            path = [root]
            pending = [iter(self.outgoing[root])]
            while pending:
                edge = next(pending[-1], None)
                if edge is None:
                    colour[path.pop()] = 2
                    pending.pop()
                elif colour[edge.target] == 1:
                    return [*path[path.index(edge.target) :], edge.target]
                elif colour[edge.target] == 0:
                    colour[edge.target] = 1
                    path.append(edge.target)
                    pending.append(iter(self.outgoing[edge.target]))
        return None


def _mapping_errors(options: StepOptions) -> list[str]:
    problems = []
    for name, mapping in options.inputs.items():
        if not name.isidentifier():
            problems.append(f'inputs: "{name}" is not a valid name (letters, digits and _)')
        if isinstance(mapping, TemplateMapping):
            problem = template_check(mapping.template)
            if problem:
                problems.append(f"inputs.{name}: the template does not parse: {problem}")
        else:
            problem = cel_check(mapping)
            if problem:
                problems.append(f"inputs.{name}: the expression `{mapping}` does not parse: {problem}")
    return problems


def graph_errors(graph: Any) -> list[str]:
    """Every problem with `graph` as readable messages (empty when it may be published)."""
    if not isinstance(graph, dict) or not isinstance(graph.get("steps"), list):
        return ['graph: must be {"steps": [...], "edges": [...]}']
    steps = graph["steps"]
    if not steps:
        return ["graph: a workflow needs at least one step"]
    problems: list[str] = []
    seen: set[str] = set()
    valid_steps: list[dict[str, Any]] = []
    for index, step in enumerate(steps, start=1):
        if not isinstance(step, dict):
            problems.append(f"step {index}: must be an object with key, type and config")
            continue
        key = step.get("key")
        label = f'step "{key}"' if isinstance(key, str) and key else f"step {index}"
        if not isinstance(key, str) or not key.isidentifier():
            problems.append(f"{label}: key must be a name of letters, digits and _ (got {key!r})")
            continue
        duplicate = key in seen
        if duplicate:
            problems.append(f"{label}: key is used by an earlier step")
        seen.add(key)
        try:
            options = step_options(step)
        except ValidationError as error:
            problems.extend(
                f"{label}: {'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()
            )
            continue
        problems.extend(f"{label}: {message}" for message in step_config_errors(options.type, options.config))
        problems.extend(f"{label}: {message}" for message in _mapping_errors(options))
        if not duplicate:
            valid_steps.append(step)
    problems.extend(_budget_errors(graph.get("budget")))
    output = graph.get("output")
    if output is not None and (not isinstance(output, str) or output not in seen):
        problems.append(f'graph: output names step "{output}", which does not exist')
    edges = graph.get("edges")
    if edges is not None:
        if not isinstance(edges, list):
            return [*problems, "graph: edges must be a list"]
        for index, edge in enumerate(edges, start=1):
            try:
                parsed = EdgeOptions.model_validate(edge)
            except ValidationError:
                problems.append(f'edge {index}: must be {{"from": <step>, "to": <step>, "when"?: <label>}}')
                continue
            for end in (parsed.source, parsed.target):
                if end not in seen:
                    problems.append(f'edge {index}: there is no step "{end}"')
    if problems:
        return problems
    structure = Graph.parse(graph)
    cycle = structure.cycle()
    if cycle:
        return [f"graph: the steps {' → '.join(cycle)} form a cycle (repeat work with flow.foreach instead)"]
    for step in valid_steps:
        before = structure.ancestors(step["key"])
        for name in sorted(_referenced_steps([step.get("config", {}), step.get("inputs", {})])):
            if name not in seen:
                problems.append(f'step "{step["key"]}": refers to steps.{name}, but there is no step "{name}"')
            elif name not in before:
                problems.append(f'step "{step["key"]}": refers to steps.{name}, which does not always run before it')
    return problems


def graph_checksum(graph: dict[str, Any], input_schema: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a version's executable content."""
    canonical = json.dumps({"graph": graph, "input_schema": input_schema}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _budget_errors(budget: Any) -> list[str]:
    """A run budget is {"max_tokens": positive int, "max_cost": positive number}, either or both."""
    if budget is None:
        return []
    if not isinstance(budget, dict) or not set(budget) <= {"max_tokens", "max_cost"}:
        return ['budget: must be {"max_tokens": <tokens>, "max_cost": <amount>}, either or both']
    problems = []
    tokens = budget.get("max_tokens")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        problems.append("budget.max_tokens: must be a whole number of tokens, at least 1")
    cost = budget.get("max_cost")
    if cost is not None:
        try:
            valid = float(cost) > 0 and not isinstance(cost, bool)
        except (TypeError, ValueError):
            valid = False
        if not valid:
            problems.append("budget.max_cost: must be a positive amount, e.g. 2.50")
    return problems
