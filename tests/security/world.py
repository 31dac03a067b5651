"""Objects the security tests' worlds are made of, made through the real services."""

from __future__ import annotations

from apps.runs.services import run_start


def parked_approval(analyst, team, name="Matrix approval"):
    """An item in the team's queue: a run of a one-step approval workflow, parked."""
    from apps.approvals.models import ApprovalRequest
    from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
    from tests.support.engine import drive

    workflow = workflow_create(actor=analyst, name=name, team=team)
    graph = {"steps": [{"key": "ok", "type": "human.approval", "config": {"queue": team.group.name}}]}
    schema = {"type": "object", "properties": {}}
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={})
    drive(run)
    return ApprovalRequest.objects.get(run=run)
