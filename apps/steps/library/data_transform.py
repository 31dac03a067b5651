"""`data.transform`: compute named values from the run's data with CEL expressions."""

from __future__ import annotations

from pydantic import Field

from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType
from apps.steps.expressions import ExpressionError, cel_check, cel_evaluate
from apps.steps.registry import register


class DataTransformConfig(StepConfig):
    fields: dict[str, str] = Field(
        min_length=1,
        json_schema_extra={"x-widget": "cel"},
        description="Each value to compute: its name, and an expression over the run input and earlier steps, "
        'e.g. `steps.extract.data.amount < 1000.0 ? "auto_approve" : "adjuster_queue"`.',
    )


@register
class DataTransform(StepType):
    """Evaluates each field's CEL expression in order; the output maps field names to their values."""

    slug = "data.transform"
    name = "Transform data"
    description = "Compute values from the run input and earlier steps with expressions."
    Config = DataTransformConfig
    category = "Data"

    @staticmethod
    def check_config(config: DataTransformConfig) -> list[str]:
        problems = []
        for name, expression in config.fields.items():
            if not name.isidentifier():
                problems.append(f'fields: "{name}" is not a valid field name (letters, digits and _)')
            problem = cel_check(expression)
            if problem:
                problems.append(f"fields.{name}: the expression does not parse: {problem}")
        return problems

    def execute(self, config: DataTransformConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        variables = context.expression_variables()
        output = {}
        for name, expression in config.fields.items():
            try:
                output[name] = cel_evaluate(expression, variables)
            except ExpressionError as error:
                raise StepError(
                    f'Step "{context.step_key}", field "{name}": the expression `{expression}` failed: {error}'
                ) from None
        return StepOutcome(output=output)
