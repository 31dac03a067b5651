"""List endpoints pin their query counts: more workflows must not mean more queries."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.workflows.demo import CLAIMS_TRIAGE_GRAPH, CLAIMS_TRIAGE_INPUT_SCHEMA
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish


def _published(analyst, team, name):
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(
        actor=analyst, workflow=workflow, graph=CLAIMS_TRIAGE_GRAPH, input_schema=CLAIMS_TRIAGE_INPUT_SCHEMA
    )
    workflow_version_publish(actor=analyst, version=version)


def test_workflow_list_query_count_does_not_grow_with_rows(analyst, team):
    client = APIClient()
    client.force_authenticate(analyst)
    _published(analyst, team, "First")
    client.get("/api/workflows/")  # warm the per-process caches (content types, permissions)
    with CaptureQueriesContext(connection) as one:
        assert client.get("/api/workflows/").status_code == 200
    for index in range(5):
        _published(analyst, team, f"More {index}")
    with CaptureQueriesContext(connection) as six:
        body = client.get("/api/workflows/").json()
    assert body["count"] == 6 and all(w["published_version"]["number"] == 1 for w in body["results"])
    assert len(six) == len(one), [q["sql"][:120] for q in six.captured_queries]
