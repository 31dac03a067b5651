"""`http.request` with a connection, against a real HTTP server on loopback: the path joined to the base URL,
the connection's headers, timeout and authentication (added last), OAuth2 client credentials (token fetched
once, cached, refreshed after expiry and once after a 401), nothing secret in outputs or errors, and graphs
without a connection working as before."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from apps.connectors.runtime import REDACTED
from apps.steps.base import StepContext, StepError, Uses
from apps.steps.registry import step_config_parse, step_type_find
from tests.connectors.helpers import make_connection
from tests.connectors.servers import ApiServer

pytestmark = pytest.mark.django_db


def _run(config: dict[str, Any], workflow: Any, *, key: str = "post", inputs: dict[str, Any] | None = None):
    step_type = step_type_find("http.request")
    assert step_type is not None
    parsed = step_config_parse("http.request", config)
    context = StepContext(
        run_id=1,
        step_key=key,
        input=inputs or {"invoice": "INV-1"},
        steps={},
        idempotency_key=f"run-1-{key}",
        workflow_id=workflow.pk,
    )
    return step_type().execute(parsed, context)


def test_uses_names_the_connection_only_when_there_is_one():
    step_type = step_type_find("http.request")
    with_connection = step_config_parse("http.request", {"connection": "erp", "url": "/x"})
    without = step_config_parse("http.request", {"url": "https://x.example.com/"})
    assert step_type.uses(with_connection) == [Uses("connection", "erp", kind="http", field="connection")]
    assert step_type.uses(without) == []
    assert step_type.config_schema()["properties"]["connection"]["x-widget"] == "connection-http"


def test_a_path_goes_under_the_base_url_with_headers_and_auth_last(api, team, workflow):
    api.static_tokens.add("tok-bearer-0001")
    make_connection(
        team,
        config={
            "base_url": f"{api.url}/api/v2/",
            "auth": "bearer",
            "headers": {"X-Tenant": "acme", "Accept": "application/json"},
        },
        secrets={"token": "tok-bearer-0001"},
    )
    outcome = _run(
        {
            "connection": "erp",
            "url": "invoices/{{ input.invoice }}",
            "headers": {"Authorization": "Bearer forged-by-the-graph", "X-Trace": "t1"},
            "body": '{"n": 1}',
        },
        workflow,
    )
    assert outcome.output == {"status": 200, "body": {"ok": True, "path": "/api/v2/invoices/INV-1", "echo": {"n": 1}}}
    [received] = api.requests
    assert received.headers["authorization"] == "Bearer tok-bearer-0001"
    assert received.headers["x-tenant"] == "acme" and received.headers["x-trace"] == "t1"
    assert received.headers["idempotency-key"] == "run-1-post"


def test_basic_and_api_key_authentication(api, team, workflow):
    api.basic_users["svc"] = "pw-basic-0002"
    make_connection(
        team,
        name="basic",
        config={"base_url": api.url, "auth": "basic", "username": "svc"},
        secrets={"password": "pw-basic-0002"},
    )
    assert _run({"connection": "basic", "url": "/ping", "method": "GET"}, workflow).output["status"] == 200
    expected = "Basic " + base64.b64encode(b"svc:pw-basic-0002").decode()
    assert api.requests[-1].headers["authorization"] == expected

    api.api_keys["x-api-key"] = "key-0003-abcd"
    make_connection(
        team,
        name="keyed",
        config={"base_url": api.url, "auth": "api_key_header", "header_name": "X-API-Key"},
        secrets={"api_key": "key-0003-abcd"},
    )
    outcome = _run(
        {"connection": "keyed", "url": "/ping", "method": "GET", "headers": {"x-api-key": "graph-value"}}, workflow
    )
    assert outcome.output["status"] == 200
    assert api.requests[-1].headers["x-api-key"] == "key-0003-abcd"


@pytest.mark.parametrize("url", ["https://evil.example.com/steal", "//evil.example.com/x", "http://127.0.0.1:1/x"])
def test_a_url_that_leaves_the_connection_origin_is_refused(api, team, workflow, url):
    make_connection(team, config={"base_url": f"{api.url}/api/"})
    with pytest.raises(StepError, match="leaves the connection's address"):
        _run({"connection": "erp", "url": url}, workflow)
    assert api.requests == []


def test_an_absolute_url_on_the_same_origin_is_allowed(api, team, workflow):
    make_connection(team, config={"base_url": f"{api.url}/api/"})
    assert _run({"connection": "erp", "url": f"{api.url}/api/x", "method": "GET"}, workflow).output["status"] == 200


def test_graphs_without_a_connection_work_as_before(api, workflow):
    outcome = _run({"url": f"{api.url}/plain", "method": "PUT", "body": "text"}, workflow)
    assert outcome.output == {"status": 200, "body": {"ok": True, "path": "/plain", "echo": "text"}}
    assert "authorization" not in api.requests[0].headers


def test_a_connection_the_workflow_may_not_use_fails_the_step_by_name(api, team, workflow, outsider):
    from apps.accounts.services import team_create

    elsewhere = team_create(name="Finance", members=[outsider])
    make_connection(elsewhere, name="ledger", config={"base_url": api.url})
    with pytest.raises(StepError, match='may not use the connection "ledger"'):
        _run({"connection": "ledger", "url": "/x"}, workflow)
    assert api.requests == []


def test_echoed_secrets_are_redacted_from_outputs_and_errors(api, team, workflow):
    api.static_tokens.add("tok-echo-0004")
    make_connection(team, config={"base_url": api.url, "auth": "bearer"}, secrets={"token": "tok-echo-0004"})
    outcome = _run({"connection": "erp", "url": "/echo-headers", "method": "GET"}, workflow)
    assert outcome.output["body"]["headers"]["authorization"] == f"Bearer {REDACTED}"
    assert "tok-echo-0004" not in repr(outcome.output)
    with pytest.raises(StepError) as failed:
        _run({"connection": "erp", "url": "/status/500", "body": "tok-echo-0004"}, workflow)
    assert "tok-echo-0004" not in failed.value.message and failed.value.retryable


def test_a_secret_cut_by_the_error_length_limit_leaves_no_piece(api, team, workflow):
    api.static_tokens.add("tok-straddle-0007")
    make_connection(team, config={"base_url": api.url, "auth": "bearer"}, secrets={"token": "tok-straddle-0007"})
    # The answer's first 300 characters end inside the token: "x" * 290 + "Bearer tok-strad|dle-0007".
    with pytest.raises(StepError) as failed:
        _run({"connection": "erp", "url": "/status/400?pad=290", "method": "GET"}, workflow)
    assert "tok-strad" not in failed.value.message and "xBearer [se" in failed.value.message


def _oauth(team: Any, api: ApiServer, *, name: str = "oauth", secret: str = "cs-oauth-0005") -> None:
    api.clients["aios-client"] = secret
    make_connection(
        team,
        name=name,
        config={
            "base_url": api.url,
            "auth": "oauth2_client_credentials",
            "token_url": f"{api.url}/oauth/token",
            "client_id": "aios-client",
            "scope": "invoices:write",
        },
        secrets={"client_secret": secret},
    )


def test_oauth2_token_is_fetched_once_and_cached(api, team, workflow):
    _oauth(team, api)
    for _ in range(3):
        assert _run({"connection": "oauth", "url": "/invoices"}, workflow).output["status"] == 200
    assert len(api.token_requests) == 1
    token_request = api.token_requests[0]
    assert "grant_type=client_credentials" in token_request.body.decode()
    assert "scope=invoices%3Awrite" in token_request.body.decode()
    assert token_request.headers["authorization"].startswith("Basic ")
    assert len({received.headers["authorization"] for received in api.requests}) == 1


def test_oauth2_token_is_refreshed_after_expiry(api, team, workflow):
    # 31 s of lifetime, less the 30 s margin: the cached token is used for one second, then fetched again.
    api.token_lifetime = 31
    _oauth(team, api)
    _run({"connection": "oauth", "url": "/a"}, workflow)
    _run({"connection": "oauth", "url": "/b"}, workflow)
    assert len(api.token_requests) == 1
    time.sleep(1.3)
    _run({"connection": "oauth", "url": "/c"}, workflow)
    assert len(api.token_requests) == 2
    assert api.requests[0].headers["authorization"] != api.requests[2].headers["authorization"]


def test_oauth2_token_is_refreshed_once_after_a_401(api, team, workflow):
    _oauth(team, api)
    _run({"connection": "oauth", "url": "/a"}, workflow)
    api.revoke_tokens()  # the provider forgets the cached token: the next call gets 401, fetches, retries
    outcome = _run({"connection": "oauth", "url": "/b"}, workflow)
    assert outcome.output["status"] == 200
    assert len(api.token_requests) == 2
    assert [r.path for r in api.requests] == ["/a", "/b", "/b"]
    assert api.requests[1].headers["authorization"] != api.requests[2].headers["authorization"]


def test_a_refused_client_secret_fails_the_step_without_showing_it(api, team, workflow):
    _oauth(team, api, secret="cs-wrong-0006")
    api.clients["aios-client"] = "the-real-one"
    with pytest.raises(StepError) as failed:
        _run({"connection": "oauth", "url": "/a"}, workflow)
    assert "answered HTTP 401" in failed.value.message and "invalid_client" in failed.value.message
    assert "cs-wrong-0006" not in failed.value.message
    assert api.requests == []


@pytest.mark.parametrize(
    "invoice",
    [
        "../admin/delete?all=1",
        "..%2Fadmin",
        "%2e%2e/admin",
        "INV-1/../../admin",
        "%252e%252e/admin",
        "..\\admin",
        "orders/..;/..;/admin",  # ".." to Java servers, which drop a segment's ";" parameters
        "orders/%2e%2e%3b/admin",
    ],
)
def test_run_data_cannot_climb_out_of_the_base_path(api, team, workflow, invoice):
    """A value from the run inside the URL template cannot steer the connection's credentials elsewhere."""
    api.static_tokens.add("tok-bearer-0001")
    make_connection(
        team, config={"base_url": f"{api.url}/api/v2/", "auth": "bearer"}, secrets={"token": "tok-bearer-0001"}
    )
    with pytest.raises(StepError, match=r'a "\.\." segment'):
        _run({"connection": "erp", "url": "invoices/{{ input.invoice }}"}, workflow, inputs={"invoice": invoice})
    assert api.requests == []


