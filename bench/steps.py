"""A bench-only step type: `bench.cpu`, pure-Python CPU work of a fixed size (for B2).

Registered by importing this module (the bench workers and the bench process do); it is not part of the
product's step library.
"""

from __future__ import annotations

from pydantic import Field

from apps.steps.base import StepConfig, StepContext, StepOutcome, StepType
from apps.steps.registry import register


def fibonacci(n: int) -> int:
    """Naive recursion on purpose: the same interpreter-bound work on both sides of B2."""
    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)


class CpuConfig(StepConfig):
    n: int = Field(ge=1, le=40, description="fibonacci(n) is computed the slow way.")


@register
class Cpu(StepType):
    """Burns CPU for a fixed amount of work; the output is the fibonacci number."""

    slug = "bench.cpu"
    name = "CPU work (bench)"
    description = "Benchmark only."
    Config = CpuConfig

    def execute(self, config: CpuConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        return StepOutcome(output={"value": fibonacci(config.n)})
