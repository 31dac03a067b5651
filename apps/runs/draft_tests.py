"""Test runs of a workflow's draft: the whole draft, or one step of it, on the real engine.

A test run executes a copy of the draft's graph taken when it starts, with inputs from a saved sample (or
typed), and is marked as a test everywhere (its mode). Steps with pinned data use it instead of executing;
steps that reach the outside world, ask a person, wait or run other workflows are simulated unless the
analyst allowed that step to call out (apps/runs/executor.py `test_stands_in`). Model steps run for real:
testing them is the point.

"Test this step" runs one step alone: the steps it reads from are recorded as finished with their data
taken from pinned outputs, or from a recorded run of the workflow the analyst may see (its inputs too).
"""

from __future__ import annotations

import copy
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, Forbidden, ValidationFailed
from apps.runs.lifecycle import run_advance, run_create
from apps.runs.models import Run, StepResult, StepRun
from apps.steps.registry import step_config_errors, step_types
from apps.workflows.graph import Graph, graph_errors
from apps.workflows.input_schema import input_validate
from apps.workflows.models import PinnedOutput, Workflow
from apps.workflows.selectors import workflow_can_edit, workflow_draft_for
from apps.workflows.uses import uses_problems


def _pinned(workflow: Workflow) -> dict[str, Any]:
    return dict(PinnedOutput.objects.filter(workflow=workflow).values_list("step_key", "output"))


def _recorded(run: Run | None) -> dict[str, Any]:
    if run is None:
        return {}
    return dict(StepRun.objects.filter(run=run, state=StepRun.State.SUCCEEDED).values_list("step_key", "output"))


@transaction.atomic
def run_test_start(
    *,
    actor: User,
    workflow: Workflow,
    inputs: Any,
    step_key: str | None = None,
    allow_calls: list[str] | None = None,
    recorded_run: Run | None = None,
    use_pinned: bool = True,
) -> Run:
    """Start a test run of the draft (see the module docstring); refused with every reason it cannot run.

    `recorded_run` (a run of this workflow the caller may see) supplies the inputs when `inputs` is None and,
    for a step test, the outputs of the steps before it that have no pinned data. `use_pinned=False` ignores the
    workflow's pinned data (an evaluation run: pins are not part of the draft's content, so a pinned step would
    prove nothing about it).
    """
    if not workflow_can_edit(actor, workflow):
        raise Forbidden("Testing a draft needs the right to change the workflow.")
    draft = workflow_draft_for(workflow)
    if draft is None:
        raise ApplicationError("This workflow has no draft to test.")
    if recorded_run is not None and recorded_run.workflow_id != workflow.pk:
        raise ApplicationError("The recorded run belongs to another workflow.")
    if inputs is None:
        inputs = recorded_run.inputs if recorded_run is not None else {}
    cleaned, errors = input_validate(draft.input_schema, inputs)
    if errors:
        raise ValidationFailed("The test input does not fit the draft's run form.", fields=errors)
    graph = copy.deepcopy(draft.graph)
    keys = [step.get("key") for step in graph.get("steps", []) if isinstance(step, dict)]
    types = step_types()
    # Only outside-world calls can be allowed: a test never puts an item in a reviewer's queue.
    side_effecting = {
        str(s.get("key"))
        for s in graph.get("steps", [])
        if isinstance(s, dict) and getattr(types.get(str(s.get("type"))), "side_effects", False)
    }
    allowed = [key for key in (allow_calls or []) if key in side_effecting]
    # A test reads collections and may call allowed connections for real: the same rights as publishing, for
    # the tester and for the workflow, so a test is never a way around them.
    refused = uses_problems(actor, graph, workflow=workflow, only=step_key)
    if refused:
        raise ApplicationError("The draft cannot be tested: it names what it may not use.", extra={"problems": refused})
    pinned = _pinned(workflow) if use_pinned else {}
    settings: dict[str, Any] = {"allow_calls": allowed, "target": step_key}
    prior: dict[str, Any] = {}
    if step_key is None:
        problems = graph_errors(graph)
        if problems:
            raise ApplicationError("The draft cannot run yet: fix its problems first.", extra={"problems": problems})
        settings["pinned"] = {key: output for key, output in pinned.items() if key in keys}
        snapshot = graph
    else:
        step = next((s for s in graph.get("steps", []) if isinstance(s, dict) and s.get("key") == step_key), None)
        if step is None:
            raise ApplicationError(f'The draft has no step "{step_key}".')
        problems = [
            f'step "{step_key}": {p}' for p in step_config_errors(str(step.get("type")), step.get("config") or {})
        ]
        if problems:
            raise ApplicationError("This step's settings have problems: fix them first.", extra={"problems": problems})
        before = Graph.parse(graph).ancestors(step_key)
        recorded = _recorded(recorded_run)
        missing = []
        for key in sorted(before, key=keys.index):
            if key in pinned:
                prior[key] = pinned[key]
            elif key in recorded:
                prior[key] = recorded[key]
            else:
                missing.append(key)
        if missing:
            names = ", ".join(f'"{key}"' for key in missing)
            raise ApplicationError(
                f"This step reads the output of {names}: pin test data for it, or test with a recorded run in which "
                "it finished."
            )
        settings["pinned"] = {}
        # The step alone; the steps before it are recorded as finished below, with their data.
        snapshot = {"steps": [step], **{k: v for k, v in graph.items() if k in ("budget",)}}
    run = run_create(
        version=draft,
        inputs=cleaned,
        actor=actor,
        trigger="test",
        graph=snapshot,
        mode=Run.Mode.TEST,
        test_settings=settings,
    )
    now = timezone.now()
    StepRun.objects.filter(run=run, step_key=step_key).update(position=len(prior))
    for position, (key, output) in enumerate(prior.items()):
        definition = next(s for s in graph["steps"] if s.get("key") == key)
        step_run = StepRun.objects.create(
            run=run,
            step_key=key,
            step_type=definition["type"],
            name=definition.get("name") or key,
            position=position,
            state=StepRun.State.SUCCEEDED,
            output=output,
            branch=str(output.get("branch", "")) if isinstance(output, dict) else "",
            usage={
                "test": "pinned" if key in pinned else "recorded",
                **({"recorded_run": recorded_run.pk} if key not in pinned and recorded_run else {}),
            },
            started_at=now,
            finished_at=now,
        )
        StepResult.objects.create(
            run=run, step_key=key, step_run=step_run, outcome="succeeded", output=output, attempt=0, fencing_token=0
        )
    audit_record(
        actor=actor,
        verb="run.test_started",
        target=run,
        data={
            "workflow": workflow.slug,
            "draft_revision": draft.revision,
            "step": step_key,
            "allow_calls": allowed,
            "pinned": sorted(settings["pinned"] or prior),
            "recorded_run": recorded_run.pk if recorded_run else None,
        },
    )
    run_advance(run)
    return run
