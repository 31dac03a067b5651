"""Fixtures of the trigger tests: small published workflows that need no model server."""

from __future__ import annotations

from typing import Any

import pytest

from apps.workflows.models import Workflow
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish


def publish(owner: Any, name: str, *, schema: dict[str, Any], fields: dict[str, str], team: Any = None) -> Workflow:
    """A published one-step workflow whose `data.transform` step computes `fields` (CEL over its input)."""
    workflow = workflow_create(actor=owner, name=name, team=team)
    graph = {"steps": [{"key": "out", "type": "data.transform", "config": {"fields": fields}}]}
    version = workflow_version_create(actor=owner, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=owner, version=version)
    return workflow


DIGEST_SCHEMA = {
    "type": "object",
    "properties": {"scheduled_at": {"type": "string"}, "scheduled_at_local": {"type": "string"}},
    "required": ["scheduled_at"],
}
TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "minLength": 3},
        "body": {"type": "string", "format": "textarea"},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["subject"],
}


@pytest.fixture
def digest_workflow(analyst: Any, team: Any) -> Workflow:
    """The weekly assistant: its input is the time it was scheduled for."""
    return publish(analyst, "Weekly digest", schema=DIGEST_SCHEMA, fields={"at": "input.scheduled_at"}, team=team)


@pytest.fixture
def ticket_workflow(analyst: Any, team: Any) -> Workflow:
    """Support intake: a subject, a body and a priority."""
    return publish(
        analyst,
        "Ticket intake",
        schema=TICKET_SCHEMA,
        fields={"title": "input.subject", "size": "size(input.subject)"},
        team=team,
    )
