"""Describe it, get a draft (apps/workflows/drafting.py): a description becomes a checked proposal through the
development inference server's scripted answers (devserver/demo_script.json), a first answer with problems is
repaired once, an answer still wrong after the repair creates nothing, and accepting or discarding is the
author's alone."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.inference.models import InferenceCall
from apps.workflows.drafting import (
    REPAIR_HEADING,
    DraftRefused,
    answer_check,
    draft_proposal_accept,
    draft_proposal_discard,
    draft_proposal_get_for_user,
    draft_reply_schema,
    step_library_text,
    workflow_draft_propose,
)
from apps.workflows.exchange import document_schema
from apps.workflows.models import DraftProposal, Workflow, WorkflowVersion
from apps.workflows.services import workflow_version_publish

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

# The demo's description: devserver/demo_script.json answers any description about expenses with a valid
# expense-approval workflow (extract, if, approval, two transforms) on the team's queue "team:claims".
EXPENSES = (
    "Employees send expense claims. Read the amount and category; claims up to 100 are approved at once, larger "
    "ones go to the team for approval, and approved claims are recorded."
)
# The script's first answer to a refund request has an expression that does not parse and an edge to a step
# that does not exist; its answer to the repair prompt is valid.
REFUNDS = "Customers send a refund request by email. Read the order and amount; large refunds need a person."
# Invalid however often it is asked: a generate step without a prompt, a condition on a step that does not exist.
WEATHER = "Every morning, predict the weather for a city and decide whether it will rain."


def test_a_description_becomes_a_checked_proposal_with_every_step_explained(analyst, team):
    calls_before = InferenceCall.objects.count()

    proposal = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)

    document = proposal.document
    keys = [step["key"] for step in document["spec"]["graph"]["steps"]]
    assert keys == ["extract", "small_amount", "auto_approve", "approval", "record"]
    assert set(proposal.explanations) == set(keys)
    assert proposal.summary.startswith("Reads each expense claim")
    assert proposal.problems_repaired == []
    assert proposal.state == DraftProposal.State.PROPOSED and proposal.author == analyst and proposal.team == team
    assert "version" not in document and "requires" not in document
    # One model call, stored as an InferenceCall without a run and named in the proposal's provenance.
    calls = list(InferenceCall.objects.filter(pk__gt=0).order_by("pk"))[calls_before:]
    assert [(call.run_id, call.step_key, call.purpose, call.status) for call in calls] == [
        (None, "draft", "draft", "ok")
    ]
    assert [call["id"] for call in proposal.calls] == [calls[0].pk]
    assert calls[0].parameters["constrained"] == "json_schema"
    # Nothing but the proposal exists yet: no workflow from the dry run is left behind.
    assert not Workflow.objects.exists()
    event = AuditEvent.objects.get(verb="draft_proposal.created").data_dict
    assert event["steps"] == 5 and event["repaired"] is False and event["team"] == team.slug
    assert event["calls"] == [calls[0].pk]


def test_accepting_creates_the_workflow_whose_draft_publishes(analyst, team):
    proposal = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)

    workflow = draft_proposal_accept(actor=analyst, proposal=proposal, name="Expense approval")

    assert workflow.slug == "expense-approval" and workflow.team == team and workflow.owner == analyst
    draft = workflow.versions.get(state=WorkflowVersion.State.DRAFT)
    assert draft.graph == proposal.document["spec"]["graph"]
    published = workflow_version_publish(actor=analyst, version=draft, note="Drafted from a description")
    assert published.is_published
    proposal.refresh_from_db()
    assert proposal.state == DraftProposal.State.ACCEPTED and proposal.workflow == workflow
    assert proposal.decided_at is not None
    assert AuditEvent.objects.get(verb="draft_proposal.accepted").data_dict["workflow"] == "expense-approval"
    assert AuditEvent.objects.get(verb="workflow.imported").data_dict["workflow"] == "expense-approval"
    # Accepted once: a second accept is refused and creates nothing.
    with pytest.raises(Conflict):
        draft_proposal_accept(actor=analyst, proposal=proposal)
    assert Workflow.objects.count() == 1


def test_a_taken_name_gets_a_free_address(analyst, team):
    first = draft_proposal_accept(
        actor=analyst, proposal=workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    )
    second = draft_proposal_accept(
        actor=analyst, proposal=workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    )
    assert (first.slug, second.slug) == ("expense-approval", "expense-approval-2")


def test_a_first_answer_with_problems_is_repaired_once(analyst, team):
    proposal = workflow_draft_propose(actor=analyst, description=REFUNDS, team=team)

    assert [step["key"] for step in proposal.document["spec"]["graph"]["steps"]] == ["extract", "large", "approval"]
    repaired = " ".join(proposal.problems_repaired)
    assert "does not parse" in repaired  # the condition "steps.extract.data.amount >"
    assert 'there is no step "notify"' in repaired
    assert [call["purpose"] for call in proposal.calls] == ["draft", "draft-repair"]
    # The repair call showed the model its answer and every problem.
    repair = InferenceCall.objects.get(pk=proposal.calls[1]["id"])
    sent = json.dumps(repair.request)
    assert REPAIR_HEADING in sent and "there is no step" in sent and "refund-requests" in sent


def test_an_answer_still_wrong_after_the_repair_creates_nothing(analyst, team):
    calls_before = InferenceCall.objects.count()

    with pytest.raises(DraftRefused) as refused:
        workflow_draft_propose(actor=analyst, description=WEATHER, team=team)

    text = " ".join(refused.value.extra["problems"])
    assert '"prompt" is required' in text
    assert refused.value.fields["description"]
    assert "weather-oracle" in refused.value.answer
    assert not DraftProposal.objects.exists() and not Workflow.objects.exists()
    assert not AuditEvent.objects.filter(verb__startswith="draft_proposal.").exists()
    # The two calls were made and cost something: their records are kept for the endpoint's usage.
    assert InferenceCall.objects.count() == calls_before + 2


@pytest.mark.parametrize(
    ("description", "message"),
    [("", "At least 20 characters"), ("Approve claims", "At least 20 characters"), ("x" * 4001, "At most 4000")],
)
def test_descriptions_too_short_or_too_long_are_refused_before_any_call(analyst, description, message):
    calls_before = InferenceCall.objects.count()
    with pytest.raises(ValidationFailed) as refused:
        workflow_draft_propose(actor=analyst, description=description)
    assert message in refused.value.fields["description"][0]
    assert InferenceCall.objects.count() == calls_before


def test_only_those_who_create_workflows_may_draft(reviewer, manager, outsider, admin_user_role):
    for person in (reviewer, manager, outsider, admin_user_role):
        with pytest.raises(Forbidden):
            workflow_draft_propose(actor=person, description=EXPENSES)
    assert not DraftProposal.objects.exists()


def test_a_team_she_is_not_on_and_an_unknown_model_are_field_errors(analyst, outsider):
    from apps.accounts.services import team_create

    other = team_create(name="Elsewhere", members=[outsider])
    with pytest.raises(ValidationFailed) as refused:
        workflow_draft_propose(actor=analyst, description=EXPENSES, team=other)
    assert "team" in refused.value.fields
    with pytest.raises(ValidationFailed) as refused:
        workflow_draft_propose(actor=analyst, description=EXPENSES, endpoint="no-such-model")
    assert "no-such-model" in refused.value.fields["model"][0]


def test_a_queue_she_may_not_use_is_a_problem_of_the_answer(analyst):
    """Without the Claims team (and its queue team:claims) the demo answer names a queue that does not exist here:
    the publish dry run reports it, naming the step, and nothing is created."""
    with pytest.raises(DraftRefused) as refused:
        workflow_draft_propose(actor=analyst, description=EXPENSES)
    assert any('approval queue "team:claims" does not exist' in problem for problem in refused.value.extra["problems"])
    assert not Workflow.objects.exists()


def test_discard_keeps_the_proposal_and_only_the_author_decides(analyst, team, reviewer, admin_user_role):
    proposal = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)

    for person in (reviewer, admin_user_role):
        with pytest.raises(Forbidden):
            draft_proposal_discard(actor=person, proposal=proposal)
    with pytest.raises(Forbidden):
        draft_proposal_accept(actor=admin_user_role, proposal=proposal)

    draft_proposal_discard(actor=analyst, proposal=proposal)
    proposal.refresh_from_db()
    assert proposal.state == DraftProposal.State.DISCARDED
    assert AuditEvent.objects.filter(verb="draft_proposal.discarded").count() == 1
    with pytest.raises(Conflict):
        draft_proposal_accept(actor=analyst, proposal=proposal)
    assert not Workflow.objects.exists()


def test_only_the_author_and_admins_see_a_proposal(analyst, team, reviewer, manager, outsider, admin_user_role):
    from django.http import Http404

    proposal = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    assert draft_proposal_get_for_user(analyst, pk=proposal.pk) == proposal
    assert draft_proposal_get_for_user(admin_user_role, pk=proposal.pk) == proposal
    for person in (reviewer, manager, outsider):
        with pytest.raises(Http404):
            draft_proposal_get_for_user(person, pk=proposal.pk)


# --- the answer's checks, without a model ---------------------------------------------------------------


def test_answers_that_are_not_json_or_not_a_document_are_problems(analyst):
    assert "not valid JSON" in answer_check(actor=analyst, text='{"document": ', team=None).problems[0]["message"]
    checked = answer_check(actor=analyst, text='{"summary": "no document"}', team=None)
    assert 'a "document" object' in checked.problems[0]["message"]


def test_an_unknown_step_type_is_reported_at_its_path(analyst):
    answer = {
        "document": {
            "apiVersion": "aios/v1",
            "kind": "Workflow",
            "metadata": {"slug": "x", "name": "X"},
            "spec": {
                "input_schema": {"type": "object", "properties": {}},
                "graph": {"steps": [{"key": "a", "type": "llm.telepathy", "config": {}}]},
            },
        },
        "explanations": {"a": "Reads minds."},
        "summary": "",
    }
    checked = answer_check(actor=analyst, text=json.dumps(answer), team=None)
    assert checked.problems[0]["path"] == "document.spec.graph.steps.0.type"
    assert "llm.telepathy" in checked.problems[0]["message"]


def test_the_constraint_schema_is_valid_and_the_library_names_every_step_type():
    Draft202012Validator.check_schema(draft_reply_schema())
    text = step_library_text()
    for slug in document_schema()["$defs"]["step"]["properties"]["type"]["enum"]:
        assert f"- {slug} (" in text
    # The constraint leaves out what constrained decoders cannot take.
    dumped = json.dumps(draft_reply_schema())
    assert '"if"' not in dumped and "$ref" not in dumped


def test_accepting_after_leaving_the_team_is_refused(analyst, team):
    proposal = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    team.group.user_set.remove(analyst)
    with pytest.raises(Conflict, match="no longer on the team"):
        draft_proposal_accept(actor=analyst, proposal=proposal)
    proposal.refresh_from_db()
    assert proposal.state == DraftProposal.State.PROPOSED and not Workflow.objects.exists()
