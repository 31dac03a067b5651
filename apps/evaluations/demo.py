"""The evaluation part of the demo: the claims-triage workflow's suite, checking what its extraction step reads from
the four sample claims, so `make run` shows a publish gated by a suite. Registered in
`apps.workflows.demo.demo_extensions`, so `seed_demo` runs it; safe to run again (a workflow that already has a
suite keeps it as it is)."""

from __future__ import annotations

from typing import Any

from apps.accounts.models import Team, User
from apps.evaluations.models import EvaluationSuite
from apps.evaluations.services import evaluation_case_save, evaluation_suite_save
from apps.workflows.demo import SAMPLE_CLAIMS
from apps.workflows.models import Workflow

# What a careful extraction reads from each sample claim, by policy number: the fields a wrong prompt gets wrong
# (the amount, the injury, the claimant, the kind of incident).
DEMO_EXPECTED: dict[str, dict[str, Any]] = {
    "POL-10442": {"claimant": "Maria Lopez", "amount": 850.0, "injury_reported": False, "incident_type": "auto"},
    "POL-20917": {"claimant": "Tom Becker", "amount": 12400.0, "injury_reported": False, "incident_type": "property"},
    "POL-31808": {"claimant": "Aisha Khan", "amount": 23800.0, "injury_reported": True, "incident_type": "injury"},
    "POL-48230": {"claimant": "Daniel Park", "amount": 640.0, "injury_reported": False, "incident_type": "theft"},
}


def seed_evaluation_demo(analyst: User, team: Team) -> None:
    """The claims-triage suite: the extraction step, 90 % accuracy over every field and every amount right, every
    output valid, at most 30 s per case; one case per sample claim (nothing when the workflow is not there)."""
    workflow = Workflow.objects.filter(slug="claims-triage").first()
    if workflow is None or EvaluationSuite.objects.filter(workflow=workflow).exists():
        return
    suite = evaluation_suite_save(
        actor=analyst,
        workflow=workflow,
        step_key="extract",
        min_accuracy="90",
        field_min_accuracy={"amount": "100"},
        require_schema_valid=True,
        max_latency_p95_seconds="30",
    )
    for sample in SAMPLE_CLAIMS:
        policy = next(number for number in DEMO_EXPECTED if number in sample["claim_text"])
        evaluation_case_save(
            actor=analyst,
            suite=suite,
            name=sample["label"],
            inputs={"claim_text": sample["claim_text"]},
            expected=DEMO_EXPECTED[policy],
        )
