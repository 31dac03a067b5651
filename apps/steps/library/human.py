"""`human.approval`: park the run until a person decides, without holding a worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from pydantic import Field

from apps.steps.base import StepConfig, StepContext, StepOutcome, StepType, Wait
from apps.steps.registry import register


class ApprovalConfig(StepConfig):
    queue: str = Field(min_length=1, max_length=150, description="The group whose members decide (e.g. a team).")
    title: str = Field("Approval needed", max_length=200)
    due_in_seconds: float | None = Field(None, gt=0, le=365 * 86400, description="Expire the request after this.")
    separation_of_duties: bool = Field(True, description="The person who started the run may not decide.")


@register
class HumanApproval(StepType):
    """Creates an approval request with the step's `params` as its payload and waits. It resumes with
    `{"decision", "branch", "reason", "edits", "decided_by"}` (branch "approved", "rejected" or
    "expired"), so edges labelled with those branches route the outcome. A model never decides."""

    slug = "human.approval"
    replay_reuses_output = True
    name = "Human approval"
    description = "Wait for a person to approve or reject."
    Config = ApprovalConfig
    category = "People"

    @classmethod
    def branch_labels(cls, config: Any) -> tuple[str, ...]:
        due = isinstance(config, dict) and bool(config.get("due_in_seconds"))
        return ("approved", "rejected", "expired") if due else ("approved", "rejected")

    def simulate(self, config: ApprovalConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        # A test never puts an item in a reviewer's queue; pin this step's output to test a rejection.
        return {
            "decision": "approved",
            "branch": "approved",
            "reason": "Simulated approval in a test run",
            "edits": {},
            "decided_by": "",
            "simulated": True,
        }

    def execute(self, config: ApprovalConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        due = timezone.now() + timedelta(seconds=config.due_in_seconds) if config.due_in_seconds else None
        return StepOutcome(
            output={},
            wait=Wait("approval", fire_at=due, details={"queue": config.queue}, payload={"params": context.params}),
        )
