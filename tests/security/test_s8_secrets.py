"""S8: a canary secret in each place a secret lives, then searched for everywhere a person or an operator reads.

Secrets planted (each its own canary, so a find names its source): a model endpoint's token, a secret of every
kind of connection (a mailbox's, a SQL database's and a mail server's password, an HTTP API's OAuth2 client secret
and API key, an MCP server's token and secret headers), a person's API token, the SMTP password, the audit signing
key. The places searched: every route of
the permission table (pages, htmx fragments and API) as every persona and an admin, the audit table and an
audit export, every history table, the run recordings (model calls) of a run made through the endpoint with
the token, and every log record the web and engine code wrote in this process meanwhile.

The log files of separately served web and worker processes are searched by test_s8_served_logs.py (S8b).

Figure: `S8 canary_found 0 of N places ok`, N the number of places searched (responses, tables, files).
"""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.apps import apps
from django.test import Client
from django.urls import reverse

from tests.runs.test_ai_steps import ai_server, endpoint, wire  # noqa: F401
from tests.security.test_permission_matrix import MATRIX
from tests.support.figures import record_figure

pytestmark = pytest.mark.django_db

CANARIES = {
    "endpoint_token": "s8canary-endpoint-7c1d9e20b4",
    "connection_password": "s8canary-connection-5a8f31c7",
    "sql_password": "s8canary-sql-3b7e55a912",
    "smtp_connection_password": "s8canary-smtpconn-61d0c4e8aa",
    "oauth2_client_secret": "s8canary-oauth2-0e8c1d77f3",
    "api_key": "s8canary-apikey-92f4b0c6d1",
    "mcp_token": "s8canary-mcp-token-4c2e9a1b07",
    "mcp_header": "s8canary-mcp-header-d83f6e215c",
    # The API token is made when the test runs (only its digest is stored, so it cannot be chosen): see below.
    "api_token": "",
    "smtp_password": "s8canary-smtp-9e4b62d0f1",
    "audit_signing_key": "s8canary-audit-signing-key-0f9a8b7c6d5e4f3a",
}


def found_in(text: str) -> list[str]:
    return [name for name, canary in CANARIES.items() if canary in text]


