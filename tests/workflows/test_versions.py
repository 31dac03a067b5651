"""Publishing: every problem reported at once; published versions frozen in the database."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, transaction

from apps.audit.models import AuditEvent
from apps.core.exceptions import ApplicationError, Conflict
from apps.workflows.demo import CLAIMS_TRIAGE_INPUT_SCHEMA
from apps.workflows.models import WorkflowVersion
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish


@pytest.fixture
def workflow(analyst):
    return workflow_create(actor=analyst, name="Invoice review")


def test_publish_lists_every_problem_naming_its_step(analyst, workflow):
    graph = {
        "steps": [
            {"key": "extract", "type": "llm.generate", "config": {"prompt": "{{ unclosed", "output": "json"}},
            {"key": "extract", "type": "data.transform", "config": {"fields": {"route": "1 +"}}},
            {"key": "ship", "type": "no.such.step", "config": {}},
        ]
    }
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema={"type": "object"})
    with pytest.raises(ApplicationError) as refusal:
        workflow_version_publish(actor=analyst, version=version)
    problems = refusal.value.extra["problems"]
    assert any(p.startswith('step "extract": prompt: the template does not parse') for p in problems)
    assert 'step "extract": json_schema: required when output is json' in problems
    assert 'step "extract": key is used by an earlier step' in problems
    assert any(p.startswith('step "extract": fields.route: the expression does not parse') for p in problems)
    assert 'step "ship": unknown step type "no.such.step"' in problems
    version.refresh_from_db()
    assert version.state == WorkflowVersion.State.DRAFT


def test_published_version_is_immutable(claims_workflow, analyst):
    version = claims_workflow.versions.get()
    assert version.is_published and len(version.checksum) == 64
    with pytest.raises(Conflict):
        workflow_version_publish(actor=analyst, version=version)
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
        WorkflowVersion.objects.filter(pk=version.pk).update(graph={"steps": []})
    with pytest.raises(DatabaseError, match="immutable"), transaction.atomic():
        WorkflowVersion.objects.filter(pk=version.pk).delete()
    assert AuditEvent.objects.filter(verb="workflow.published", target_id=str(version.pk)).exists()


def test_new_versions_are_numbered_and_drafts_stay_editable(claims_workflow, analyst):
    draft = workflow_version_create(
        actor=analyst,
        workflow=claims_workflow,
        graph={"steps": []},
        input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA,
    )
    assert draft.number == 2
    WorkflowVersion.objects.filter(pk=draft.pk).update(graph={"steps": [{"key": "a"}]})
    assert claims_workflow.history.count() == 1


def test_a_thousand_sequential_steps_validate_and_a_long_cycle_is_named():
    """Graph checks walk iteratively: a 1,000-step workflow publishes (it used to exhaust Python's stack)."""
    from apps.workflows.graph import graph_errors

    steps = [{"key": f"s{i}", "type": "data.transform", "config": {"fields": {"n": "1"}}} for i in range(1000)]
    edges = [{"from": f"s{i}", "to": f"s{i + 1}"} for i in range(999)]
    assert graph_errors({"steps": steps, "edges": edges}) == []
    looped = graph_errors({"steps": steps, "edges": [*edges, {"from": "s999", "to": "s0"}]})
    assert len(looped) == 1 and "s0" in looped[0] and "s999" in looped[0]


def test_a_sub_workflow_the_publisher_may_not_run_is_refused(analyst, outsider, team):
    """A child run starts with its parent's initiator, who then sees it: publishing must not reach a workflow
    the publisher could not start herself (one of another team reads as missing, not as forbidden)."""
    from apps.accounts.services import team_create, user_create

    other_analyst = user_create(username="olga", password="correct-horse-battery-staple", roles=["analyst"])
    other_team = team_create(name="Payroll", members=[other_analyst])
    graph_child = {"steps": [{"key": "a", "type": "data.transform", "config": {"fields": {"x": "1"}}}]}
    payroll = workflow_create(actor=other_analyst, name="Payroll run", team=other_team)
    workflow_version_publish(
        actor=other_analyst,
        version=workflow_version_create(
            actor=other_analyst, workflow=payroll, graph=graph_child, input_schema={"type": "object"}
        ),
    )
    mine = workflow_create(actor=analyst, name="Mine", team=team)
    workflow_version_publish(
        actor=analyst,
        version=workflow_version_create(
            actor=analyst, workflow=mine, graph=graph_child, input_schema={"type": "object"}
        ),
    )
    parent = workflow_create(actor=analyst, name="Parent", team=team)
    for slug, refused in ((payroll.slug, True), (mine.slug, False)):
        for step_type in ("flow.subworkflow", "flow.foreach"):
            config = {"workflow": slug} if step_type == "flow.subworkflow" else {"workflow": slug, "items": "[1, 2]"}
            graph = {"steps": [{"key": "call", "type": step_type, "config": config}]}
            version = workflow_version_create(
                actor=analyst, workflow=parent, graph=graph, input_schema={"type": "object"}
            )
            if refused:
                with pytest.raises(ApplicationError) as refusal:
                    workflow_version_publish(actor=analyst, version=version)
                assert f'step "call": there is no published workflow "{slug}"' in refusal.value.extra["problems"]
            else:
                workflow_version_publish(actor=analyst, version=version)