def test_dot_segments_that_stay_under_the_base_path_are_normalised(api, team, workflow):
    make_connection(team, config={"base_url": f"{api.url}/api/v2/"})
    outcome = _run({"connection": "erp", "url": "./invoices/./{{ input.invoice }}", "method": "GET"}, workflow)
    assert outcome.output["body"]["path"] == "/api/v2/invoices/INV-1"


@pytest.mark.parametrize("name", ["Host", "content-length", "Transfer-Encoding", "CONNECTION"])
def test_framing_headers_are_refused_at_publish_and_at_run_time(api, team, workflow, name):
    make_connection(team, config={"base_url": f"{api.url}/api/"})
    config = {"connection": "erp", "url": "x", "headers": {name: "evil.example.com"}}
    step_type = step_type_find("http.request")
    problems = step_type.check_config(step_config_parse("http.request", config))
    assert any(name in problem and "set by the platform" in problem for problem in problems), problems
    with pytest.raises(StepError, match="set by the platform"):
        _run(config, workflow)
    assert api.requests == []


def test_the_steps_idempotency_key_and_the_connections_auth_win_whatever_the_case(api, team, workflow):
    api.static_tokens.add("tok-bearer-0001")
    make_connection(
        team,
        config={"base_url": f"{api.url}/api/", "auth": "bearer", "headers": {"x-tenant": "acme"}},
        secrets={"token": "tok-bearer-0001"},
    )
    headers = {"idempotency-key": "graph-key", "authorization": "Bearer forged", "X-TENANT": "graph"}
    assert _run({"connection": "erp", "url": "x", "headers": headers}, workflow).output["status"] == 200
    [received] = api.requests
    names = [name.lower() for name, _ in received.header_list]
    assert names.count("idempotency-key") == 1 and names.count("authorization") == 1 and names.count("x-tenant") == 1
    assert received.headers["idempotency-key"] == "run-1-post"
    assert received.headers["authorization"] == "Bearer tok-bearer-0001"
    assert received.headers["x-tenant"] == "graph"
