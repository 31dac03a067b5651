"""Flow steps: `flow.parallel` (fan out), `util.delay` (wait), `flow.subworkflow` and `flow.foreach`
(child runs of a pinned version of another workflow)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from django.utils import timezone
from pydantic import Field

from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType, Wait
from apps.steps.expressions import ExpressionError, cel_check, cel_evaluate
from apps.steps.registry import register

MAX_FOREACH_ITEMS = 10_000


class ParallelConfig(StepConfig):
    pass


@register
class Parallel(StepType):
    """A fan-out point: its outgoing edges start their branches at once. Fan-in is the `join` of the step
    the branches lead to ("all" waits for every branch, "any" for the first)."""

    slug = "flow.parallel"
    name = "Parallel branches"
    description = "Start several branches at once."
    Config = ParallelConfig
    category = "Flow"
    fans_out = True

    def execute(self, config: ParallelConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        return StepOutcome(output={})


class DelayConfig(StepConfig):
    seconds: float = Field(gt=0, le=90 * 86400, description="How long to wait. No worker is held meanwhile.")


@register
class Delay(StepType):
    """Parks the step on a timer row; the sweeper resumes it when the time comes."""

    slug = "util.delay"
    replay_reuses_output = True
    name = "Delay"
    description = "Wait for a while without holding a worker."
    Config = DelayConfig
    category = "Flow"

    def execute(self, config: DelayConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        return StepOutcome(output={}, wait=Wait("timer", fire_at=timezone.now() + timedelta(seconds=config.seconds)))


class SubworkflowConfig(StepConfig):
    workflow: str = Field(min_length=1, description="Slug of the workflow to run.")
    version: int | None = Field(None, ge=1, description="Pinned when the parent version is published.")


@register
class Subworkflow(StepType):
    """Starts a child run of a pinned version with the step's `params` as input; resumes with
    `{"output": <child output>, "run_id": <child run>}` when the child finishes (fails if it fails)."""

    slug = "flow.subworkflow"
    replay_reuses_output = True
    name = "Sub-workflow"
    description = "Run another workflow and use its output."
    Config = SubworkflowConfig
    category = "Flow"
    pins_workflow_version = True

    def simulate(self, config: SubworkflowConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        return {"output": None, "run_id": None, "simulated": True}

    def execute(self, config: SubworkflowConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        return StepOutcome(output={}, wait=Wait("subworkflow", details={"workflow": config.workflow}))


class ForeachConfig(StepConfig):
    items: str = Field(
        min_length=1,
        description="An expression giving a list, e.g. `input.skus`.",
        json_schema_extra={"x-widget": "cel"},
    )
    workflow: str = Field(min_length=1, description="Slug of the workflow run once per item.")
    version: int | None = Field(None, ge=1, description="Pinned when the parent version is published.")
    item_input: str = Field("item", description="Name of the child workflow's input field that gets the item.")
    concurrency: int = Field(4, ge=1, le=64)
    on_item_failure: Literal["fail", "continue"] = "fail"


@register
class Foreach(StepType):
    """Runs the pinned workflow once per item, at most `concurrency` at a time. Output
    `{"results": [...], "failed": n}` in item order; a failed item's entry is `{"error": ...}` when
    `on_item_failure` is "continue", else the first failure fails the step and cancels the rest."""

    slug = "flow.foreach"
    replay_reuses_output = True
    name = "For each"
    description = "Run a workflow for every item of a list, in parallel."
    Config = ForeachConfig
    category = "Flow"
    pins_workflow_version = True

    @staticmethod
    def check_config(config: ForeachConfig) -> list[str]:
        problems = []
        problem = cel_check(config.items)
        if problem:
            problems.append(f"items: the expression does not parse: {problem}")
        if not config.item_input.isidentifier():
            problems.append("item_input: must be a field name")
        return problems

    def simulate(self, config: ForeachConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        return {"results": [], "failed": 0, "simulated": True}

    def execute(self, config: ForeachConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        try:
            items = cel_evaluate(config.items, context.expression_variables())
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}", items: `{config.items}` failed: {error}') from None
        if not isinstance(items, list):
            raise StepError(
                f'Step "{context.step_key}", items: `{config.items}` gave {type(items).__name__}, not a list.'
            )
        if len(items) > MAX_FOREACH_ITEMS:
            raise StepError(f'Step "{context.step_key}": {len(items)} items is more than {MAX_FOREACH_ITEMS}.')
        return StepOutcome(output={}, wait=Wait("foreach", details={"items": len(items)}, payload={"items": items}))
