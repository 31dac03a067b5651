"""The world the security tests look at: the personas, the demo workflow, one of its runs, an approval item,
a model endpoint, and what each area's rule table (routes_<area>.py) creates for its routes; `world["args"]` maps
route names to the URL arguments that reach those objects."""

from __future__ import annotations

import pytest

from apps.runs.services import run_start
from tests.security.inventory import AREAS
from tests.security.world import parked_approval


@pytest.fixture
def world(analyst, reviewer, manager, auditor, outsider, claims_workflow, sample_claim):
    from apps.inference.models import ModelEndpoint

    run, _ = run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})
    endpoint = ModelEndpoint.objects.create(name="matrix", url="http://127.0.0.1:9")
    item = parked_approval(analyst, claims_workflow.team)
    world = {
        "personas": {
            "analyst": analyst,
            "reviewer": reviewer,
            "manager": manager,
            "auditor": auditor,
            "outsider": outsider,
        },
        "workflow": claims_workflow,
        "run": run,
        "args": {
            "workflows:detail": [claims_workflow.slug],
            "workflows:settings": [claims_workflow.slug],
            "workflows:editor": [claims_workflow.slug],
            "workflows:editor-inputs": [claims_workflow.slug],
            "workflows:check-expression": [claims_workflow.slug, "extract"],
            "workflows:versions": [claims_workflow.slug],
            "workflows:export": [claims_workflow.slug],
            "workflows:import": [claims_workflow.slug],
            "workflows:compare": [claims_workflow.slug],
            "runs:detail": [run.pk],
            "runs:create": [claims_workflow.slug],
            "api:workflow-detail": [claims_workflow.slug],
            "api:workflow-export": [claims_workflow.slug],
            "api:workflow-draft": [claims_workflow.slug],
            "api:workflow-version-list": [claims_workflow.slug],
            "api:workflow-version-detail": [claims_workflow.slug, 1],
            "api:workflow-version-diff": [claims_workflow.slug],
            "api:run-detail": [run.pk],
            "api:run-calls": [run.pk],
            "inference:endpoint-edit": [endpoint.pk],
            "approvals:item": [item.pk],
            "approvals:item-page": [item.pk, 1],
            "api:approval-detail": [item.pk],
            "api:approval-queue-detail": [item.queue.key],
            "approvals:queue": [item.queue.key],
            "api:approval-queue-members": [item.queue.key],
            "api:workflow-corrections": [claims_workflow.slug],
            "approvals:workflow-accuracy": [claims_workflow.slug],
        },
    }
    for area in AREAS:
        world["args"].update(area.world_args(world))
    return world
