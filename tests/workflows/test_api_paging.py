"""L6 for the workflow API's lists that were answered whole: a workflow's versions and its draft's pinned test
data are paged like every list, walk every row once, cap the limit, and show no other workflow's rows."""

from __future__ import annotations

import copy

import pytest
from rest_framework.test import APIClient

from apps.accounts.services import team_create, user_create
from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH, CLAIMS_TRIAGE_INPUT_SCHEMA
from apps.workflows.models import WorkflowVersion
from apps.workflows.services import (
    pinned_output_set,
    workflow_create,
    workflow_version_create,
    workflow_version_publish,
)
from tests.support.paging import assert_paging_refused, walk

pytestmark = pytest.mark.django_db


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def billing_workflow(db):
    """Another team's workflow, with versions and pins of its own."""
    bill = user_create(username="bill", password="x-Unused-9", roles=["analyst"])
    workflow = workflow_create(actor=bill, name="Billing", team=team_create(name="Billing", members=[bill]))
    version = workflow_version_create(
        actor=bill, workflow=workflow, graph=CLAIMS_TRIAGE_GRAPH, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
    )
    workflow_version_publish(actor=bill, version=version)
    pinned_output_set(actor=bill, workflow=workflow, step_key="extract", output={"theirs": True})
    return workflow


def test_a_workflows_versions_are_paged_newest_first(analyst, reviewer, claims_workflow, billing_workflow):
    for n in range(4):
        graph = copy.deepcopy(CLAIMS_TRIAGE_GRAPH)
        graph["steps"][0]["config"]["prompt"] += f" (change {n})"
        version = workflow_version_create(
            actor=analyst, workflow=claims_workflow, graph=graph, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
        )
        workflow_version_publish(actor=analyst, version=version, note=f"change {n}")
    client = _client(reviewer)
    url = f"/api/workflows/{claims_workflow.slug}/versions/"

    assert walk(client, url, limit=2, key="number") == [5, 4, 3, 2, 1]
    checksums = walk(client, url, limit=2, key="checksum")  # each version's own: none of the other workflow's
    assert set(checksums) == set(
        WorkflowVersion.objects.filter(workflow=claims_workflow).values_list("checksum", flat=True)
    )
    assert_paging_refused(client, url)
    assert client.get(f"/api/workflows/{billing_workflow.slug}/versions/?limit=2").status_code == 404


def test_the_drafts_pinned_outputs_are_paged_by_step_key(analyst, reviewer, claims_workflow, billing_workflow):
    keys = ["e", "a", "d", "b", "c"]
    for key in keys:
        pinned_output_set(actor=analyst, workflow=claims_workflow, step_key=key, output={"step": key})
    client = _client(analyst)
    url = f"/api/workflows/{claims_workflow.slug}/draft/pinned/"

    assert walk(client, url, limit=2, key="step_key") == sorted(keys)
    assert "extract" not in walk(client, url, limit=100, key="step_key")  # the other workflow's pin
    assert_paging_refused(client, url)
    # Viewers may not read test data (403), another team does not see the workflow (404): on any page.
    assert _client(reviewer).get(f"{url}?limit=2").status_code == 403
    assert client.get(f"/api/workflows/{billing_workflow.slug}/draft/pinned/?limit=2").status_code == 404
