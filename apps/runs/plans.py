"""What the engine needs to know about a run's graph, parsed once per process.

A published version never changes, so its parsed graph, each step's definition and options, and the earlier
steps each step's expressions read are kept per process (a small LRU keyed by version). A test run executes
its own graph snapshot and a what-if run merges config overrides, so theirs are parsed per call.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from apps.runs.models import Run, StepRun
from apps.workflows.graph import Graph, StepOptions, step_options, step_references
from apps.workflows.models import WorkflowVersion

CACHED_VERSIONS = 256


@dataclass(frozen=True)
class StepPlan:
    """One step as its run executes it."""

    definition: dict[str, Any]
    options: StepOptions
    # The earlier steps whose outputs its expressions and templates read; None when that cannot be told from
    # the text (`steps["x"]`, `steps.items()`), and every output is loaded.
    reads: frozenset[str] | None


@dataclass(frozen=True)
class RunPlan:
    graph: Graph
    steps: dict[str, StepPlan]


def _reads(definition: dict[str, Any], keys: set[str]) -> frozenset[str] | None:
    names, complete = step_references([definition.get("config", {}), definition.get("inputs", {})])
    if not complete or not names <= keys:
        return None
    return frozenset(names)


def _build(graph: dict[str, Any], run: Run) -> RunPlan:
    keys = {step["key"] for step in graph.get("steps", [])}
    steps = {}
    for step in graph.get("steps", []):
        definition = run.step_definition(step["key"])
        steps[step["key"]] = StepPlan(definition, step_options(definition), _reads(definition, keys))
    return RunPlan(Graph.parse(graph), steps)


# The asynchronous executor's database threads share these.
_lock = threading.Lock()
_plans: OrderedDict[tuple[int, str], RunPlan] = OrderedDict()
_versions: OrderedDict[tuple[int, str], WorkflowVersion] = OrderedDict()


def _remember(cache: OrderedDict[Any, Any], key: tuple[int, str], value: Any) -> None:
    cache[key] = value
    if len(cache) > CACHED_VERSIONS:
        cache.popitem(last=False)


def run_plan(run: Run) -> RunPlan:
    """The parsed graph and step plans of what `run` executes."""
    version = run.version
    if run.graph_snapshot is not None or run.overrides or not version.is_published:
        return _build(run.graph, run)
    key = (version.pk, version.checksum)
    with _lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan
    plan = _build(version.graph, run)
    with _lock:
        _remember(_plans, key, plan)
    return plan


def step_plan(run: Run, step_run: StepRun) -> StepPlan:
    """The plan of one step run: its graph step's, or, for a tool call an agent made, one built from the
    definition the call carries (it reads no earlier outputs: its params are the model's arguments)."""
    if not step_run.is_tool_call:
        return run_plan(run).steps[step_run.step_key]
    definition = step_run.definition
    if definition is None:  # an instance built without the column
        definition = StepRun.objects.values_list("definition", flat=True).get(pk=step_run.pk)
    definition = dict(definition or {})
    # The call's own keys (its tool, call id, turn) are not options of a graph step.
    as_step = {key: definition[key] for key in ("key", "type", "name", "config") if key in definition}
    return StepPlan(definition, step_options(as_step), frozenset())


def version_get(version_id: int, checksum: str) -> WorkflowVersion:
    """The version, from this process's cache when it is published (published versions are immutable), so
    locking a run does not decode its whole graph again for every step. `checksum` is the one the run's row
    points at, read with the run (without the graph)."""
    key = (version_id, checksum)
    with _lock:
        cached = _versions.get(key)
        if cached is not None:
            _versions.move_to_end(key)
            # A copy, so that what a caller loads through it (its workflow, which can change) is not kept here.
            return copy.copy(cached)
    version = WorkflowVersion.objects.get(pk=version_id)
    if version.is_published and version.checksum == checksum:
        with _lock:
            _remember(_versions, key, copy.copy(version))
    return version
