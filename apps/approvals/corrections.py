"""Reviewers' decisions as labelled data: the per-workflow evaluation set (JSON Lines) and the calibration of
per-field confidence scores against what reviewers corrected.

A field counts as correct on an approved item when its final data keeps the model's value; a rejection says
nothing about single fields and is left out of calibration (it stays in the export).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import QuerySet

from apps.approvals.models import ApprovalDecision, ApprovalRequest
from apps.workflows.models import Workflow
from apps.workflows.selectors import workflow_get_for_user

# Calibration bins over the score, narrow where reviewers need to tell 0.9 from 0.95.
BIN_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0000001)


def workflow_for_export(user: AbstractUser | AnonymousUser, *, slug: str) -> Workflow:
    """The workflow whose corrections `user` may export: one she may view (404 otherwise)."""
    return workflow_get_for_user(user, slug=slug)


def _decisions(workflow: Workflow) -> QuerySet[ApprovalDecision]:
    return (
        ApprovalDecision.objects.filter(request__run__workflow=workflow)
        .select_related("request", "request__run", "request__run__version", "request__queue", "actor")
        .order_by("created_at", "pk")
    )


def correction_record(decision: ApprovalDecision) -> dict[str, Any]:
    """One line of the evaluation set."""
    request = decision.request
    return {
        "workflow": request.run.workflow.slug,
        "version": request.run.version.number,
        "run": request.run_id,
        "item": request.pk,
        "step": request.step_run.step_key if request.step_run_id else "",
        "reviewed_step": request.review_step_key,
        "queue": request.queue.key,
        "decision": decision.decision,
        "stage": decision.stage,
        "reason_code": decision.reason_code,
        "reason": decision.reason,
        "reviewer": decision.actor.get_username(),
        "decided_at": decision.created_at,
        "time_spent_seconds": decision.time_spent_seconds,
        "input": request.run.inputs,
        "model_output": request.proposal,
        "corrected_output": decision.data_after,
        "changes": decision.changes,
        "confidence": decision.confidence,
        "confidence_source": request.confidence_source,
        "confirmed_fields": decision.confirmed_fields,
        "audit_sample": request.audit_sample,
        "bulk": decision.bulk,
    }


def corrections_jsonl(workflow: Workflow) -> Iterator[str]:
    """The workflow's evaluation set, one JSON object per line, oldest decision first; streamed."""
    for decision in (
        _decisions(workflow).select_related("request__run__workflow", "request__step_run").iterator(chunk_size=500)
    ):
        yield json.dumps(correction_record(decision), cls=DjangoJSONEncoder, sort_keys=True) + "\n"


@dataclass(frozen=True)
class CalibrationBin:
    """How often a field scored in [low, high) was left unchanged by the reviewer who approved it."""

    field: str
    low: float
    high: float
    reviews: int
    correct: int
    mean_score: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.reviews if self.reviews else 0.0

    @property
    def sentence(self) -> str:
        """E.g. "amount: 0.92 means 97 % correct over 340 reviews"."""
        return (
            f"{self.field}: {self.mean_score:.2f} means {round(self.accuracy * 100)} % correct "
            f"over {self.reviews} review{'s' if self.reviews != 1 else ''}"
        )


def calibration(decisions: QuerySet[ApprovalDecision]) -> list[CalibrationBin]:
    """Per field and score bin, the share of approved items whose final data kept the field as the model
    proposed it: one sample per item (not per person: under a multi-person policy a later approver sees the
    earlier one's correction), and only items a person looked at on their own (bulk approvals are left out)."""
    tallies: dict[tuple[str, int], list[float]] = {}
    correct: dict[tuple[str, int], int] = {}
    items = (
        ApprovalRequest.objects.filter(pk__in=decisions.values("request_id"), state=ApprovalRequest.State.APPROVED)
        .exclude(decisions__bulk=True)
        .values_list("confidence", "proposal", "corrected")
    )
    for confidence, proposal, corrected in items:
        changed = {
            name
            for name in set(proposal or {}) | set(corrected or {})
            if json.dumps((proposal or {}).get(name), sort_keys=True)
            != json.dumps((corrected or {}).get(name), sort_keys=True)
        }
        for name, score in (confidence or {}).items():
            if not isinstance(score, int | float) or isinstance(score, bool):
                continue
            index = next(i for i in range(len(BIN_EDGES) - 1) if score < BIN_EDGES[i + 1])
            tallies.setdefault((name, index), []).append(float(score))
            correct[(name, index)] = correct.get((name, index), 0) + (name not in changed)
    return [
        CalibrationBin(
            field=name,
            low=BIN_EDGES[index],
            high=min(BIN_EDGES[index + 1], 1.0),
            reviews=len(scores),
            correct=correct[(name, index)],
            mean_score=sum(scores) / len(scores),
        )
        for (name, index), scores in sorted(tallies.items())
    ]


def workflow_calibration(workflow: Workflow) -> list[CalibrationBin]:
    """Calibration over every decision on the workflow's items (shown to the analyst)."""
    return calibration(ApprovalDecision.objects.filter(request__run__workflow=workflow))
