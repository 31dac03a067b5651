"""Connections by persona: who creates, sees, uses and manages them; what the audit trail and the history keep
(never a secret); deletion refused while a published version names the connection; the run-time rule that
decides for the run's workflow, not a person."""

from __future__ import annotations

import json

import pytest
from django.http import Http404
from guardian.shortcuts import assign_perm, remove_perm

from apps.audit.models import AuditEvent
from apps.connectors.models import Connection
from apps.connectors.runtime import ConnectionUnavailable, connection_for_step
from apps.connectors.selectors import (
    connection_choices_for,
    connection_get_for_user,
    connection_list_for_user,
    connection_use_problem,
    connections_usable_by,
)
from apps.connectors.services import (
    connection_create,
    connection_delete,
    connection_set_enabled,
    connection_update,
)
from apps.core.exceptions import ApplicationError, Conflict, Forbidden, ValidationFailed
from tests.connectors.helpers import finance_team, make_connection

pytestmark = pytest.mark.django_db


@pytest.fixture
def other_team(outsider):
    """A team Ana is not on; Otto the outsider is its only member."""
    return finance_team(outsider)


def _events(connection: Connection) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(target_type="connectors.connection", target_id=str(connection.pk)))


def test_admins_create_connections_and_the_team_may_use_them(admin_user_role, analyst, reviewer, manager, team):
    connection = connection_create(
        actor=admin_user_role,
        name="erp",
        label="ERP",
        kind="http",
        team=team,
        config={"base_url": "https://erp.example.com/api/", "auth": "bearer"},
        secrets={"token": "tok-erp-0001"},
    )
    assert connection.secrets == {"token": "tok-erp-0001"}
    assert list(connections_usable_by(analyst)) == [connection]
    assert list(connections_usable_by(reviewer)) == [connection]  # on the team
    assert list(connections_usable_by(manager)) == []
    assert connection_use_problem(analyst, "erp", kind="http") is None
    assert connection_use_problem(manager, "erp", kind="http") == 'the connection "erp" is not one you may use'
    assert connection_use_problem(analyst, "nope", kind="http") == 'there is no connection "nope"'
    assert "not SQL" in (connection_use_problem(analyst, "erp", kind="sql") or "").replace("SQL database", "SQL")
    [created] = _events(connection)
    assert created.verb == "connection.created" and created.actor_label == "adam"
    assert json.loads(created.data)["secrets_set"] == ["token"] and "tok-erp" not in created.data


@pytest.mark.parametrize("persona", ["analyst", "reviewer", "manager", "outsider"])
def test_only_admins_create(request, persona, team):
    with pytest.raises(Forbidden):
        connection_create(
            actor=request.getfixturevalue(persona),
            name="erp",
            label="ERP",
            kind="http",
            team=team,
            config={"base_url": "https://erp.example.com/"},
        )
    assert not Connection.objects.exists()


def test_bad_settings_and_missing_secrets_are_refused_per_field(admin_user_role, team):
    with pytest.raises(ValidationFailed) as refused:
        connection_create(
            actor=admin_user_role,
            name="Bad Name",
            label="",
            kind="http",
            team=team,
            config={},
        )
    assert set(refused.value.fields) == {"name", "label"}
    with pytest.raises(ValidationFailed) as refused:
        connection_create(
            actor=admin_user_role,
            name="erp",
            label="ERP",
            kind="http",
            team=team,
            config={"base_url": "ftp://erp", "headers": {"Authorization": "Bearer x"}},
        )
    assert set(refused.value.fields) == {"base_url", "headers"}
    with pytest.raises(ValidationFailed) as refused:
        connection_create(
            actor=admin_user_role,
            name="erp",
            label="ERP",
            kind="http",
            team=team,
            config={"base_url": "https://erp.example.com/", "auth": "basic", "username": "svc"},
        )
    assert refused.value.fields == {"secrets.password": ["Password is needed for these settings."]}
    with pytest.raises(ValidationFailed) as refused:
        connection_create(
            actor=admin_user_role,
            name="erp",
            label="ERP",
            kind="http",
            team=team,
            config={"base_url": "https://erp.example.com/", "auth": "basic"},
            secrets={"password": "pw-1234"},
        )
    assert "username" in refused.value.fields
    assert not Connection.objects.exists()


