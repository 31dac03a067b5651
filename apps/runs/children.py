"""Child runs: `flow.subworkflow` (one child) and `flow.foreach` (one child per item, a few at a time).

Registered as the engine's wait hooks: when such a step parks, its children are started in the same
transaction; each child's finish (apps.runs.services._run_finish) comes back here or resumes the parent.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from apps.audit.services import audit_record
from apps.runs import hooks
from apps.runs.models import Run, StepRun
from apps.runs.services import _advance, _lock_run, _run_create, run_cancel, step_run_resume
from apps.steps.base import Wait
from apps.steps.library.flow import ForeachConfig, SubworkflowConfig
from apps.workflows.input_schema import input_validate
from apps.workflows.models import WorkflowVersion


def _pinned_version(config: SubworkflowConfig | ForeachConfig) -> WorkflowVersion | None:
    versions = WorkflowVersion.objects.filter(workflow__slug=config.workflow, state=WorkflowVersion.State.PUBLISHED)
    if config.version is not None:
        versions = versions.filter(number=config.version)
    return versions.select_related("workflow").order_by("-number").first()


def _definition(step_run: StepRun) -> dict[str, Any]:
    return next(step for step in step_run.run.steps if step["key"] == step_run.step_key)


def _start_child(parent: StepRun, version: WorkflowVersion, inputs: Any, item_index: int | None = None) -> Run | str:
    """A child run of `version`, or the reason its inputs were refused."""
    cleaned, errors = input_validate(version.input_schema, inputs)
    if errors:
        details = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
        return f'the input for "{version.workflow.name}" is not valid ({details})'
    child = _run_create(
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
    _advance(child)
    return child


def subworkflow_start(step_run: StepRun, wait: Wait) -> None:
    config = SubworkflowConfig.model_validate(_definition(step_run)["config"])
    version = _pinned_version(config)
    if version is None:
        step_run_resume(step_run=step_run, error=f'There is no published version of "{config.workflow}" to run.')
        return
    step_run.refresh_from_db(fields=["input"])  # the step's mapped params were stored during execution
    child = _start_child(step_run, version, step_run.input or {})
    if isinstance(child, str):
        step_run_resume(step_run=step_run, error=f"The sub-workflow could not start: {child}.")


def foreach_start(step_run: StepRun, wait: Wait) -> None:
    config = ForeachConfig.model_validate(_definition(step_run)["config"])
    version = _pinned_version(config)
    if version is None:
        step_run_resume(step_run=step_run, error=f'There is no published version of "{config.workflow}" to run.')
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
def foreach_child_finished(step_run: StepRun) -> None:
    """One item finished: fail fast, start the next item, or resume with every result in item order."""
    _lock_run(step_run.run_id)
    step_run = StepRun.objects.select_related("run__version").get(pk=step_run.pk)
    if step_run.state != StepRun.State.WAITING:
        return
    config = ForeachConfig.model_validate(_definition(step_run)["config"])
    items = (step_run.input or {}).get("foreach_items", [])
    children = list(Run.objects.filter(parent_step_run=step_run).order_by("item_index"))
    failed = [child for child in children if child.status in (Run.Status.FAILED, Run.Status.CANCELLED)]
    if failed and config.on_item_failure == "fail":
        for child in children:
            if not child.is_finished:
                run_cancel(run=child, actor=None, reason=f"item {failed[0].item_index} failed")
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


hooks.on_wait["subworkflow"] = subworkflow_start
hooks.on_wait["foreach"] = foreach_start
