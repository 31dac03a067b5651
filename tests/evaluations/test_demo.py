"""The demo's evaluation suite: `seed_demo` gives the claims-triage workflow a suite of the four sample claims, once,
and its expectations are right: the shipped workflow passes it against the test stack's development inference
server (which answers as the demo does)."""

from __future__ import annotations

import pytest

from apps.evaluations.demo import seed_evaluation_demo
from apps.evaluations.models import EvaluationSuite
from apps.evaluations.services import evaluation_report_runs_start, evaluation_report_score, evaluation_report_start
from apps.runs.models import Run
from apps.workflows.demo import demo_extensions
from apps.workflows.services import workflow_draft_get_or_create
from tests.support.engine import drive

pytestmark = pytest.mark.django_db


def test_the_demo_suite_is_seeded_once_and_the_shipped_workflow_passes_it(analyst, team, claims_workflow):
    assert seed_evaluation_demo in demo_extensions
    seed_evaluation_demo(analyst, team)
    suite = EvaluationSuite.objects.get(workflow=claims_workflow)
    assert suite.enabled and suite.step_key == "extract"
    assert sorted(suite.cases.values_list("name", flat=True)) == [
        "Kitchen water leak",
        "Parking-lot bumper (small)",
        "Slip and fall with injury",
        "Stolen bicycle",
    ]
    seed_evaluation_demo(analyst, team)  # a second seed changes nothing
    assert EvaluationSuite.objects.count() == 1 and suite.cases.count() == 4
    workflow_draft_get_or_create(actor=analyst, workflow=claims_workflow)
    report = evaluation_report_start(actor=analyst, workflow=claims_workflow)
    evaluation_report_runs_start(report_id=report.pk)
    for run in Run.objects.filter(pk__in=report.results.values("run_id")):
        drive(run)
    evaluation_report_score(report_id=report.pk)
    report.refresh_from_db()
    assert report.state == "passed", report.outcomes
    assert report.totals["cases_passed"] == 4 and report.totals["accuracy"] == "100.00"


def test_no_suite_without_the_demo_workflow(analyst, team):
    seed_evaluation_demo(analyst, team)
    assert not EvaluationSuite.objects.exists()