def test_visibility_by_persona(admin_user_role, analyst, reviewer, manager, outsider, team, other_team):
    ours = make_connection(team, name="erp")
    theirs = make_connection(other_team, name="ledger", kind="sql")
    assert set(connection_list_for_user(admin_user_role)) == {ours, theirs}
    assert list(connection_list_for_user(analyst)) == [ours]
    assert list(connection_list_for_user(reviewer)) == [ours]
    assert list(connection_list_for_user(manager)) == []
    assert list(connection_list_for_user(outsider)) == [theirs]  # Otto is Finance's only member here
    assert list(connection_list_for_user(admin_user_role, team=team.slug)) == [ours]
    assert list(connection_list_for_user(admin_user_role, kind="sql")) == [theirs]
    with pytest.raises(Http404):
        connection_get_for_user(analyst, "ledger")
    with pytest.raises(Http404):
        connection_get_for_user(analyst, "does-not-exist")
    choices = connection_choices_for(analyst)
    assert choices["connection-http"] == [("", "No connection"), ("erp", "ERP (erp)")]
    assert choices["connection-sql"] == [] and choices["connection-smtp"] == []


def test_changes_are_audited_naming_secrets_never_their_values(admin_user_role, analyst, team, other_team):
    connection = make_connection(
        team,
        name="erp",
        config={"base_url": "https://erp.example.com/", "auth": "bearer"},
        secrets={"token": "tok-first-0001"},
    )
    # A blank secret keeps the stored one; a label change alone is audited as such.
    connection_update(actor=admin_user_role, connection=connection, label="ERP (prod)", secrets={"token": ""})
    assert Connection.objects.get(pk=connection.pk).secrets == {"token": "tok-first-0001"}
    connection_update(
        actor=admin_user_role,
        connection=connection,
        config={"base_url": "https://erp.example.com/", "auth": "bearer", "timeout_seconds": 5},
        secrets={"token": "tok-second-0002"},
    )
    connection_update(actor=admin_user_role, connection=connection, team=other_team)
    connection_set_enabled(actor=admin_user_role, connection=connection, enabled=False)
    connection_set_enabled(actor=admin_user_role, connection=connection, enabled=False)  # no change, no event
    events = _events(connection)
    assert [event.verb for event in events] == [
        "connection.created",
        "connection.changed",
        "connection.changed",
        "connection.changed",
        "connection.disabled",
    ]
    assert json.loads(events[1].data) == {"fields": {"label": "ERP (prod)"}}
    assert json.loads(events[2].data) == {"fields": {"config": {"timeout_seconds": 5.0}}, "secrets_replaced": ["token"]}
    assert json.loads(events[3].data) == {"fields": {"team": other_team.slug}}
    assert all("tok-" not in event.data for event in events)
    # The team's use permission moved with the connection.
    assert list(connections_usable_by(analyst)) == []
    history = list(connection.history.all())
    assert len(history) >= 4 and not hasattr(history[0], "secrets_encrypted")


def test_manage_permission_lets_a_non_admin_manage_one_connection(analyst, reviewer, team):
    connection = make_connection(team, name="erp")
    with pytest.raises(Forbidden):
        connection_update(actor=analyst, connection=connection, label="Mine now")
    assign_perm("connectors.manage_connection", analyst, connection)
    connection_update(actor=analyst, connection=connection, label="Ana's ERP")
    with pytest.raises(Forbidden):
        connection_set_enabled(actor=reviewer, connection=connection, enabled=False)
    assert Connection.objects.get(pk=connection.pk).label == "Ana's ERP"


def _publish_using(analyst, team, connection_name: str, *, name: str = "Post invoices"):
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    workflow = workflow_create(actor=analyst, name=name, team=team)
    graph = {
        "steps": [
            {
                "key": "post",
                "type": "http.request",
                "config": {"connection": connection_name, "url": "/invoices", "body": "{}"},
            }
        ]
    }
    version = workflow_version_create(
        actor=analyst, workflow=workflow, graph=graph, input_schema={"type": "object", "properties": {}}
    )
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def test_publishing_checks_the_publisher_may_use_the_connection(analyst, team, other_team):
    make_connection(other_team, name="ledger")
    with pytest.raises(ApplicationError) as refused:
        _publish_using(analyst, team, "ledger")
    assert refused.value.extra["problems"] == ['step "post": the connection "ledger" is not one you may use']
    make_connection(team, name="erp")
    workflow = _publish_using(analyst, team, "erp", name="Post invoices again")
    assert workflow.versions.filter(state="published").exists()