@pytest.mark.parametrize("endpoint", ["tgi"], indirect=True)
def test_s8_canaries_never_leave_their_box(
    world,
    endpoint,  # noqa: F811
    admin_user_role,
    settings,
    caplog,
    team,
    monkeypatch,
    tmp_path,
):
    from apps.accounts.services import api_token_issue
    from apps.audit.export import audit_export_write
    from apps.audit.models import AuditEvent
    from apps.inference.models import InferenceCall, ModelEndpoint
    from tests.connectors.helpers import make_connection
    from tests.runs.test_ai_steps import publish, run_to_end

    settings.EMAIL_HOST_PASSWORD = CANARIES["smtp_password"]
    settings.AIOS_AUDIT_SIGNING_KEY = CANARIES["audit_signing_key"]
    # The export writes a checkpoint signed with the canary key: somewhere of its own, not where later tests'
    # audit verifications look.
    settings.AIOS_AUDIT_CHECKPOINT_DIR = tmp_path
    caplog.set_level(logging.DEBUG)

    # Plant: the default endpoint (the development inference server) gets a token; a connection a password;
    # the analyst an API token.
    endpoint = ModelEndpoint.objects.get(pk=endpoint.pk)
    endpoint.token = CANARIES["endpoint_token"]
    endpoint.save()
    connection = make_connection(
        team, name="s8-mail", kind="mailbox", secrets={"password": CANARIES["connection_password"]}
    )
    # Every other kind of connection, each with its own secrets (their pages and API are searched below).
    others = [
        make_connection(team, name="s8-ledger", kind="sql", secrets={"password": CANARIES["sql_password"]}),
        make_connection(team, name="s8-relay", kind="smtp", secrets={"password": CANARIES["smtp_connection_password"]}),
        make_connection(
            team,
            name="s8-erp-oauth",
            config={
                "base_url": "https://erp.example.com/api/",
                "auth": "oauth2_client_credentials",
                "token_url": "https://login.example.com/oauth2/token",
                "client_id": "aios",
            },
            secrets={"client_secret": CANARIES["oauth2_client_secret"]},
        ),
        make_connection(
            team,
            name="s8-erp-key",
            config={"base_url": "https://erp.example.com/api/", "auth": "api_key_header", "header_name": "X-API-Key"},
            secrets={"api_key": CANARIES["api_key"]},
        ),
        make_connection(
            team,
            name="s8-tools",
            kind="mcp",
            config={"transport": "http", "url": "https://tools.example.com/mcp"},
            secrets={"token": CANARIES["mcp_token"], "headers": f"X-Tools-Key: {CANARIES['mcp_header']}"},
        ),
    ]
    analyst = world["personas"]["analyst"]
    _, api_token = api_token_issue(user=analyst, name="s8 canary", lifetime_days=30)
    monkeypatch.setitem(CANARIES, "api_token", api_token)
    # A run through the endpoint that holds the token, so its recordings exist.
    run = run_to_end(
        analyst,
        publish(analyst, team, [{"key": "note", "type": "llm.generate", "config": {"prompt": "Hi {{ input.text }}"}}]),
        "a short claim",
    )

    finds: dict[str, list[str]] = {}
    places = 0

    def search(place: str, text: str) -> None:
        nonlocal places
        places += 1
        hits = found_in(text)
        if hits:
            finds[place] = hits

    # Pages, fragments and API: every route of the table, as every persona and an admin.
    personas = {**world["personas"], "admin": admin_user_role}
    args = {
        **world["args"],
        "connectors:detail": [connection.name],
        "api:connection-detail": [connection.name],
        "inference:endpoint-edit": [endpoint.pk],
        "runs:detail": [run.pk],
        "api:run-detail": [run.pk],
        "api:run-calls": [run.pk],
    }
    for persona, user in personas.items():
        client = Client()
        client.force_login(user)
        for route in sorted(MATRIX):
            response = client.get(reverse(route, args=args.get(route, [])))
            if response.status_code == 200 and not getattr(response, "streaming", False):
                search(f"{route} as {persona}", response.content.decode("utf-8", "replace"))
    for other in others:
        for persona in ("analyst", "admin"):
            client = Client()
            client.force_login(personas[persona])
            for route in ("connectors:detail", "api:connection-detail", "connectors:delete"):
                response = client.get(reverse(route, args=[other.name]))
                if response.status_code == 200:
                    search(f"{route} {other.name} as {persona}", response.content.decode("utf-8", "replace"))
    token_client = Client(HTTP_AUTHORIZATION=f"Bearer {CANARIES['api_token']}")
    search("api:workflow-list with the token", token_client.get("/api/workflows/").content.decode())

    # The audit table, and an export of it.
    search("audit table", json.dumps(list(AuditEvent.objects.values()), default=str))
    export = io.BytesIO()
    audit_export_write(actor=admin_user_role, out=export, since=None, until=None, stream="")
    search("audit export", export.getvalue().decode("utf-8", "replace"))

    # Every history table.
    for model in apps.get_models():
        if model.__name__.startswith("Historical"):
            search(f"history {model._meta.db_table}", json.dumps(list(model.objects.values()), default=str))

    # The run's recordings (model calls: request, response, provenance).
    calls = list(InferenceCall.objects.filter(run_id=run.pk).values())
    assert calls, "the run made no model call: the recordings were not exercised"
    search("run recordings", json.dumps(calls, default=str))

    # Every log record written in this process while the above ran.
    search("logs (this process)", "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records))

    # The detector itself: a page that does show a canary must be found.
    assert found_in(f"xx{CANARIES['connection_password']}xx") == ["connection_password"]

    ok = not finds and places > 100
    record_figure(f"S8 canary_found {len(finds)} of {places} places {'ok' if ok else 'FAIL'}")
    assert not finds, finds
    assert places > 100, places
