"""Permission-aware reads of runs.

A user sees a run when they may view its workflow, started it themselves, or were granted `view_run` on
it (directly or through a role).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Count, Q, QuerySet, Sum
from django.http import Http404

from apps.core.permissions import restrict
from apps.inference.models import InferenceCall
from apps.runs import engine, hooks
from apps.runs.effects import effects_sent
from apps.runs.models import Incident, Run, StepRun
from apps.runs.presentation import (
    StepFacts,
    Value,
    agent_view,
    run_inputs_display,
    run_result_display,
    step_output_display,
)
from apps.workflows.diagram import Diagram, diagram_for_graph
from apps.workflows.graph import Graph
from apps.workflows.selectors import workflow_can_edit, workflow_list_for_user

AnyUser = AbstractUser | AnonymousUser


def run_list_for_user(user: AnyUser, *, through_other_apps: bool = True) -> QuerySet[Run]:
    """Every run `user` may view, newest first. Without `through_other_apps`, only the runs she may view in
    her own right (not those an upper app lets her read, such as the runs behind her queues' items)."""
    if not user.is_authenticated:
        return Run.objects.none()
    granted = restrict(Run.objects.all(), user, "runs.view_run").values("pk")
    visible_workflows = workflow_list_for_user(user).values("pk")
    visible = Q(workflow__in=visible_workflows) | Q(initiator=user) | Q(pk__in=granted)
    for extra in hooks.run_visibility if through_other_apps else ():
        visible |= Q(pk__in=extra(user))
    return Run.objects.filter(visible).select_related("workflow", "version", "initiator").order_by("-created_at", "-pk")


def run_get_for_user(user: AnyUser, *, run_id: int) -> Run:
    """The run if `user` may view it; Http404 otherwise."""
    run = run_list_for_user(user).filter(pk=run_id).first()
    if run is None:
        raise Http404("No such run.")
    return run


def step_run_list(run: Run, *, keys: list[str] | None = None) -> QuerySet[StepRun]:
    """The steps of a run the caller has already been allowed to see, in graph order."""
    steps = StepRun.objects.filter(run=run).order_by("position")
    return steps.filter(step_key__in=keys) if keys is not None else steps


def run_can_operate(user: AnyUser, run: Run) -> bool:
    """Whether `user` may cancel, restart, replay or resolve incidents of `run`: whoever may run its workflow
    and builds or administers workflows. A reviewer on the workflow's team reads its runs but does not
    operate them: her part is the decisions in her queues."""
    from apps.accounts.roles import ADMIN, ANALYST, user_roles
    from apps.workflows.selectors import workflow_can_run

    if not user.is_authenticated:
        return False
    if not user.is_superuser and not user_roles(user) & {ANALYST, ADMIN}:
        return False
    return workflow_can_run(user, run.workflow)


def incident_get_for_user(user: AnyUser, *, incident_id: int) -> Incident:
    """An incident of a run `user` may view; Http404 otherwise."""
    incident = (
        Incident.objects.select_related("run", "run__workflow", "step_run")
        .filter(pk=incident_id, run__in=run_list_for_user(user).values("pk"))
        .first()
    )
    if incident is None:
        raise Http404("No such incident.")
    return incident


def incident_list_open(run: Run) -> QuerySet[Incident]:
    """The unresolved incidents of a run the caller may already see."""
    return Incident.objects.filter(run=run, resolved_at__isnull=True).select_related("step_run")


@dataclass(frozen=True)
class GraphFacts:
    """What the run page draws from the graph a run executes, whatever the run did: the diagram's layout,
    each step's type, name and configuration (how its output reads), and the steps whose outputs make the
    run's result (the graph's named output step, else its final steps, as the engine decides)."""

    diagram: Diagram
    steps: dict[str, StepFacts]
    result_keys: list[str]


GRAPH_FACTS_KEPT = 256
_graph_facts: OrderedDict[tuple[str, int, str], GraphFacts] = OrderedDict()
_graph_facts_lock = threading.Lock()


def run_graph_facts(run: Run) -> GraphFacts:
    """The facts of the graph `run` executes, laid out once per process: the run page and every push to it
    while the run moves redraw only the step states. A run executes its published version (immutable) or,
    for a test of a draft, its own snapshot (immutable too), so either is a safe cache key; the checksum
    and revision keep a version's entry from going stale even so."""
    version = run.version
    if run.graph_snapshot is not None:
        key = ("run", run.pk, "")
    else:
        key = ("version", version.pk, f"{version.checksum}:{version.revision}")
    with _graph_facts_lock:
        facts = _graph_facts.get(key)
        if facts is not None:
            _graph_facts.move_to_end(key)
            return facts
    facts = _graph_facts_compute(run.graph)
    with _graph_facts_lock:
        _graph_facts[key] = facts
        while len(_graph_facts) > GRAPH_FACTS_KEPT:
            _graph_facts.popitem(last=False)
    return facts


def _graph_facts_compute(graph: Any) -> GraphFacts:
    steps: dict[str, StepFacts] = {}
    for step in graph.get("steps", []) if isinstance(graph, dict) else []:
        if isinstance(step, dict) and isinstance(step.get("key"), str):
            config = step.get("config")
            steps[step["key"]] = StepFacts(
                step_type=str(step.get("type", "")),
                name=str(step.get("name") or ""),
                config=config if isinstance(config, dict) else {},
            )
    if isinstance(graph, dict) and graph.get("output"):
        result_keys = [str(graph["output"])]
    else:
        try:
            result_keys = Graph.parse(graph).sinks()
        except (KeyError, TypeError, ValueError, AttributeError):
            result_keys = []
    return GraphFacts(diagram=diagram_for_graph(graph), steps=steps, result_keys=result_keys)


def _shows_output(step: StepRun) -> bool:
    return step.state == StepRun.State.SUCCEEDED and step.output not in (None, {}, [], "")


def run_page_context(user: AnyUser, run: Run) -> dict[str, Any]:
    """What the run page and its pushed fragments show (one place, so a reload shows what was pushed).

    Besides the rows: the version's diagram with each step's state, and the inputs, step outputs and
    result as labelled fields (apps/runs/presentation.py). No query per step: the diagram and the steps'
    configurations come from the graph the run already carries (its version's, or a test run's snapshot)."""
    incidents = {incident.step_run_id: incident for incident in incident_list_open(run)}
    every_step = list(step_run_list(run))
    # An agent's tool calls are shown inside its step, in its turns, not as steps of their own.
    steps = [step for step in every_step if step.parent_id is None]
    facts = run_graph_facts(run)
    for step in steps:
        step.open_incident = incidents.get(step.pk)  # type: ignore[attr-defined]
        config = facts.steps[step.step_key].config if step.step_key in facts.steps else {}
        display: Value | None = (
            step_output_display(step.step_type, config, step.output) if _shows_output(step) else None
        )
        step.output_display = display  # type: ignore[attr-defined]
    notes: dict[int, dict[str, str]] = {}
    for hook in hooks.step_notes:
        notes.update(hook(user, run, every_step))
    for step in steps:
        step.note = notes.get(step.pk)  # type: ignore[attr-defined]
    _attach_agent_turns(run, steps, every_step, notes, incidents)
    _attach_sends_again(run, steps)
    result = []
    if run.status == Run.Status.SUCCEEDED:
        result = run_result_display(
            run.output,
            result_keys=facts.result_keys,
            steps=facts.steps,
            step_outputs={step.step_key: step.output for step in steps},
        )
    return {
        "run": run,
        "steps": steps,
        "model_calls": run_model_call_totals(run),
        "can_operate": run_can_operate(user, run),
        # Skipping a step with a supplied output is the workflow's editors' call (apps.runs.services.incident_skip).
        "can_supply_output": bool(incidents) and workflow_can_edit(user, run.workflow),
        "signature": run_signature(run, every_step, incidents.values()),
        "diagram": facts.diagram,
        "diagram_states": {step.step_key: step.state for step in steps},
        "inputs_display": run_inputs_display(run.version.input_schema, run.inputs),
        "result_sections": result,
    }


def _attach_sends_again(run: Run, steps: list[StepRun]) -> None:
    """Give each step `sends_again`: the names of the steps that already reached outside systems and that a
    restart from it would execute again (it and what follows it), so its restart form asks to confirm exactly
    when the restart service would (apps.runs.services.run_restart)."""
    names = {step.step_key: f"“{step.name or step.step_key}”" for step in steps}
    succeeded = [step.step_key for step in steps if step.state == StepRun.State.SUCCEEDED]
    # The effect ledger, as the restart service reads it: one query, for a run that can be restarted.
    sent = effects_sent(run, exclude=set()) if run.is_finished and not run.is_test else []
    try:
        graph = Graph.parse(run.version.graph) if sent else None
    except (KeyError, TypeError, ValueError):
        graph = None
    for step in steps:
        if not sent:
            step.sends_again = []  # type: ignore[attr-defined]
            continue
        try:
            reused = engine.reusable_before(graph, step.step_key, succeeded) if graph is not None else set()
        except KeyError:
            reused = set()
        step.sends_again = [names.get(key, key) for key in sent if key not in reused]  # type: ignore[attr-defined]


def _attach_agent_turns(
    run: Run,
    steps: list[StepRun],
    every_step: list[StepRun],
    notes: dict[int, dict[str, str]],
    incidents: dict[int, Incident],
) -> None:
    """Give each agent step (`llm.agent`) its turns as `step.agent`: its tool calls and model calls, read in
    one query for all of the run's agents."""
    agents = [step for step in steps if step.step_type == "llm.agent"]
    if not agents:
        return
    calls: dict[int, list[StepRun]] = {}
    for step in every_step:
        if step.parent_id is not None:
            calls.setdefault(step.parent_id, []).append(step)
    model_calls: dict[int | None, list[InferenceCall]] = {}
    for call in InferenceCall.objects.filter(run_id=run.pk, step_run_id__in=[a.pk for a in agents]).order_by(
        "attempt", "sequence", "pk"
    ):
        model_calls.setdefault(call.step_run_id, []).append(call)
    for agent in agents:
        tool_calls = sorted(calls.get(agent.pk, []), key=lambda call: _call_number(call.step_key))
        agent.agent = agent_view(  # type: ignore[attr-defined]
            agent, tool_calls, model_calls.get(agent.pk, []), notes, incidents
        )


def _call_number(step_key: str) -> int:
    number = step_key.rpartition("~")[2]
    return int(number) if number.isdigit() else 0


def run_signature(run: Run, steps: list[StepRun], incidents: Any) -> str:
    """A short fingerprint of everything the run page shows. The page hands it to its WebSocket, which
    sends a catch-up render only when the run changed since the page was rendered (a needless re-render
    would throw away what the person was typing into a form on the page)."""
    parts = [run.status, str(run.finished_at)]
    parts += [f"{s.step_key}:{s.state}:{s.fencing_token}:{len(s.streamed_text)}" for s in steps]
    parts += sorted(f"i{incident.pk}" for incident in incidents)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    """JSON value → {"a.b[0]": leaf}; an empty object or list is a leaf of its own."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{path}[{index}]"))
        return out
    return {path or "(value)": value}


def output_diff(before: Any, after: Any) -> list[dict[str, Any]]:
    """Field-level differences between two JSON values: one row per changed, added or removed leaf."""
    old, new = _flatten(before), _flatten(after)
    rows = []
    for path in sorted(old.keys() | new.keys()):
        if path not in new:
            rows.append({"path": path, "change": "removed", "before": old[path], "after": None})
        elif path not in old:
            rows.append({"path": path, "change": "added", "before": None, "after": new[path]})
        elif json.dumps(old[path], sort_keys=True) != json.dumps(new[path], sort_keys=True):
            rows.append({"path": path, "change": "changed", "before": old[path], "after": new[path]})
    return rows


def run_diff(original: Run, other: Run) -> dict[str, Any]:
    """Per step, the field-level diff of `other`'s outputs against `original`'s (steps `other` reused
    from `original` are equal by construction and left out); plus whether the run outputs are identical
    byte for byte in their canonical JSON form."""
    before = {s.step_key: s for s in StepRun.objects.filter(run=original)}
    steps = []
    for step in StepRun.objects.filter(run=other).order_by("position"):
        if step.reused_from_id:
            continue
        old = before.get(step.step_key)
        rows = output_diff(old.output if old else None, step.output)
        steps.append({"step_key": step.step_key, "name": step.name, "rows": rows, "state": step.state})
    return {
        "steps": steps,
        "identical": canonical_json(original.output) == canonical_json(other.output),
        "changed_fields": sum(len(step["rows"]) for step in steps),
    }


def canonical_json(value: Any) -> bytes:
    """The byte form outputs are compared in: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def inference_call_list_for_run(run: Run) -> QuerySet[InferenceCall]:
    """The model calls of a run the caller may already see (callers pass a run from run_get_for_user)."""
    return InferenceCall.objects.filter(run_id=run.pk).order_by("created_at", "id")


def run_model_call_totals(run: Run) -> dict[str, Any]:
    """Calls, tokens, model time and cost over every model call of the run, as they happen (failed
    attempts included: they were paid for). Run.total_* hold the same figures as of the last step's end."""
    totals = InferenceCall.objects.filter(run_id=run.pk).aggregate(
        calls=Count("id"),
        latency_ms=Sum("latency_ms"),
        cost=Sum("cost"),
        prompt_tokens=Sum("prompt_tokens"),
        generated_tokens=Sum("generated_tokens"),
    )
    return {
        "calls": totals["calls"] or 0,
        "prompt_tokens": totals["prompt_tokens"] or 0,
        "generated_tokens": totals["generated_tokens"] or 0,
        "seconds": (totals["latency_ms"] or 0) / 1000,
        "cost": totals["cost"] or 0,
    }
