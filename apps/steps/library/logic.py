"""`logic.if` and `logic.switch`: choose a branch with CEL conditions over the run's data.

The chosen branch goes in the output's `branch`; the graph's edges labelled with it are followed and the
others are skipped (see apps/workflows/graph.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType
from apps.steps.expressions import ExpressionError, cel_check, cel_evaluate
from apps.steps.registry import register


def _condition(step_key: str, label: str, expression: str, context: StepContext) -> bool:
    try:
        value = cel_evaluate(expression, context.expression_variables())
    except ExpressionError as error:
        raise StepError(f'Step "{step_key}", {label}: the expression `{expression}` failed: {error}') from None
    if not isinstance(value, bool):
        raise StepError(f'Step "{step_key}", {label}: the expression `{expression}` gave {value!r}, not true or false.')
    return value


class IfConfig(StepConfig):
    condition: str = Field(
        min_length=1,
        description="An expression, e.g. `steps.extract.data.amount > 1000.0`.",
        json_schema_extra={"x-widget": "cel"},
    )


@register
class If(StepType):
    """Evaluates `condition`; output `{"branch": "true" | "false"}`."""

    slug = "logic.if"
    name = "If"
    description = "Follow the true or the false branch."
    Config = IfConfig
    category = "Logic"
    branches_always = True

    @classmethod
    def branch_labels(cls, config: Any) -> tuple[str, ...]:
        return ("true", "false")

    @staticmethod
    def check_config(config: IfConfig) -> list[str]:
        problem = cel_check(config.condition)
        return [f"condition: the expression does not parse: {problem}"] if problem else []

    def execute(self, config: IfConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        value = _condition(context.step_key, "condition", config.condition, context)
        return StepOutcome(output={"branch": "true" if value else "false"})


class SwitchCase(StepConfig):
    label: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The branch's name: letters, digits, - and _.",
    )
    condition: str = Field(
        min_length=1, description="When this is true, take this branch.", json_schema_extra={"x-widget": "cel"}
    )


class SwitchConfig(StepConfig):
    cases: list[SwitchCase] = Field(min_length=1)
    default: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


@register
class Switch(StepType):
    """Takes the first case whose condition is true, else `default`; output `{"branch": <label>}`."""

    slug = "logic.switch"
    name = "Switch"
    description = "Follow the branch of the first matching case."
    Config = SwitchConfig
    category = "Logic"
    branches_always = True

    @classmethod
    def branch_labels(cls, config: Any) -> tuple[str, ...]:
        """The cases' labels then the default, as far as the config can be read (it may be half-written)."""
        if not isinstance(config, dict):
            return ("default",)
        labels = [case.get("label") for case in config.get("cases") or [] if isinstance(case, dict)]
        default = config.get("default") or "default"
        return tuple(dict.fromkeys([*(label for label in labels if isinstance(label, str) and label), default]))

    @staticmethod
    def check_config(config: SwitchConfig) -> list[str]:
        problems = []
        labels = [case.label for case in config.cases]
        if len(set(labels)) != len(labels):
            problems.append("cases: two cases share a label")
        for index, case in enumerate(config.cases):
            problem = cel_check(case.condition)
            if problem:
                problems.append(f"cases.{index}.condition: the expression does not parse: {problem}")
        return problems

    def execute(self, config: SwitchConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        for case in config.cases:
            if _condition(context.step_key, f'case "{case.label}"', case.condition, context):
                return StepOutcome(output={"branch": case.label})
        return StepOutcome(output={"branch": config.default})
