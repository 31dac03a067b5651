"""The evaluation suite's pages: criteria and case forms (bad input is a form error naming the field, never a 500),
publishing through the suite with live progress, the report per case in words, the admin's override, the
comparison across versions, and every POST-only route by persona. Runs are driven in this process; the checked
step is a transform, so no model is needed here (tests/evaluations/test_gate.py runs models on a real worker)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.evaluations.models import EvaluationCase, EvaluationReport
from apps.evaluations.selectors import evaluation_reports_for_endpoint
from apps.evaluations.services import (
    evaluation_case_save,
    evaluation_report_runs_start,
    evaluation_report_score,
    evaluation_suite_save,
)
from apps.runs.models import Run
from apps.runs.services import run_start
from apps.workflows.models import WorkflowVersion
from apps.workflows.services import (
    workflow_create,
    workflow_draft_save,
    workflow_version_create,
    workflow_version_publish,
)
from tests.support.engine import drive

pytestmark = pytest.mark.django_db

INPUT_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "number", "title": "Amount"}},
    "required": ["amount"],
}


def graph(limit: float) -> dict[str, Any]:
    return {
        "steps": [
            {
                "key": "decide",
                "type": "data.transform",
                "name": "Decide",
                "config": {
                    "fields": {
                        "route": f'input.amount <= {limit} ? "auto" : "adjuster"',
                        "double": "input.amount * 2.0",
                    }
                },
            }
        ]
    }


@pytest.fixture
def triage(analyst: Any, team: Any) -> Any:
    workflow = workflow_create(actor=analyst, name="Triage", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph(1000.0), input_schema=INPUT_SCHEMA)
    workflow_version_publish(actor=analyst, version=version, note="v1")
    return workflow


@pytest.fixture
def suite(analyst: Any, triage: Any) -> Any:
    suite = evaluation_suite_save(actor=analyst, workflow=triage, step_key="decide", min_accuracy="100")
    evaluation_case_save(actor=analyst, suite=suite, name="Small", inputs={"amount": 100}, expected={"route": "auto"})
    evaluation_case_save(
        actor=analyst,
        suite=suite,
        name="Large",
        inputs={"amount": 5000},
        expected={"route": "adjuster", "double": 10000},
    )
    return suite


def client_for(user: Any | None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def set_draft(analyst: Any, workflow: Any, limit: float) -> WorkflowVersion:
    return workflow_draft_save(
        actor=analyst, workflow=workflow, graph=graph(limit), input_schema=INPUT_SCHEMA, expected_revision=None
    )


def drive_report(report: EvaluationReport) -> EvaluationReport:
    """Start the report's case runs (what its commit does in a real transaction; this test's transaction never
    commits), execute them here, and score the report."""
    evaluation_report_runs_start(report_id=report.pk)
    for run in Run.objects.filter(pk__in=report.results.values("run_id")):
        drive(run)
    evaluation_report_score(report_id=report.pk)
    report.refresh_from_db()
    return report


def test_criteria_form_sets_up_the_suite_and_refuses_bad_values_readably(analyst, triage):
    client = client_for(analyst)
    url = reverse("evaluations:settings", args=[triage.slug])
    page = client.get(url)
    assert page.status_code == 200 and "Set up the evaluation suite" in page.content.decode()
    bad = client.post(url, {"step_key": "decide", "min_accuracy": "ninety", "max_cost_per_case": "-1"})
    assert bad.status_code == 400
    text = bad.content.decode()
    assert (
        "Give a percentage from 0 to 100." in text
        and "Give a cost above 0 and below 1000000, or leave it empty." in text
    )
    missing = client.post(url, {"step_key": "nope", "min_accuracy": "90"})
    assert missing.status_code == 400 and "is not a step whose output has fields" in missing.content.decode()
    saved = client.post(
        url,
        {
            "step_key": "decide",
            "min_accuracy": "95",
            "field-route": "100",
            "enabled": "on",
            "require_schema_valid": "on",
        },
    )
    assert saved.status_code == 302
    suite = triage.evaluation_suite
    assert (
        suite.step_key == "decide"
        and str(suite.min_accuracy) == "95.00"
        and suite.field_min_accuracy == {"route": "100.00"}
    )
    assert AuditEvent.objects.filter(verb="evaluation.suite_created").count() == 1


def test_the_case_form_names_each_wrong_field_and_keeps_what_was_typed(analyst, triage):
    evaluation_suite_save(actor=analyst, workflow=triage, step_key="decide", min_accuracy="90")
    client = client_for(analyst)
    url = reverse("evaluations:case-new", args=[triage.slug])
    page = client.get(url).content.decode()
    assert 'name="input-amount"' in page and 'name="expected-route"' in page and 'name="expected-double"' in page
    bad = client.post(url, {"name": "", "input-amount": "lots", "expected-route": "auto"})
    assert bad.status_code == 400
    text = bad.content.decode()
    assert "Give the case a name." in text and "Enter a number." in text and 'value="auto"' in text
    nothing = client.post(url, {"name": "Empty", "input-amount": "5"})
    assert nothing.status_code == 400 and "a case that checks nothing cannot fail" in nothing.content.decode()
    ok = client.post(url, {"name": "Small", "input-amount": "100", "expected-route": "auto", "expected-double": "200"})
    assert ok.status_code == 302
    case = EvaluationCase.objects.get()
    assert case.inputs == {"amount": 100.0} and case.expected == {"route": "auto", "double": 200}
    # Editing keeps the values in the form.
    edit = client.get(reverse("evaluations:case-edit", args=[triage.slug, case.pk])).content.decode()
    assert 'value="auto"' in edit and 'value="200"' in edit


def test_publishing_through_the_suite_shows_progress_then_publishes_when_it_passes(analyst, triage, suite):
    draft = set_draft(analyst, triage, 1000.0)
    client = client_for(analyst)
    editor = client.get(reverse("workflows:editor", args=[triage.slug])).content.decode()
    assert reverse("evaluations:publish", args=[triage.slug]) in editor and "evaluation suite" in editor
    response = client.post(
        reverse("evaluations:publish", args=[triage.slug]), {"note": "Same rules", "revision": draft.revision}
    )
    report = EvaluationReport.objects.get()
    assert response.status_code == 302 and response.url == reverse("evaluations:report", args=[triage.slug, report.pk])
    live = client.get(response.url).content.decode()
    assert "0 of 2 case runs finished" in live and 'hx-trigger="every 2s"' in live
    fragment = client.get(response.url, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "<html" not in fragment.content.decode()
    report = drive_report(report)
    assert report.state == "passed"
    assert client.get(response.url, HTTP_HX_REQUEST="true").headers["HX-Refresh"] == "true"
    page = client.get(response.url).content.decode()
    assert "Passed" in page and "Published as version 2." in page and "All 2 checked fields match." in page
    assert reverse("runs:detail", args=[report.results.first().run_id]) in page
    draft.refresh_from_db()
    assert draft.is_published and draft.note == "Same rules" and draft.published_by == analyst
    # The suite page shows each published version's evidence; the audit chain has it too.
    suite_page = client.get(reverse("evaluations:suite", args=[triage.slug])).content.decode()
    assert "Passed the suite" in suite_page and f"report {report.pk}</a>" in suite_page
    assert "Published before the suite existed" in suite_page  # version 1
    passed = AuditEvent.objects.get(verb="evaluation.gate_passed")
    assert passed.data_dict == {"workflow": triage.slug, "number": 2, "report": report.pk}
    # A draft with the same content as a passing report publishes at once (no second run).
    set_draft(analyst, triage, 1000.0)
    again = client.post(reverse("evaluations:publish", args=[triage.slug]), {"note": "again"})
    assert again.status_code == 302 and again.url == reverse("workflows:versions", args=[triage.slug])
    assert EvaluationReport.objects.count() == 1


def test_a_failing_suite_refuses_with_a_report_per_case_and_only_an_admin_overrides(
    analyst, admin_user_role, triage, suite
):
    draft = set_draft(analyst, triage, 10.0)  # everything above 10 goes to an adjuster: "Small" fails
    client = client_for(analyst)
    client.post(reverse("evaluations:publish", args=[triage.slug]), {"note": "Stricter"})
    report = drive_report(EvaluationReport.objects.get())
    assert report.state == "failed" and report.publish_outcome == "Not published: the suite did not pass."
    url = reverse("evaluations:report", args=[triage.slug, report.pk])
    page = client.get(url).content.decode()
    assert "Failed" in page and "route: expected &#x27;auto&#x27;, got &#x27;adjuster&#x27;." in page
    assert "Differs" in page and "Matches" in page and "Not met" in page
    assert "Publish over the failing suite" not in page  # Ana is not an admin
    # The builder's plain publish is refused too, naming the report.
    refused = client.post(reverse("workflows:publish", args=[triage.slug]), {"note": "x"}, follow=True)
    assert f"report {report.pk}, 1 of 2 cases passed" in refused.content.decode()
    override_url = reverse("evaluations:override", args=[triage.slug, report.pk])
    assert client.post(override_url, {"reason": "trust me"}).status_code == 403
    admin = client_for(admin_user_role)
    assert "Publish over the failing suite" in admin.get(url).content.decode()
    empty = admin.post(override_url, {"reason": "  "})
    assert empty.status_code == 302 and not WorkflowVersion.objects.get(pk=draft.pk).is_published
    done = admin.post(override_url, {"reason": "Regulator deadline", "note": "Stricter"})
    assert done.status_code == 302 and done.url == reverse("workflows:versions", args=[triage.slug])
    published = WorkflowVersion.objects.get(pk=draft.pk)
    assert published.is_published and "Regulator deadline" in published.note
    assert AuditEvent.objects.get(verb="evaluation.gate_overridden").data_dict["report"] == report.pk
    gate = AuditEvent.objects.get(verb="workflow.published", target_id=str(published.pk)).data_dict["gates"]
    assert gate["evaluation"] == {
        "gate": "overridden",
        "report": report.pk,
        "suite_checksum": report.suite_checksum,
        "content_checksum": report.content_checksum,
    }
    versions = admin.get(reverse("workflows:versions", args=[triage.slug])).content.decode()
    assert "Published over the evaluation suite" in versions
    evidence = client.get(reverse("evaluations:suite", args=[triage.slug])).content.decode()
    assert "Published over the suite" in evidence and "Regulator deadline" in evidence
    assert not AuditEvent.objects.filter(verb="evaluation.gate_passed").exists()


def test_reports_are_compared_across_versions(analyst, manager, triage, suite):
    for limit in (1000.0, 10.0):
        set_draft(analyst, triage, limit)
        client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
        drive_report(EvaluationReport.objects.order_by("-pk").first())
    page = client_for(manager).get(reverse("evaluations:compare", args=[triage.slug])).content.decode()
    assert "Accuracy of “route”" in page and "100.00 %" in page and "50.00 %" in page
    assert "2 of 2" in page and "1 of 2" in page and "Passed" in page and "Failed" in page
    assert client_for(manager).get(reverse("evaluations:suite", args=[triage.slug])).status_code == 200


def test_a_recorded_run_becomes_a_case_with_its_output_as_the_expectation(analyst, triage, suite):
    run, _ = run_start(actor=analyst, workflow=triage, inputs={"amount": 40.0})
    run = drive(run)
    response = client_for(analyst).post(reverse("evaluations:case-from-run", args=[triage.slug]), {"run": run.pk})
    case = EvaluationCase.objects.get(source="recorded_run")
    assert response.status_code == 302 and response.url == reverse("evaluations:case-edit", args=[triage.slug, case.pk])
    assert case.inputs == {"amount": 40.0} and case.expected == {"route": "auto", "double": 80.0}
    assert case.source_reference == f"run {run.pk}"
    bad = client_for(analyst).post(reverse("evaluations:case-from-run", args=[triage.slug]), {"run": "x"})
    assert bad.status_code == 302


def test_model_card_selector_finds_no_report_without_model_calls(analyst, outsider, triage, suite):
    set_draft(analyst, triage, 1000.0)
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    drive_report(EvaluationReport.objects.get())
    assert list(evaluation_reports_for_endpoint(analyst, "main")) == []


# --- POST-only routes by persona ------------------------------------------------------------------------------------

POSTS = ["case-delete", "cases-import", "case-from-run", "run", "publish", "override"]
WHO = {"reviewer": 403, "manager": 403, "auditor": 403, "outsider": 404}


@pytest.mark.parametrize("route", POSTS)
def test_post_routes_by_persona_change_nothing_for_those_who_may_not(
    route, analyst, reviewer, manager, auditor, outsider, triage, suite
):
    set_draft(analyst, triage, 10.0)
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    report = drive_report(EvaluationReport.objects.get())
    case = suite.cases.first()
    args = {
        "case-delete": [triage.slug, case.pk],
        "override": [triage.slug, report.pk],
    }.get(route, [triage.slug])
    url = reverse(f"evaluations:{route}", args=args)
    body = {"run": report.results.first().run_id, "reason": "because", "note": "n"}
    before = (
        EvaluationCase.objects.count(),
        EvaluationReport.objects.count(),
        AuditEvent.objects.exclude(verb__startswith="request.").count(),
    )
    people = {"reviewer": reviewer, "manager": manager, "auditor": auditor, "outsider": outsider}
    for persona, status in WHO.items():
        assert client_for(people[persona]).post(url, body).status_code == status, persona
    anonymous = client_for(None).post(url, body)
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous.url
    assert (
        EvaluationCase.objects.count(),
        EvaluationReport.objects.count(),
        AuditEvent.objects.exclude(verb__startswith="request.").count(),
    ) == before
    # The owner may (the override only as an admin: 403 for her, tested above); GET is not allowed.
    owner = client_for(analyst).post(url, body)
    assert owner.status_code == (403 if route == "override" else 302)
    assert client_for(analyst).get(url).status_code == 405


def test_reviewers_corrections_become_cases_once(analyst, reviewer, team):
    """An extraction reviewed in the team's queue (the model is the test stack's development server, answering the
    demo claim): the reviewer corrects the amount, and the import makes a case of the corrected data."""
    from apps.approvals.models import ApprovalRequest
    from apps.workflows.demo import CLAIM_FIELDS_SCHEMA, CLAIMS_TRIAGE_INPUT_SCHEMA, SAMPLE_CLAIMS
    from tests.approvals.items import decide

    steps = [
        {
            "key": "extract",
            "type": "llm.extract",
            "config": {"prompt": "Extract the claim: {{ input.claim_text }}", "json_schema": CLAIM_FIELDS_SCHEMA},
        },
        {"key": "review", "type": "human.approval", "config": {"queue": "team:claims", "review_step": "extract"}},
    ]
    workflow = workflow_create(actor=analyst, name="Reviewed claims", team=team)
    version = workflow_version_create(
        actor=analyst, workflow=workflow, graph={"steps": steps}, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
    )
    workflow_version_publish(actor=analyst, version=version)
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"claim_text": SAMPLE_CLAIMS[0]["claim_text"]})
    drive(run)
    item = ApprovalRequest.objects.get(run=run)
    decided = decide(reviewer, item, decision="approved", edits={"amount": 900.0}, reason="The quote says 900.")
    assert decided.status_code == 200, decided.content
    suite = evaluation_suite_save(actor=analyst, workflow=workflow, step_key="extract", min_accuracy="90")
    url = reverse("evaluations:cases-import", args=[workflow.slug])
    client = client_for(analyst)
    response = client.post(url, follow=True)
    assert "Added 1 case from reviewers&#x27; corrections." in response.content.decode()
    case = suite.cases.get()
    assert case.source == "corrections" and case.inputs == run.inputs
    assert case.expected["amount"] == 900.0 and case.expected["claimant"] == "Maria Lopez"
    assert set(case.expected) <= set(CLAIM_FIELDS_SCHEMA["properties"])
    client.post(url)  # a second import adds nothing
    assert suite.cases.count() == 1


def test_a_draft_changed_while_its_suite_ran_is_not_published(analyst, triage, suite):
    set_draft(analyst, triage, 1000.0)
    client_for(analyst).post(reverse("evaluations:publish", args=[triage.slug]), {"note": "v2"})
    evaluation_report_runs_start(report_id=EvaluationReport.objects.get().pk)  # as its commit does
    changed = set_draft(analyst, triage, 2000.0)  # saved while the cases run: the report proves nothing about it
    report = drive_report(EvaluationReport.objects.get())
    assert report.state == "passed" and report.published_version is None
    assert report.publish_outcome.startswith("Not published: the draft changed after the suite started on it")
    assert not WorkflowVersion.objects.get(pk=changed.pk).is_published


def test_a_report_whose_runs_never_finish_is_closed_and_keeps_the_gate_shut(analyst, triage, suite):
    from datetime import timedelta

    from apps.core.exceptions import ApplicationError
    from apps.evaluations.services import REPORT_TIMEOUT, evaluation_report_start

    draft = set_draft(analyst, triage, 1000.0)
    report = evaluation_report_start(actor=analyst, workflow=triage)  # nobody executes its runs
    assert evaluation_report_score(report_id=report.pk) is None  # not finished, not yet too late
    late = report.created_at + REPORT_TIMEOUT + timedelta(seconds=1)
    assert evaluation_report_score(report_id=report.pk, now=late) is not None
    report.refresh_from_db()
    assert report.state == "error" and report.error.startswith("2 case runs did not finish within 30 minutes")
    with pytest.raises(ApplicationError, match=f"report {report.pk}, 0 of 2 cases passed"):
        workflow_version_publish(actor=analyst, version=draft)
    page = client_for(analyst).get(reverse("evaluations:report", args=[triage.slug, report.pk])).content.decode()
    assert "Could not finish" in page and "did not finish within 30 minutes" in page


# --- what a review found: ways around the gate ----------------------------------------------------------------------


def test_pinned_test_data_does_not_make_a_bad_draft_pass(analyst, triage):
    """Pins are not part of the draft's content: a checked step pinned to the expected values still runs for real
    in an evaluation run, so the bad rule is caught."""
    from apps.workflows.services import pinned_output_set

    suite = evaluation_suite_save(actor=analyst, workflow=triage, step_key="decide", min_accuracy="100")
    evaluation_case_save(actor=analyst, suite=suite, name="Small", inputs={"amount": 100}, expected={"route": "auto"})
    set_draft(analyst, triage, 10.0)  # "Small" goes to an adjuster
    pinned_output_set(actor=analyst, workflow=triage, step_key="decide", output={"route": "auto", "double": 200.0})
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    report = drive_report(EvaluationReport.objects.get())
    assert report.state == "failed", report.outcomes
    result = report.results.get()
    assert result.output == {"route": "adjuster", "double": 200.0}
    assert result.run.test_settings["pinned"] == {}


def test_the_analyst_may_tighten_an_enabled_suite_but_only_an_admin_may_loosen_it(
    analyst, admin_user_role, triage, suite
):
    from apps.evaluations.services import SuiteLoosening, evaluation_case_delete

    criteria = {
        "step_key": "decide",
        "min_accuracy": "100",
        "field_min_accuracy": {"route": "100"},
        "require_schema_valid": True,
        "max_cost_per_case": "1",
        "max_latency_p95_seconds": "30",
    }
    # Tightening (criteria where there were none) is open to the analyst.
    evaluation_suite_save(actor=analyst, workflow=triage, **criteria)
    loosenings = {
        "switching the gate off": {"enabled": False},
        "lowering the minimum accuracy": {"min_accuracy": "99.99"},
        'removing the minimum accuracy of "route"': {"field_min_accuracy": {}},
        'lowering the minimum accuracy of "route"': {"field_min_accuracy": {"route": "50"}},
        "no longer requiring outputs to match the step's schema": {"require_schema_valid": False},
        "raising the highest cost per case": {"max_cost_per_case": "1.000001"},
        "removing the highest cost per case": {"max_cost_per_case": ""},
        "raising the highest time per case": {"max_latency_p95_seconds": "31"},
        "removing the highest time per case": {"max_latency_p95_seconds": None},
    }
    events = AuditEvent.objects.exclude(verb__startswith="request.").count()
    for words, change in loosenings.items():
        with pytest.raises(SuiteLoosening) as refused:
            evaluation_suite_save(actor=analyst, workflow=triage, **{**criteria, **change})
        assert refused.value.extra["loosened"] == [words]
        assert "Only an admin may" in refused.value.message and words in refused.value.message
    suite.refresh_from_db()
    assert suite.enabled and suite.min_accuracy == 100 and suite.max_cost_per_case == 1
    assert AuditEvent.objects.exclude(verb__startswith="request.").count() == events
    # The form says so, keeps what was typed, and changes nothing.
    client = client_for(analyst)
    url = reverse("evaluations:settings", args=[triage.slug])
    form = {"step_key": "decide", "min_accuracy": "100", "field-route": "100", "require_schema_valid": "on"}
    page = client.post(url, {**form, "max_cost_per_case": "1", "max_latency_p95_seconds": "30"})
    assert page.status_code == 403
    text = page.content.decode()
    assert "Only an admin may make this change" in text and "switching the gate off" in text
    suite.refresh_from_db()
    assert suite.enabled
    # Removing a case, or changing what one expects, is loosening too; adding a case and adding a field are not.
    small = suite.cases.get(name="Small")
    with pytest.raises(SuiteLoosening, match='removing the case "Small"'):
        evaluation_case_delete(actor=analyst, case=small)
    deleted = client.post(reverse("evaluations:case-delete", args=[triage.slug, small.pk]), follow=True)
    assert "Only an admin may remove a case" in deleted.content.decode()
    changed = client.post(
        reverse("evaluations:case-edit", args=[triage.slug, small.pk]),
        {"name": "Small", "input-amount": "100", "expected-route": "adjuster"},
    )
    assert changed.status_code == 403 and "Only an admin may change what a case checks" in changed.content.decode()
    small.refresh_from_db()
    assert small.expected == {"route": "auto"}
    more = client.post(
        reverse("evaluations:case-edit", args=[triage.slug, small.pk]),
        {"name": "Small one", "input-amount": "100", "expected-route": "auto", "expected-double": "200"},
    )
    assert more.status_code == 302
    evaluation_case_save(actor=analyst, suite=suite, name="Tiny", inputs={"amount": 1}, expected={"route": "auto"})
    evaluation_suite_save(
        actor=analyst, workflow=triage, **{**criteria, "min_accuracy": "100", "max_cost_per_case": "0.5"}
    )
    # An admin may loosen; the audit event has the whole state before and after, the gate's switch included.
    evaluation_suite_save(actor=admin_user_role, workflow=triage, **{**criteria, "enabled": False})
    event = AuditEvent.objects.filter(verb="evaluation.suite_changed").latest("pk")
    assert event.actor_id == admin_user_role.pk
    assert event.data_dict["before"]["enabled"] is True and event.data_dict["after"]["enabled"] is False
    assert event.data_dict["before"]["max_cost_per_case"] == "0.500000"
    assert event.data_dict["after"]["max_cost_per_case"] == "1.000000"
    assert event.data_dict["loosened"] == ["switching the gate off", "raising the highest cost per case"]
    # A disabled suite gates nothing, so changing it is open again (switching it back on tightens).
    evaluation_case_delete(actor=analyst, case=EvaluationCase.objects.get(name="Tiny"))
    evaluation_suite_save(actor=analyst, workflow=triage, **criteria)
    assert triage.evaluation_suite.enabled


def test_the_published_event_records_what_the_gate_saw(analyst, admin_user_role, triage, suite):
    def gate_of(version: WorkflowVersion) -> Any:
        event = AuditEvent.objects.get(verb="workflow.published", target_id=str(version.pk))
        return event.data_dict["gates"]["evaluation"]

    first = triage.versions.get(number=1)
    assert gate_of(first) == {"gate": "no suite"}  # published before the suite existed
    draft = set_draft(analyst, triage, 1000.0)
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    report = drive_report(EvaluationReport.objects.get())
    workflow_version_publish(actor=analyst, version=draft)
    assert gate_of(draft) == {
        "gate": "passed",
        "report": report.pk,
        "suite_checksum": report.suite_checksum,
        "content_checksum": report.content_checksum,
    }
    evaluation_suite_save(actor=admin_user_role, workflow=triage, step_key="decide", min_accuracy="100", enabled=False)
    off = set_draft(analyst, triage, 10.0)
    workflow_version_publish(actor=analyst, version=off)
    assert gate_of(off)["gate"] == "suite disabled"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_cost_per_case", "999999.9999999"),
        ("max_cost_per_case", "1000000"),
        ("max_cost_per_case", "0.0000001"),
        ("max_latency_p95_seconds", "999999.999"),
        ("max_latency_p95_seconds", "0.001"),
        *[
            (name, value)
            for name in ("max_cost_per_case", "max_latency_p95_seconds", "min_accuracy", "field-route")
            for value in ("NaN", "sNaN", "Infinity", "-Infinity", "-0", "1e309", "9" * 400, "-1", "1e-400")
        ],
    ],
)
def test_numeric_extremes_in_the_criteria_are_form_errors(analyst, triage, suite, field, value):
    form = {
        "step_key": "decide",
        "min_accuracy": "100",
        "enabled": "on",
        "require_schema_valid": "on",
        field: value,
    }
    before = AuditEvent.objects.exclude(verb__startswith="request.").count()
    response = client_for(analyst).post(reverse("evaluations:settings", args=[triage.slug]), form)
    if field in ("min_accuracy", "field-route") and value in ("-0", "1e-400"):
        # Zero percent is a valid (if lax) minimum; a field minimum of 0 is no loosening of "none".
        assert response.status_code in (302, 403), response.status_code
        suite.refresh_from_db()
        assert str(suite.min_accuracy) in ("100.00", "0.00") and not str(suite.min_accuracy).startswith("-")
        return
    assert response.status_code == 400, (field, value, response.status_code)
    assert "field-error" in response.content.decode()
    assert AuditEvent.objects.exclude(verb__startswith="request.").count() == before


def test_an_override_over_a_report_refuses_a_draft_edited_since(analyst, admin_user_role, triage, suite):
    draft = set_draft(analyst, triage, 10.0)
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    report = drive_report(EvaluationReport.objects.get())
    assert report.state == "failed"
    admin = client_for(admin_user_role)
    url = reverse("evaluations:report", args=[triage.slug, report.pk])
    assert "Publish over the failing suite" in admin.get(url).content.decode()
    set_draft(analyst, triage, 5.0)  # the same draft row, new content nobody evaluated
    assert "Publish over the failing suite" not in admin.get(url).content.decode()
    response = admin.post(
        reverse("evaluations:override", args=[triage.slug, report.pk]), {"reason": "Deadline"}, follow=True
    )
    assert "The draft changed after this report ran" in response.content.decode()
    assert not WorkflowVersion.objects.get(pk=draft.pk).is_published
    assert (
        not AuditEvent.objects.filter(verb__in=["evaluation.gate_overridden", "workflow.published"])
        .exclude(target_id=str(triage.versions.get(number=1).pk))
        .exists()
    )


def test_the_auto_publish_refuses_a_draft_edited_since_even_when_another_report_passed_it(analyst, triage, suite):
    draft = set_draft(analyst, triage, 1000.0)
    client_for(analyst).post(
        reverse("evaluations:publish", args=[triage.slug]), {"note": "As it was", "revision": draft.revision}
    )
    asked = EvaluationReport.objects.get()
    evaluation_report_runs_start(report_id=asked.pk)  # as its commit does
    set_draft(analyst, triage, 2000.0)  # passes too, on its own report, but nobody asked to publish it
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    other = drive_report(EvaluationReport.objects.exclude(pk=asked.pk).get())
    assert other.state == "passed" and not other.publish_requested
    asked = drive_report(asked)
    assert asked.state == "passed" and asked.published_version is None
    assert asked.publish_outcome.startswith("Not published: the draft changed after the suite started on it")
    assert not WorkflowVersion.objects.get(pk=draft.pk).is_published


def test_publishing_through_the_suite_refuses_a_stale_revision(analyst, triage, suite):
    draft = set_draft(analyst, triage, 1000.0)
    stale = draft.revision
    set_draft(analyst, triage, 1000.0)
    response = client_for(analyst).post(
        reverse("evaluations:publish", args=[triage.slug]), {"note": "x", "revision": stale}, follow=True
    )
    assert "The draft changed since you looked at it" in response.content.decode()
    assert not EvaluationReport.objects.exists()


def test_case_runs_start_after_the_report_commits_each_once(analyst, triage, suite, django_capture_on_commit_callbacks):
    from apps.evaluations.services import evaluation_report_start, evaluation_result_run_start

    set_draft(analyst, triage, 1000.0)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        report = evaluation_report_start(actor=analyst, workflow=triage)
        # Inside the report's transaction no run exists yet: it holds the workflow and draft locks, not runs.
        assert not Run.objects.filter(mode="test").exists()
        assert list(report.results.values_list("run_id", flat=True)) == [None, None]
    page = client_for(analyst).get(reverse("evaluations:report", args=[triage.slug, report.pk])).content.decode()
    assert "Waiting to start" in page and "0 of 2 case runs finished" in page
    for callback in callbacks:
        callback()
    assert Run.objects.filter(mode="test").count() == 2
    assert not report.results.filter(run__isnull=True).exists()
    # Starting again (a second delivery, the periodic task) starts nothing more.
    assert evaluation_report_runs_start(report_id=report.pk) == 0
    assert not any(evaluation_result_run_start(result_id=pk) for pk in report.results.values_list("pk", flat=True))
    assert Run.objects.filter(mode="test").count() == 2
    assert AuditEvent.objects.filter(verb="run.test_started").count() == 2
    assert drive_report(report).state == "passed"


def test_a_case_whose_draft_changed_before_its_run_started_fails_the_report(analyst, triage, suite):
    from apps.evaluations.services import evaluation_report_start

    set_draft(analyst, triage, 1000.0)
    report = evaluation_report_start(actor=analyst, workflow=triage)  # its runs start after the commit...
    set_draft(analyst, triage, 2000.0)  # ...and the draft is edited first
    report = drive_report(report)
    assert report.state == "failed"
    assert not Run.objects.filter(mode="test").exists()
    for result in report.results.all():
        assert result.run_id is None and not result.passed
        assert result.reason == "The draft changed before the case's run started, so it was not run."
    assert AuditEvent.objects.filter(verb="evaluation.case_not_started").count() == 2
    unfinished = next(outcome for outcome in report.outcomes if outcome["key"] == "finished")
    assert not unfinished["passed"]


def test_the_periodic_task_starts_case_runs_a_dead_process_left_unstarted(analyst, triage, suite):
    from django.utils import timezone

    from apps.evaluations.services import RUN_START_GRACE, evaluation_report_start, evaluation_reports_score_due

    set_draft(analyst, triage, 1000.0)
    report = evaluation_report_start(actor=analyst, workflow=triage)  # the commit's callback never runs here
    assert evaluation_reports_score_due() == 0
    assert report.results.filter(run__isnull=True).count() == 2  # within the grace: the callback may still come
    EvaluationReport.objects.filter(pk=report.pk).update(created_at=timezone.now() - RUN_START_GRACE * 2)
    assert evaluation_reports_score_due() == 0  # started, not finished
    assert not report.results.filter(run__isnull=True).exists()
    for run in Run.objects.filter(pk__in=report.results.values("run_id")):
        drive(run)
    # The sweeper scores it: reports ride every sweep rather than a task of their own.
    from apps.runs.sweeper import sweep

    assert sweep()["evaluation_reports_finished"] == 1
    report.refresh_from_db()
    assert report.state == "passed"


def test_the_builder_api_says_a_draft_needs_a_passing_suite(analyst, admin_user_role, triage, suite):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(analyst)
    set_draft(analyst, triage, 1000.0)
    draft = client.get(f"/api/workflows/{triage.slug}/draft/").json()
    assert draft["problems"] == [] and draft["can_publish"] is False
    assert draft["gate_problems"] == [
        "The evaluation suite has not run on this draft: run it, and publish when it passes."
    ]
    validate = client.post(f"/api/workflows/{triage.slug}/draft/validate/", {}, format="json").json()
    assert validate["problems"] == [] and validate["can_publish"] is False
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    report = drive_report(EvaluationReport.objects.get())
    assert report.state == "passed"
    draft = client.get(f"/api/workflows/{triage.slug}/draft/").json()
    assert draft["can_publish"] is True and draft["gate_problems"] == []
    # The preview records nothing: no evidence before an actual publish.
    assert not AuditEvent.objects.filter(verb="evaluation.gate_passed").exists()
    # A failing draft says why, naming the report; with the suite switched off, nothing stands in the way.
    set_draft(analyst, triage, 10.0)
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    failed = drive_report(EvaluationReport.objects.latest("pk"))
    draft = client.get(f"/api/workflows/{triage.slug}/draft/").json()
    assert draft["can_publish"] is False and f"report {failed.pk}, 1 of 2 cases passed" in draft["gate_problems"][0]
    evaluation_suite_save(actor=admin_user_role, workflow=triage, step_key="decide", min_accuracy="100", enabled=False)
    assert client.get(f"/api/workflows/{triage.slug}/draft/").json()["can_publish"] is True


def pad_with_easy_cases(analyst: Any, suite: Any, count: int) -> None:
    """Cases any draft with a low threshold passes: large amounts go to an adjuster."""
    for index in range(count):
        evaluation_case_save(
            actor=analyst,
            suite=suite,
            name=f"Easy {index:02}",
            inputs={"amount": 5000 + index},
            expected={"route": "adjuster"},
        )


def test_padding_an_enabled_suite_with_easy_cases_does_not_let_a_bad_draft_through(
    analyst, admin_user_role, triage, suite
):
    # An admin set the bar at 90 %; version 2 went through the gate on the suite's two cases.
    evaluation_suite_save(actor=admin_user_role, workflow=triage, step_key="decide", min_accuracy="90")
    set_draft(analyst, triage, 1000.0)
    client = client_for(analyst)
    client.post(reverse("evaluations:publish", args=[triage.slug]), {"note": "Same rules"})
    passed = drive_report(EvaluationReport.objects.get())
    assert passed.state == "passed" and passed.published_version is not None
    # A bad draft (everything above 10 to an adjuster: "Small" fails, 2 of 3 fields, 66.67 %) padded with twenty
    # easy cases: 22 of 23 fields (95.65 %) over all cases, above the bar.
    draft = set_draft(analyst, triage, 10.0)
    pad_with_easy_cases(analyst, suite, 20)
    client.post(reverse("evaluations:publish", args=[triage.slug]), {"note": "Stricter"})
    report = drive_report(EvaluationReport.objects.order_by("-pk").first())
    assert report.criteria["baseline"]["cases"] == sorted(
        suite.cases.filter(name__in=["Small", "Large"]).values_list("pk", flat=True)
    )
    outcomes = {o["key"]: o for o in report.outcomes}
    assert outcomes["accuracy"]["passed"] and outcomes["accuracy"]["actual"] == "95.65 % (22 of 23)"
    assert outcomes["accuracy"]["scope"] == "all cases"
    established = outcomes["established:accuracy"]
    assert not established["passed"] and established["actual"] == "66.67 % (2 of 3)"
    assert established["scope"] == "the suite's established cases"
    assert report.state == "failed" and report.publish_outcome == "Not published: the suite did not pass."
    draft.refresh_from_db()
    assert not draft.is_published
    assert report.totals["established"]["cases"] == 2
    assert f"report {passed.pk}" in report.totals["established"]["source"]
    page = client.get(reverse("evaluations:report", args=[triage.slug, report.pk])).content.decode()
    assert "Not met over the suite&#x27;s established cases." in page
    assert "over all 22 cases, and over the suite's 2 established cases" in page
    # The builder's plain publish names the set that failed.
    refused = client.post(reverse("workflows:publish", args=[triage.slug]), {"note": "x"}, follow=True)
    assert "over the suite&#x27;s established cases" in refused.content.decode()
    # A good draft with the same padding passes both ways.
    set_draft(analyst, triage, 1000.0)
    client.post(reverse("evaluations:publish", args=[triage.slug]), {"note": "Back"})
    good = drive_report(EvaluationReport.objects.order_by("-pk").first())
    assert good.state == "passed", good.outcomes
    assert {o["scope"] for o in good.outcomes} == {"all cases", "the suite's established cases"}


def test_without_a_passing_report_the_established_cases_are_those_an_admin_last_saw(
    analyst, admin_user_role, triage, suite
):
    # Version 1 went out before the suite; the admin's save of the settings establishes "Small" and "Large".
    evaluation_suite_save(actor=admin_user_role, workflow=triage, step_key="decide", min_accuracy="90")
    pad_with_easy_cases(analyst, suite, 20)
    set_draft(analyst, triage, 10.0)
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    report = drive_report(EvaluationReport.objects.get())
    assert report.state == "failed"
    failed = [o["key"] for o in report.outcomes if not o["passed"]]
    assert failed == ["established:accuracy"] and "an admin last saved" in report.totals["established"]["source"]
    # A suite no admin has saved and no report let through has no established cases: all cases only.
    suite.admin_reviewed_at = None
    suite.save(update_fields=["admin_reviewed_at"])
    client_for(analyst).post(reverse("evaluations:run", args=[triage.slug]))
    pooled = drive_report(EvaluationReport.objects.order_by("-pk").first())
    assert "baseline" not in pooled.criteria and pooled.state == "passed"


def test_a_test_run_cannot_become_a_case(analyst, triage, suite):
    from apps.runs.draft_tests import run_test_start

    set_draft(analyst, triage, 10.0)
    run = drive(run_test_start(actor=analyst, workflow=triage, inputs={"amount": 40.0}))
    assert run.mode == "test" and run.status == "succeeded"
    suite_url = reverse("evaluations:suite", args=[triage.slug])
    assert f'<option value="{run.pk}">' not in client_for(analyst).get(suite_url).content.decode()
    response = client_for(analyst).post(
        reverse("evaluations:case-from-run", args=[triage.slug]), {"run": run.pk}, follow=True
    )
    text = response.content.decode()
    assert f"Run {run.pk} is not a live run (test of a draft): only a live run&#x27;s output" in text
    assert not EvaluationCase.objects.filter(source="recorded_run").exists()
