"""Approval items for the approvals tests: a published workflow whose `human.approval` step reviews an earlier
step's proposal with per-field confidences (no model needed: a `data.transform` builds `data` and `confidence`
with CEL map literals), runs parked at that step, more reviewers, and an API client per person."""

from __future__ import annotations

import time
from typing import Any

from rest_framework.test import APIClient

from apps.accounts.models import Team, User
from apps.accounts.services import user_create
from apps.approvals.models import ApprovalRequest
from apps.runs.models import Run
from apps.runs.services import run_start
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.engine import drive

PASSWORD = "correct-horse-battery-staple"
INPUT_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number"}, "name": {"type": "string"}},
    "required": ["amount", "name"],
}
# What a real llm.extract would put on the item; set with a queryset update where a test needs it.
CLAIM_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number", "minimum": 0}, "claimant": {"type": "string", "minLength": 1}},
    "required": ["amount", "claimant"],
}


def claim_graph(approval: dict[str, Any], confidence: dict[str, float]) -> dict[str, Any]:
    """extract (the proposal and its confidences) → review (the approval) → pay on approved, tell on rejected."""
    scores = ", ".join(f"'{name}': {score}" for name, score in confidence.items())
    return {
        "steps": [
            {
                "key": "extract",
                "type": "data.transform",
                "config": {
                    "fields": {
                        "data": "{'amount': input.amount, 'claimant': input.name}",
                        "confidence": "{" + scores + "}",
                    }
                },
            },
            {
                "key": "review",
                "type": "human.approval",
                "config": {"queue": "team:claims", "title": "Check the claim", "review_step": "extract", **approval},
            },
            {"key": "pay", "type": "data.transform", "config": {"fields": {"paid": "steps.review.data.amount"}}},
            {"key": "tell", "type": "data.transform", "config": {"fields": {"why": "steps.review.reason"}}},
        ],
        "edges": [
            {"from": "extract", "to": "review"},
            {"from": "review", "to": "pay", "when": "approved"},
            {"from": "review", "to": "tell", "when": "rejected"},
        ],
    }


def claim_workflow(
    owner: User,
    team: Team,
    *,
    name: str = "Claim check",
    confidence: dict[str, float] | None = None,
    **approval: Any,
) -> Workflow:
    """A published workflow of `owner`'s, shared with `team`, whose approval step takes `approval` as config."""
    workflow = workflow_create(actor=owner, name=name, team=team)
    graph = claim_graph(approval, confidence if confidence is not None else {"amount": 0.95, "claimant": 0.97})
    version = workflow_version_create(actor=owner, workflow=workflow, graph=graph, input_schema=INPUT_SCHEMA)
    workflow_version_publish(actor=owner, version=version)
    return workflow


def parked_item(starter: User, workflow: Workflow, *, amount: float = 120.0, name: str = "Bo Berg") -> ApprovalRequest:
    """Start a run as `starter`, drive it to its approval, and return the item waiting there."""
    run, _ = run_start(actor=starter, workflow=workflow, inputs={"amount": amount, "name": name})
    drive(run)
    return ApprovalRequest.objects.get(run=run)


def parked_items(runs: list[Run], *, timeout: float = 60.0) -> list[ApprovalRequest]:
    """For tests on committed data: a worker process started by an earlier test may take a step before `drive`
    sees it queued, so drive until every run waits at its approval; the items, in the runs' order."""
    deadline = time.monotonic() + timeout
    while ApprovalRequest.objects.filter(run__in=runs).count() < len(runs):
        assert time.monotonic() < deadline, "not every run reached its approval"
        for run in runs:
            drive(run)
        time.sleep(0.05)
    by_run = {item.run_id: item for item in ApprovalRequest.objects.filter(run__in=runs)}
    return [by_run[run.pk] for run in runs]


def member(team: Team, username: str, *roles: str, email: str = "") -> User:
    """Another person on `team` (a reviewer unless `roles` say otherwise)."""
    user = user_create(
        username=username,
        password=PASSWORD,
        roles=list(roles or ["reviewer"]),
        first_name=username.capitalize(),
        email=email,
    )
    user.groups.add(team.group)
    return user


def api(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def decide(user: User, item: ApprovalRequest, **body: Any) -> Any:
    """POST /api/approvals/<id>/decide/ as `user`."""
    return api(user).post(f"/api/approvals/{item.pk}/decide/", body, format="json")
