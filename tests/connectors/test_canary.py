"""The canary: a connection whose secret is "canary-<uuid>", used by a published workflow's http.request against
a local HTTP server, run to completion by the engine. The secret must reach the server (in the Authorization
header, where it belongs) and nowhere else: not the workflow export, not any API response or page about the
connection, the workflow or the run, not an audit event, history row or any other database row in plain text,
not the run's step outputs or errors (the server echoes the headers back; a second run fails with a body that
echoes the secret), not the logs (captured at DEBUG)."""

from __future__ import annotations

import logging
import uuid

import pytest
from django.db import connection as db
from rest_framework.test import APIClient

from apps.runs.models import Run, StepRun
from apps.runs.services import run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.connectors.helpers import allow_loopback, make_connection
from tests.connectors.servers import ApiServer
from tests.support.engine import drive

pytestmark = pytest.mark.django_db


def _every_row_as_text() -> dict[str, list[str]]:
    """Every row of every table in the database, as JSON text, by table."""
    with db.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        tables = [row[0] for row in cursor.fetchall()]
        rows: dict[str, list[str]] = {}
        for table in tables:
            cursor.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')  # names from the catalogue
            rows[table] = [row[0] for row in cursor.fetchall()]
    return rows


def test_the_canary_is_found_only_where_the_server_received_it(settings, caplog, analyst, admin_user_role, team):
    caplog.set_level(logging.DEBUG)
    allow_loopback(settings)
    canary = f"canary-{uuid.uuid4()}"
    with ApiServer(static_tokens={canary}) as api:
        connection = make_connection(
            team,
            name="erp",
            config={"base_url": f"{api.url}/api/", "auth": "bearer", "headers": {"Accept": "application/json"}},
            secrets={"token": canary},
            actor=admin_user_role,
        )
        workflow = workflow_create(actor=analyst, name="Canary", team=team)
        graph = {
            "steps": [
                {
                    "key": "post",
                    "type": "http.request",
                    "config": {"connection": "erp", "url": "/echo-headers", "body": '{"n": "{{ input.n }}"}'},
                }
            ]
        }
        schema = {"type": "object", "properties": {"n": {"type": "string"}}}
        version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
        workflow_version_publish(actor=analyst, version=version)
        run, _ = run_start(actor=analyst, workflow=workflow, inputs={"n": "1"})
        run = drive(run)
        assert run.status == Run.Status.SUCCEEDED
        # A second workflow whose call fails with an answer that echoes the secret.
        failing = workflow_create(actor=analyst, name="Canary failing", team=team)
        failing_graph = {
            "steps": [
                {
                    "key": "post",
                    "type": "http.request",
                    "config": {"connection": "erp", "url": "/status/400", "body": "{}"},
                }
            ]
        }
        failing_version = workflow_version_create(
            actor=analyst, workflow=failing, graph=failing_graph, input_schema={"type": "object", "properties": {}}
        )
        workflow_version_publish(actor=analyst, version=failing_version)
        failed_run, _ = run_start(actor=analyst, workflow=failing, inputs={})
        failed_run = drive(failed_run)
        assert failed_run.status == Run.Status.FAILED

    # Where it belongs: the server received it, in the Authorization header of each call.
    assert [r.headers["authorization"] for r in api.requests if r.path == "/api/echo-headers"] == [f"Bearer {canary}"]
    step = StepRun.objects.get(run=run, step_key="post")
    assert step.output["body"]["headers"]["authorization"] == "Bearer [secret]"  # echoed back, redacted

    searched: dict[str, str] = {}
    admin, ana = APIClient(), APIClient()
    admin.force_login(admin_user_role)
    ana.force_login(analyst)
    for client_name, client in (("admin", admin), ("analyst", ana)):
        for url in [
            "/api/connections/",
            "/api/connections/erp/",
            "/api/workflows/",
            f"/api/workflows/{workflow.slug}/",
            f"/api/workflows/{workflow.slug}/export/",
            f"/api/workflows/{workflow.slug}/versions/1/",
            f"/api/workflows/{failing.slug}/export/",
            "/api/runs/",
            f"/api/runs/{run.pk}/",
            f"/api/runs/{failed_run.pk}/",
            "/connections/",
            "/connections/erp/",
            f"/connections/teams/{team.slug}/",
            f"/workflows/{workflow.slug}/",
            f"/workflows/{workflow.slug}/export/",
            f"/runs/{run.pk}/",
            f"/runs/{failed_run.pk}/",
        ]:
            response = client.get(url)
            assert response.status_code == 200, (client_name, url, response.status_code)
            body = b"".join(response.streaming_content) if response.streaming else response.content
            searched[f"{client_name} GET {url}"] = body.decode("utf-8", errors="replace")
    tested = admin.post("/api/connections/erp/test/")  # the server is gone: the failure message is searched too
    searched["admin POST test"] = tested.content.decode()
    searched["step outputs and errors"] = repr(list(StepRun.objects.values_list("output", "error")))
    searched["run errors"] = repr(list(Run.objects.values_list("error", flat=True)))
    searched["logs"] = "\n".join(record.getMessage() for record in caplog.records) + caplog.text

    leaks = [where for where, text in searched.items() if canary in text]
    assert leaks == [], f"the canary leaked into: {leaks}"
    # The database holds it only encrypted: no row of any table (audit, history, runs, outbox...) has it in clear.
    rows = _every_row_as_text()
    assert rows["connectors_connection"] and rows["audit_auditevent"] and rows["connectors_historicalconnection"]
    leaking_tables = sorted(table for table, texts in rows.items() if any(canary in text for text in texts))
    assert leaking_tables == []
    [stored] = [text for text in rows["connectors_connection"] if '"erp"' in text]
    assert '"secrets_encrypted": "fernet:' in stored.replace('":"', '": "')
    assert connection.secrets == {"token": canary}
    failed_step = StepRun.objects.get(run=failed_run, step_key="post")
    assert "answered HTTP 400" in failed_step.error and '"headers"' in failed_step.error
    print(f"canary searched in {len(searched)} responses and logs and {sum(map(len, rows.values()))} rows: 0 leaks")
