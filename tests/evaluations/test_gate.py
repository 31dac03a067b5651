"""The evaluation gate on the real engine: a claims workflow's suite of four cases runs on the draft in a real Celery
worker, against a development inference server scripted to answer a changed, sloppy prompt wrongly. A good change
passes and publishes as the person who asked; the bad one is refused with a report per case, through the service,
the builder's publish and the REST API; an admin publishes over it with an audited reason; nobody else can."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from apps.core.exceptions import ApplicationError, Forbidden, ValidationFailed
from apps.evaluations.models import EvaluationGateOverride, EvaluationReport
from apps.evaluations.selectors import evaluation_reports_for_endpoint
from apps.evaluations.services import (
    evaluation_case_save,
    evaluation_publish,
    evaluation_report_score,
    evaluation_report_start,
    evaluation_suite_save,
)
from apps.evaluations.tasks import reports_score
from apps.inference.models import ModelEndpoint
from apps.runs.models import Run
from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH, SAMPLE_CLAIMS
from apps.workflows.models import WorkflowVersion
from apps.workflows.services import PublishGated, workflow_draft_save, workflow_version_publish
from devserver import DEMO_SCRIPT
from tests.support.processes import free_port, http_ok, inference_server_argv, running

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

GOOD = (
    "Read this insurance claim and extract the claimant, policy number, incident type, claimed amount, whether an "
    "injury is reported, and a one-sentence summary."
)
SLOPPY = "Quickly guess the claim fields (SLOPPY)."
# The sloppy prompt gets three of the four claims wrong: amounts read as the policy's digits, a missed injury.
SLOPPY_RULES: list[dict[str, Any]] = [
    {
        "name": "sloppy POL-10442 (right)",
        "match": {"contains": ["SLOPPY", "POL-10442"]},
        "response": {
            "json": {
                "claimant": "Maria Lopez",
                "policy_number": "POL-10442",
                "incident_type": "auto",
                "amount": 850.0,
                "injury_reported": False,
                "summary": "A bumper.",
            }
        },
    },
    {
        "name": "sloppy POL-20917 (amount wrong)",
        "match": {"contains": ["SLOPPY", "POL-20917"]},
        "response": {
            "json": {
                "claimant": "Tom Becker",
                "policy_number": "POL-20917",
                "incident_type": "property",
                "amount": 20917.0,
                "injury_reported": False,
                "summary": "A leak.",
            }
        },
    },
    {
        "name": "sloppy POL-31808 (injury missed)",
        "match": {"contains": ["SLOPPY", "POL-31808"]},
        "response": {
            "json": {
                "claimant": "Aisha Khan",
                "policy_number": "POL-31808",
                "incident_type": "other",
                "amount": 23800.0,
                "injury_reported": False,
                "summary": "A fall.",
            }
        },
    },
    {
        "name": "sloppy POL-48230 (claimant wrong)",
        "match": {"contains": ["SLOPPY", "POL-48230"]},
        "response": {
            "json": {
                "claimant": "Park",
                "policy_number": "POL-48230",
                "incident_type": "theft",
                "amount": 640.0,
                "injury_reported": False,
                "summary": "A bicycle.",
            }
        },
    },
]
# What the demo's claims should yield, per policy (the demo script's answers to a careful prompt).
EXPECTED = {
    "POL-10442": {"claimant": "Maria Lopez", "amount": 850.0, "injury_reported": False, "incident_type": "auto"},
    "POL-20917": {"claimant": "Tom Becker", "amount": 12400.0, "injury_reported": False, "incident_type": "property"},
    "POL-31808": {"claimant": "Aisha Khan", "amount": 23800.0, "injury_reported": True, "incident_type": "injury"},
    "POL-48230": {"claimant": "Daniel Park", "amount": 640.0, "injury_reported": False, "incident_type": "theft"},
}


@pytest.fixture(scope="module")
def scripted_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A development inference server: the sloppy prompt's rules first, then the shipped demo's."""
    demo = json.loads(DEMO_SCRIPT.read_text(encoding="utf-8"))
    script = tmp_path_factory.mktemp("evaluations") / "script.json"
    script.write_text(json.dumps({"rules": [*SLOPPY_RULES, *demo["rules"]]}), encoding="utf-8")
    port = free_port()
    argv = inference_server_argv(port, ttft_ms=2, tpot_ms=1)
    argv[argv.index("--script") + 1] = str(script)
    url = f"http://127.0.0.1:{port}"
    with running(
        "evaluations-server",
        argv,
        ready=lambda log: http_ok(f"{url}/health"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ):
        yield url


@pytest.fixture
def endpoint(db: Any, scripted_server: str) -> ModelEndpoint:
    return ModelEndpoint.objects.create(
        name="claims-model",
        kind="tgi",
        url=scripted_server,
        is_default=True,
        price_input_per_1k=Decimal("0.5"),
        price_output_per_1k=Decimal("1.5"),
        timeout_seconds=20,
    )


def graph_with_prompt(prompt: str) -> dict[str, Any]:
    graph = copy.deepcopy(CLAIMS_TRIAGE_GRAPH)
    graph["steps"][0]["config"]["prompt"] = prompt + "\n\nClaim:\n{{ input.claim_text }}"
    return graph


def draft(analyst: Any, workflow: Any, prompt: str) -> WorkflowVersion:
    current = workflow.versions.filter(state="published").order_by("-number").first()
    return workflow_draft_save(
        actor=analyst,
        workflow=workflow,
        graph=graph_with_prompt(prompt),
        input_schema=current.input_schema,
        expected_revision=None,
        label="Prompt",
    )


@pytest.fixture
def suite(analyst: Any, claims_workflow: Any, endpoint: ModelEndpoint) -> Any:
    suite = evaluation_suite_save(
        actor=analyst,
        workflow=claims_workflow,
        step_key="extract",
        min_accuracy="90",
        field_min_accuracy={"amount": "100"},
        require_schema_valid=True,
        max_cost_per_case="1",
        max_latency_p95_seconds="30",
    )
    for sample in SAMPLE_CLAIMS:
        policy = next(p for p in EXPECTED if p in sample["claim_text"])
        evaluation_case_save(
            actor=analyst,
            suite=suite,
            name=sample["label"],
            inputs={"claim_text": sample["claim_text"]},
            expected=EXPECTED[policy],
        )
    return suite


def finish(report: EvaluationReport, timeout: float = 90) -> EvaluationReport:
    """Wait for the report's case runs on the worker, then send the periodic scoring task to the worker (as beat
    does) until it has scored the report."""
    deadline = time.monotonic() + timeout
    runs = Run.objects.filter(pk__in=report.results.values("run_id"))
    while time.monotonic() < deadline and runs.exclude(status__in=Run.FINISHED).exists():
        time.sleep(0.2)
    assert not runs.exclude(status__in=Run.FINISHED).exists(), "case runs still going"
    while time.monotonic() < deadline:
        reports_score.apply_async().get(timeout=30)
        report.refresh_from_db()
        if report.is_finished:
            return report
        time.sleep(0.2)
    raise AssertionError(f"report {report.pk} still {report.state}")


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def test_a_good_prompt_change_passes_and_publishes_as_the_person_who_asked(
    celery_worker_process, analyst, outsider, claims_workflow, suite
):
    changed = draft(analyst, claims_workflow, GOOD)
    version, report = evaluation_publish(actor=analyst, workflow=claims_workflow, note="Shorter prompt")
    assert version is None and report is not None and report.state == "running"
    # Publishing is not possible while it runs.
    with pytest.raises(PublishGated, match="still running"):
        workflow_version_publish(actor=analyst, version=changed)
    report = finish(report)
    assert report.state == "passed", report.outcomes
    assert report.totals["cases"] == 4 and report.totals["cases_passed"] == 4
    assert report.totals["accuracy"] == "100.00" and report.totals["fields_checked"] == 16
    assert Decimal(report.totals["cost_total"]) > 0 and report.totals["latency_p95_ms"] > 0
    assert all(outcome["passed"] for outcome in report.outcomes)
    assert {outcome["key"] for outcome in report.outcomes} == {
        "accuracy",
        "finished",
        "field:amount",
        "schema",
        "cost",
        "latency",
    }
    for result in report.results.all():
        assert result.passed and result.schema_valid and result.run.is_test
        assert result.cost > 0 and result.latency_ms > 0
        assert result.reason == "All 4 checked fields match."
    # Published by the scorer, as Ana, with her note.
    assert report.published_version is not None and report.publish_outcome.startswith("Published as version 2")
    published = WorkflowVersion.objects.get(pk=changed.pk)
    assert published.is_published and published.published_by == analyst and published.note == "Shorter prompt"
    # The model card of the endpoint lists the report to those who may see the workflow.
    assert list(evaluation_reports_for_endpoint(analyst, "claims-model")) == [report]
    assert list(evaluation_reports_for_endpoint(outsider, "claims-model")) == []
    assert list(evaluation_reports_for_endpoint(analyst, "another-model")) == []
    # Scoring twice changes nothing: the report is claimed once.
    assert evaluation_report_score(report_id=report.pk) is None
    verbs = list(AuditEvent.objects.filter(verb__startswith="evaluation.report").values_list("verb", flat=True))
    assert sorted(verbs) == ["evaluation.report_finished", "evaluation.report_started"]


def test_a_bad_prompt_change_is_refused_with_a_report_per_case_and_an_admin_may_override(
    celery_worker_process, analyst, admin_user_role, manager, claims_workflow, suite
):
    bad = draft(analyst, claims_workflow, SLOPPY)
    version, report = evaluation_publish(actor=analyst, workflow=claims_workflow, note="Faster prompt")
    assert version is None
    report = finish(report)
    assert report.state == "failed"
    assert report.totals["cases_passed"] == 1 and report.totals["fields_matched"] == 12
    assert report.totals["accuracy"] == "75.00"
    assert report.totals["field_accuracy"] == {
        "amount": "75.00",
        "claimant": "75.00",
        "incident_type": "75.00",
        "injury_reported": "75.00",
    }
    failed = {outcome["key"] for outcome in report.outcomes if not outcome["passed"]}
    assert failed == {"accuracy", "field:amount"}
    results = {result.case_name: result for result in report.results.all()}
    assert results["Parking-lot bumper (small)"].passed
    water = results["Kitchen water leak"]
    assert not water.passed and water.reason == "amount: expected 12400.0, got 20917.0."
    assert [row for row in water.fields if not row["match"]] == [
        {"field": "amount", "expected": 12400.0, "actual": 20917.0, "match": False}
    ]
    fall = results["Slip and fall with injury"]
    assert "injury_reported: expected yes, got no" in fall.reason and "incident_type: expected 'injury'" in fall.reason
    assert report.publish_outcome == "Not published: the suite did not pass."
    assert not WorkflowVersion.objects.get(pk=bad.pk).is_published

    # The service refuses, naming the report; so does the API (409 with the report's summary).
    with pytest.raises(PublishGated, match=f"report {report.pk}, 1 of 4 cases passed"):
        workflow_version_publish(actor=analyst, version=bad)
    response = api(analyst).post(
        f"/api/workflows/{claims_workflow.slug}/draft/publish/", {"note": "x", "revision": bad.revision}, format="json"
    )
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["evaluation"]["report"] == report.pk and body["evaluation"]["cases_passed"] == 1
    assert "Accuracy over every checked field" in body["evaluation"]["failed_criteria"]
    # A non-admin cannot override (403), and the draft stays a draft.
    response = api(analyst).post(
        f"/api/workflows/{claims_workflow.slug}/draft/publish/",
        {"note": "x", "revision": bad.revision, "override_reason": "I am sure"},
        format="json",
    )
    assert response.status_code == 403, response.content
    with pytest.raises(Forbidden):
        workflow_version_publish(actor=analyst, version=bad, override_reason="I am sure")
    assert not EvaluationGateOverride.objects.exists()
    assert not AuditEvent.objects.filter(verb="evaluation.gate_overridden").exists()

    # The admin publishes anyway, with a reason: audited as its own event, and the version says so.
    response = api(admin_user_role).post(
        f"/api/workflows/{claims_workflow.slug}/draft/publish/",
        {
            "note": "Speed matters today",
            "revision": bad.revision,
            "override_reason": "Incident 7: old prompt times out",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    published = WorkflowVersion.objects.get(pk=bad.pk)
    assert published.is_published and published.published_by == admin_user_role
    assert published.note.startswith("Speed matters today\n\nPublished over the evaluation suite (report ")
    assert "Incident 7: old prompt times out" in published.note
    override = EvaluationGateOverride.objects.get()
    assert override.version == published and override.report == report and override.actor == admin_user_role
    event = AuditEvent.objects.get(verb="evaluation.gate_overridden")
    assert event.data_dict["report"] == report.pk and event.data_dict["reason"] == "Incident 7: old prompt times out"
    assert event.actor_id == admin_user_role.pk
    publish_event = AuditEvent.objects.filter(verb="workflow.published", target_id=str(published.pk)).get()
    assert publish_event.data_dict["gates_overridden"] == [override_line(published.note)]


def override_line(note: str) -> str:
    return note.split("\n\n", 1)[1]


def test_a_new_report_is_needed_when_the_suite_changes(celery_worker_process, analyst, claims_workflow, suite):
    draft(analyst, claims_workflow, GOOD)
    report = finish(evaluation_report_start(actor=analyst, workflow=claims_workflow))
    assert report.state == "passed"
    evaluation_case_save(
        actor=analyst,
        suite=suite,
        name="Another bicycle",
        inputs={"claim_text": SAMPLE_CLAIMS[3]["claim_text"]},
        expected={"amount": 640.0},
    )
    current = claims_workflow.versions.get(state="draft")
    with pytest.raises(PublishGated, match="suite changed since report"):
        workflow_version_publish(actor=analyst, version=current)


def test_a_case_whose_expected_output_does_not_fit_the_step_is_refused(analyst, claims_workflow, manager):
    suite = evaluation_suite_save(actor=analyst, workflow=claims_workflow, step_key="extract", min_accuracy="90")
    inputs = {"claim_text": SAMPLE_CLAIMS[0]["claim_text"]}
    with pytest.raises(ValidationFailed) as unknown:
        evaluation_case_save(actor=analyst, suite=suite, name="c", inputs=inputs, expected={"colour": "red"})
    assert unknown.value.fields["expected.colour"] == [
        '"colour" is not a field of this output (it has amount, claimant, incident_type, injury_reported, '
        "policy_number, summary)."
    ]
    assert "colour" in unknown.value.message
    with pytest.raises(ValidationFailed) as wrong_type:
        evaluation_case_save(actor=analyst, suite=suite, name="c", inputs=inputs, expected={"amount": "850"})
    assert wrong_type.value.fields == {"expected.amount": ["\"amount\" is a number, not '850'."]}
    with pytest.raises(ValidationFailed) as wrong_choice:
        evaluation_case_save(actor=analyst, suite=suite, name="c", inputs=inputs, expected={"incident_type": "boat"})
    assert "incident_type" in wrong_choice.value.fields["expected.incident_type"][0]
    with pytest.raises(ValidationFailed) as bad_input:
        evaluation_case_save(actor=analyst, suite=suite, name="c", inputs={"claim": "x"}, expected={"amount": 1.0})
    assert set(bad_input.value.fields) == {"inputs.claim", "inputs.claim_text"}
    with pytest.raises(ValidationFailed):
        evaluation_case_save(actor=analyst, suite=suite, name="c", inputs=inputs, expected={})
    assert not suite.cases.exists()
    # Those who may only read the workflow cannot change its suite.
    with pytest.raises(Forbidden):
        evaluation_case_save(actor=manager, suite=suite, name="c", inputs=inputs, expected={"amount": 850.0})
    # A suite cannot check a step that has no named output fields.
    with pytest.raises(ValidationFailed) as no_step:
        evaluation_suite_save(actor=analyst, workflow=claims_workflow, step_key="nope", min_accuracy="90")
    assert '"nope" is not a step whose output has fields' in no_step.value.fields["step_key"][0]
    with pytest.raises(ApplicationError):
        evaluation_report_start(actor=analyst, workflow=claims_workflow)  # no cases yet