def test_deleting_a_connection_a_published_version_names_is_refused(admin_user_role, analyst, team):
    connection = make_connection(team, name="erp")
    spare = make_connection(team, name="spare")
    _publish_using(analyst, team, "erp")
    with pytest.raises(Conflict) as refused:
        connection_delete(actor=admin_user_role, connection=connection)
    assert refused.value.extra == {"workflows": ["Post invoices"]}
    assert "Post invoices" in refused.value.message
    assert Connection.objects.filter(name="erp").exists()
    spare_id = spare.pk
    connection_delete(actor=admin_user_role, connection=spare)
    assert not Connection.objects.filter(name="spare").exists()
    assert AuditEvent.objects.filter(verb="connection.deleted", target_id=str(spare_id)).exists()


def test_deleting_a_connection_only_an_agents_tool_names_is_refused(admin_user_role, analyst, team):
    """An agent's tool runs a step of its own, which names the connection inside the agent's config: deleting the
    connection would make every tool call of the published agent fail with "There is no connection"."""
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

    connection = make_connection(team, name="erp")
    tool = {
        "name": "post_note",
        "description": "Post a note on the ticket.",
        "step": {"type": "http.request", "config": {"method": "POST", "connection": "erp", "url": "/notes"}},
        "parameters": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]},
    }
    agent = {"key": "agent", "type": "llm.agent", "config": {"prompt": "{{ input.text }}", "tools": [tool]}}
    workflow = workflow_create(actor=analyst, name="Support agent", team=team)
    version = workflow_version_create(
        actor=analyst,
        workflow=workflow,
        graph={"steps": [agent]},
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    )
    workflow_version_publish(actor=analyst, version=version)
    with pytest.raises(Conflict) as refused:
        connection_delete(actor=admin_user_role, connection=connection)
    assert refused.value.extra == {"workflows": ["Support agent"]}
    assert Connection.objects.filter(name="erp").exists()


def test_run_time_use_is_decided_for_the_workflow(admin_user_role, analyst, team, other_team):
    from apps.workflows.services import workflow_create

    connection = make_connection(team, name="erp")
    team_workflow = _publish_using(analyst, team, "erp")
    resolved = connection_for_step("erp", kind="http", workflow_id=team_workflow.pk)
    assert resolved.config["base_url"] == "https://erp.example.com/api/"
    assert "secrets" not in repr(resolved)

    for name, kind, problem in [
        ("nope", "http", 'There is no connection "nope".'),
        ("erp", "sql", 'The connection "erp" is a http connection, not sql.'),
    ]:
        with pytest.raises(ConnectionUnavailable, match=problem):
            connection_for_step(name, kind=kind, workflow_id=team_workflow.pk)
    # A right withdrawn after publishing counts at the next run.
    remove_perm("connectors.use_connection", team.group, connection)
    with pytest.raises(ConnectionUnavailable, match='This workflow may not use the connection "erp"'):
        connection_for_step("erp", kind="http", workflow_id=team_workflow.pk)
    assign_perm("connectors.use_connection", team.group, connection)
    connection_set_enabled(actor=admin_user_role, connection=connection, enabled=False)
    with pytest.raises(ConnectionUnavailable, match='The connection "erp" is disabled'):
        connection_for_step("erp", kind="http", workflow_id=team_workflow.pk)
    connection_set_enabled(actor=admin_user_role, connection=connection, enabled=True)

    # A workflow without a team: its owner decides (Ana through her team's group; an admin's workflow: always).
    solo = workflow_create(actor=analyst, name="Solo", team=None)
    assert connection_for_step("erp", kind="http", workflow_id=solo.pk).name == "erp"
    make_connection(other_team, name="ledger")
    with pytest.raises(ConnectionUnavailable):
        connection_for_step("ledger", kind="http", workflow_id=solo.pk)
    with pytest.raises(ConnectionUnavailable):
        connection_for_step("erp", kind="http", workflow_id=None)
