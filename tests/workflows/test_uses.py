"""Publishing and testing ask for the rights a run will need: the person's, and the workflow's team's. A person
in two teams cannot put one team's workflow onto the other team's connection or knowledge collection, where it
would pass publishing and fail at every run."""

from __future__ import annotations

import pytest

from apps.accounts.services import team_create
from apps.connectors.services import connection_create
from apps.core.exceptions import ApplicationError
from apps.knowledge.services import collection_create
from apps.runs.draft_tests import run_test_start
from apps.workflows.services import (
    workflow_create,
    workflow_draft_get_or_create,
    workflow_draft_save,
    workflow_version_publish,
)

pytestmark = pytest.mark.django_db


def _draft(analyst, team, steps):
    workflow = workflow_create(actor=analyst, name=f"Lookup for {team.name}", team=team)
    draft = workflow_draft_get_or_create(actor=analyst, workflow=workflow)
    draft = workflow_draft_save(
        actor=analyst,
        workflow=workflow,
        graph={"steps": steps},
        input_schema={"type": "object", "properties": {"q": {"type": "string"}}},
        expected_revision=draft.revision,
    )
    return workflow, draft


@pytest.mark.parametrize("what", ["connection", "collection"])
def test_a_person_in_two_teams_cannot_publish_one_team_s_workflow_onto_the_other_s(
    what, analyst, team, admin_user_role
):
    other = team_create(name="Finance", members=[analyst])  # Ana works in both teams
    if what == "connection":
        connection_create(
            actor=admin_user_role,
            name="ledger",
            label="Ledger",
            kind="http",
            team=other,
            config={"base_url": "https://ledger.example.com/"},
        )
        step = {"key": "call", "type": "http.request", "config": {"connection": "ledger", "url": "entries"}}
    else:
        collection_create(actor=analyst, name="finance-kb", title="Finance handbook", team=other)
        step = {
            "key": "call",
            "type": "rag.retrieve",
            "config": {"collections": ["finance-kb"], "query": "{{ input.q }}"},
        }
    workflow, draft = _draft(analyst, team, [step])
    with pytest.raises(ApplicationError) as refused:
        workflow_version_publish(actor=analyst, version=draft)
    [problem] = refused.value.extra["problems"]
    assert problem.startswith('step "call": ') and ("not shared" in problem or "may not" in problem), problem
    # A test run is no way around it.
    with pytest.raises(ApplicationError) as refused:
        run_test_start(actor=analyst, workflow=workflow, inputs={"q": "VAT"}, allow_calls=["call"])
    assert refused.value.extra["problems"] == [problem]
    # In the team's own workflow the same step publishes.
    _, own_draft = _draft(analyst, other, [step])
    assert workflow_version_publish(actor=analyst, version=own_draft).state == "published"
