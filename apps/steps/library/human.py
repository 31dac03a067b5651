"""`human.approval`: park the run until a person decides, without holding a worker."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from django.utils import timezone
from pydantic import Field

from apps.steps.base import QUEUE_CHECKS, StepConfig, StepContext, StepError, StepOutcome, StepType, Wait
from apps.steps.expressions import ExpressionError, cel_check, cel_evaluate, template_check, template_render
from apps.steps.registry import register


class ApprovalConfig(StepConfig):
    queue: str = Field(
        min_length=1,
        max_length=150,
        description="The approval queue whose reviewers decide.",
        json_schema_extra={"x-widget": "approval-queue"},
    )
    title: str = Field(
        "Approval needed",
        max_length=200,
        description="What reviewers see in their inbox; may use data, e.g. Claim {{ input.policy_number }}.",
        json_schema_extra={"x-widget": "template", "x-rows": 1},
    )
    review_step: str = Field(
        "",
        max_length=64,
        title="Data to review",
        description="The key of an earlier extraction step: reviewers see its data beside the source text, with "
        "each field's confidence and evidence, and may correct it. Empty: they review this step's inputs.",
    )
    priority: Literal["low", "normal", "high", "urgent"] = Field("normal", description="Urgent items come first.")
    due_in_seconds: float | None = Field(None, gt=0, le=365 * 86400, description="Expire the request after this.")
    separation_of_duties: bool = Field(True, description="The person who started the run may not decide.")
    straight_through_when: str = Field(
        "",
        max_length=2000,
        title="Skip review when",
        description="An expression: when it holds, the step approves at once without asking anyone (e.g. "
        "steps.extract.confidence.amount >= 0.95), except for the queue's audit sample. Empty: always ask.",
        json_schema_extra={"x-widget": "cel", "x-advanced": True},
    )
    policy: Literal["", "any", "all", "k_of_n", "sequential"] = Field(
        "",
        description="Who must approve: empty for the queue's default; any one person, everyone in the queue, a "
        "number of different people, or one queue after another.",
        json_schema_extra={"x-advanced": True},
    )
    required_approvals: int | None = Field(
        None, ge=1, le=20, description="For a number of people: how many.", json_schema_extra={"x-advanced": True}
    )
    then_queues: list[str] = Field(
        default_factory=list,
        max_length=5,
        description="For one queue after another: the queues that approve after the first, in order.",
        json_schema_extra={"x-advanced": True},
    )


# Filled by the approvals app: the share of straight-through items a queue routes to review anyway.
AUDIT_SAMPLE_RATES: list[Callable[[str], float]] = []


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

    @staticmethod
    def check_config(config: ApprovalConfig) -> list[str]:
        problems = [
            problem for key in [config.queue, *config.then_queues] for check in QUEUE_CHECKS if (problem := check(key))
        ]
        title_problem = template_check(config.title)
        if title_problem:
            problems.append(f"title: the template does not parse: {title_problem}")
        if config.straight_through_when:
            expression_problem = cel_check(config.straight_through_when)
            if expression_problem:
                problems.append(f"straight_through_when: {expression_problem}")
        if config.then_queues and config.policy != "sequential":
            problems.append("later queues are used only by the one-queue-after-another policy")
        return problems

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
        variables = context.expression_variables()
        try:
            title = template_render(config.title, variables).strip()[:200] if "{" in config.title else config.title
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": the title could not be rendered: {error}') from None
        audit_sample = False
        if config.straight_through_when:
            try:
                straight = cel_evaluate(config.straight_through_when, variables)
            except ExpressionError as error:
                raise StepError(f'Step "{context.step_key}": "Skip review when" failed: {error}') from None
            if straight is True:
                # The queue's audit sample routes a share of these to a person anyway, so the accuracy of
                # what goes straight through is measured rather than assumed.
                rate = next((hook(config.queue) for hook in AUDIT_SAMPLE_RATES), 0.0)
                if not (rate > 0 and random.random() < rate):  # noqa: S311 - a sample, not a secret
                    # The same keys a person's decision has, so later steps read `data` either way.
                    reviewed = context.steps.get(config.review_step, {}) if config.review_step else {}
                    data = reviewed.get("data") if isinstance(reviewed.get("data"), dict) else context.params
                    return StepOutcome(
                        output={
                            "decision": "approved",
                            "branch": "approved",
                            "reason": "Straight through: the skip-review condition held.",
                            "reason_code": "",
                            "edits": {},
                            "changed_fields": [],
                            "data": data,
                            "decided_by": "",
                            "approvers": [],
                            "audit_sample": False,
                            "straight_through": True,
                        }
                    )
                audit_sample = True
        due = timezone.now() + timedelta(seconds=config.due_in_seconds) if config.due_in_seconds else None
        return StepOutcome(
            output={},
            wait=Wait(
                "approval",
                fire_at=due,
                details={"queue": config.queue, "title": title, "audit_sample": audit_sample},
                payload={"params": context.params},
            ),
        )
