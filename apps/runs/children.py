"""Child runs: `flow.subworkflow` (one child) and `flow.foreach` (one child per item, a few at a time).

Both start and finish here. Starting is part of the parent's parking transaction (the executor calls
WAIT_STARTERS): it creates new runs, which locks no other run. Finishing crosses runs, so it follows
rule 3 of the lock-order rule (apps/runs/lifecycle.py): the child's last transaction writes an Outbox row,
and `child_run_finished` handles it in a transaction of its own that locks only the parent.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from apps.audit.services import audit_record
from apps.runs.lifecycle import run_advance, run_create, run_lock, step_run_resume
from apps.runs.models import Run, StepRun
from apps.runs.outbox import CANCEL_RUN_TASK, outbox_task
from apps.runs.plans import step_plan
from apps.steps.base import Wait
from apps.steps.library.flow import ForeachConfig, SubworkflowConfig
from apps.workflows.input_schema import input_validate
from apps.workflows.models import WorkflowVersion


def _pinned_version(config: SubworkflowConfig | ForeachConfig) -> WorkflowVersion | None:
    versions = WorkflowVersion.objects.filter(workflow__slug=config.workflow, state=WorkflowVersion.State.PUBLISHED)
    if config.version is not None:
        versions = versions.filter(number=config.version)
    return versions.select_related("workflow").order_by("-number").first()


def _start_child(parent: StepRun, version: WorkflowVersion, inputs: Any, item_index: int | None = None) -> Run | str:
    """A child run of `version`, or the reason its inputs were refused."""
    cleaned, errors = input_validate(version.input_schema, inputs)
    if errors:
        details = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
        return f'the input for "{version.workflow.name}" is not valid ({details})'
    child = run_create(
        version=version,
        inputs=cleaned,
        actor=parent.run.initiator,
        trigger="subworkflow",
        parent_step_run=parent,
        item_index=item_index,
    )
    audit_record(
        actor=None,
        verb="run.started",
        target=child,
        data={"workflow": version.workflow.slug, "version": version.number, "parent_run": parent.run_id},
    )
    run_advance(child)
    return child


def _version_or_fail(step_run: StepRun, config: SubworkflowConfig | ForeachConfig) -> WorkflowVersion | None:
    """The pinned version to run, or None after failing the step because there is none."""
    version = _pinned_version(config)
    if version is None:
        step_run_resume(step_run=step_run, error=f'There is no published version of "{config.workflow}" to run.')
    return version


def subworkflow_start(step_run: StepRun, wait: Wait) -> None:
    # An agent's workflow tool is a sub-workflow step too, defined by its call rather than the graph.
    config = SubworkflowConfig.model_validate(step_plan(step_run.run, step_run).definition["config"])
    version = _version_or_fail(step_run, config)
    if version is None:
        return
    step_run.refresh_from_db(fields=["input"])  # the step's mapped params were stored during execution
    child = _start_child(step_run, version, step_run.input or {})
    if isinstance(child, str):
        step_run_resume(step_run=step_run, error=f"The sub-workflow could not start: {child}.")


def foreach_start(step_run: StepRun, wait: Wait) -> None:
    config = ForeachConfig.model_validate(step_run.run.step_definition(step_run.step_key)["config"])
    version = _version_or_fail(step_run, config)
    if version is None:
        return
    items = list(wait.payload.get("items", []))
    step_run.refresh_from_db(fields=["input"])
    # The items live with the step, so a later wake-up (another item finishing) can start the next ones.
    StepRun.objects.filter(pk=step_run.pk).update(input={**(step_run.input or {}), "foreach_items": items})
    if not items:
        step_run_resume(step_run=step_run, output={"results": [], "failed": 0})
        return
    step_run.refresh_from_db()
    _foreach_fill(step_run, config, version, items)


def _foreach_fill(step_run: StepRun, config: ForeachConfig, version: WorkflowVersion, items: list[Any]) -> None:
    """Start children until `concurrency` run at once or every item has one."""
    children = Run.objects.filter(parent_step_run=step_run)
    started = children.count()
    active = children.exclude(status__in=Run.FINISHED).count()
    while active < config.concurrency and started < len(items):
        child = _start_child(step_run, version, {config.item_input: items[started]}, item_index=started)
        if isinstance(child, str):
            step_run_resume(step_run=step_run, error=f"Item {started} could not start: {child}.")
            return
        started += 1
        active += 1


@transaction.atomic
def child_run_finished(*, child_run_id: int) -> None:
    """A child run finished: resume its parent's step, or, for a foreach, fail fast, start the next item or
    resume with every result in item order. Locks only the parent run; safe to repeat (a parent step that
    no longer waits, or a foreach that already moved past this child, makes it a no-op)."""
    child = Run.objects.only("pk", "status", "output", "error", "parent_step_run_id").filter(pk=child_run_id).first()
    # Gone: the retention purge removed it with its parent, and this is a late repeat of the message.
    if child is None or child.parent_step_run_id is None or child.status not in Run.FINISHED:
        return
    parent_run_id = StepRun.objects.values_list("run_id", flat=True).get(pk=child.parent_step_run_id)
    run_lock(parent_run_id)
    parent_step = StepRun.objects.select_related("run__version").get(pk=child.parent_step_run_id)
    if parent_step.state != StepRun.State.WAITING:
        return
    if parent_step.step_type == "flow.foreach":
        _foreach_child_finished(parent_step)
    elif child.status == Run.Status.SUCCEEDED:
        step_run_resume(step_run=parent_step, output={"output": child.output, "run_id": child.pk})
    else:
        step_run_resume(step_run=parent_step, error=f"The sub-workflow run #{child.pk} {child.status}: {child.error}")


def _foreach_child_finished(step_run: StepRun) -> None:
    config = ForeachConfig.model_validate(step_run.run.step_definition(step_run.step_key)["config"])
    items = (step_run.input or {}).get("foreach_items", [])
    children = list(Run.objects.filter(parent_step_run=step_run).order_by("item_index"))
    failed = [child for child in children if child.status in (Run.Status.FAILED, Run.Status.CANCELLED)]
    if failed and config.on_item_failure == "fail":
        # The siblings are other runs (rule 3): each is cancelled in a transaction of its own.
        for child in children:
            if not child.is_finished:
                outbox_task(CANCEL_RUN_TASK, [child.pk, f"item {failed[0].item_index} failed"])
        step_run_resume(step_run=step_run, error=f"Item {failed[0].item_index} failed: {failed[0].error}")
        return
    version = _pinned_version(config)
    if version is not None and len(children) < len(items):
        _foreach_fill(step_run, config, version, items)
        return
    if all(child.is_finished for child in children) and len(children) == len(items):
        results = [
            child.output if child.status == Run.Status.SUCCEEDED else {"error": child.error} for child in children
        ]
        step_run_resume(step_run=step_run, output={"results": results, "failed": len(failed)})


# What the executor calls, inside the parking transaction, when a step waits for child runs.
WAIT_STARTERS = {"subworkflow": subworkflow_start, "foreach": foreach_start}
