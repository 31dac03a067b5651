"""The reviewer's part of the demo: the claims team's queue with a service level, an escalation chain and
reason codes, and a "Claim review" workflow whose every run waits in that queue with evidence and confidence.
Registered in `apps.workflows.demo.demo_extensions`, so `seed_demo` runs it; safe to run again."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from apps.accounts.models import Team, User
from apps.approvals.models import ApprovalQueue
from apps.approvals.services import approval_queue_update, team_queue_create
from apps.runs.services import run_start
from apps.workflows.demo import CLAIM_FIELDS_SCHEMA, CLAIMS_TRIAGE_INPUT_SCHEMA, SAMPLE_CLAIMS
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

# The reviewer's demo: the same claims, extracted with evidence and per-field confidence, and every one sent
# to the claims team's queue, where an adjuster checks the fields against the claim before it is booked.
CLAIM_REVIEW_GRAPH: dict[str, Any] = {
    "steps": [
        {
            "key": "extract",
            "type": "llm.extract",
            "name": "Extract claim fields",
            "config": {
                "system": "You extract structured fields from insurance claims. Reply with JSON only.",
                "prompt": (
                    "Extract the claimant, policy number, incident type, claimed amount, whether an injury "
                    "is reported, and a one-sentence summary from this insurance claim.\n\n"
                    "Claim:\n{{ input.claim_text }}"
                ),
                "source": "{{ input.claim_text }}",
                "json_schema": CLAIM_FIELDS_SCHEMA,
            },
        },
        {
            "key": "review",
            "type": "human.approval",
            "name": "Adjuster review",
            "config": {
                "queue": "team:claims",
                "title": "Claim {{ steps.extract.data.policy_number }}: {{ steps.extract.data.claimant }}",
                "review_step": "extract",
                "priority": "normal",
            },
        },
        {
            "key": "book",
            "type": "data.transform",
            "name": "Book the claim",
            "config": {
                "fields": {
                    "claimant": "steps.review.data.claimant",
                    "policy_number": "steps.review.data.policy_number",
                    "amount": "steps.review.data.amount",
                    "booked": "true",
                }
            },
        },
        {
            "key": "refuse",
            "type": "data.transform",
            "name": "Record the refusal",
            "config": {"fields": {"refused": "true", "why": "steps.review.reason"}},
        },
    ],
    "edges": [
        {"from": "extract", "to": "review"},
        {"from": "review", "to": "book", "when": "approved"},
        {"from": "review", "to": "refuse", "when": "rejected"},
    ],
}

# What the demo queue asks of reviewers: a service level on a working week, an escalation chain, reasons.
CLAIMS_QUEUE_SETTINGS: dict[str, Any] = {
    "calendar": {
        "time_zone": "Europe/Berlin",
        "working_days": [0, 1, 2, 3, 4],
        "day_start": "09:00",
        "day_end": "17:00",
        "holidays": [],
    },
    "sla_hours": 4,
    "escalation": [
        {"at": 0.5, "action": "remind"},
        {"at": 0.8, "action": "notify_lead"},
        {"at": 1.0, "action": "reassign"},
    ],
    "confirm_below": 0.9,
    "bulk_threshold": 0.97,
    "reason_codes": [
        {"code": "misread", "label": "The model misread the claim"},
        {"code": "not_in_source", "label": "The value is not in the claim"},
        {"code": "wrong_category", "label": "Wrong incident type"},
        {"code": "policy_exception", "label": "Policy exception"},
        {"code": "other", "label": "Other (say why)"},
    ],
}


def seed_review_demo(analyst: User, team: Team) -> None:
    """The queue's settings, the workflow, and one run per sample claim (they wait in Rita's inbox once the
    workers have extracted them). Does nothing when the workflow exists."""
    if Workflow.objects.filter(slug="claim-review").exists():
        return
    queue = ApprovalQueue.objects.filter(key=team.group.name).first() or team_queue_create(team)
    lead = User.objects.filter(username="adam").first()
    if lead is not None:
        approval_queue_update(actor=lead, queue=queue, lead=lead, **CLAIMS_QUEUE_SETTINGS)
    workflow = workflow_create(
        actor=analyst,
        name="Claim review",
        description=(
            "Extracts each claim's fields with the evidence for each, and sends every claim to the claims "
            "team's queue, where an adjuster checks and corrects the fields before the claim is booked."
        ),
        team=team,
        baseline_minutes_per_case=Decimal("9"),
    )
    version = workflow_version_create(
        actor=analyst, workflow=workflow, graph=CLAIM_REVIEW_GRAPH, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
    )
    workflow_version_publish(actor=analyst, version=version)
    for sample in SAMPLE_CLAIMS:
        run_start(actor=analyst, workflow=workflow, inputs={"claim_text": sample["claim_text"]})
