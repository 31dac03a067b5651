"""`http.request` calling an operation of its connection's OpenAPI document, end to end: published (refused
while the operation is gone or a required value is empty), run on the real engine against the HTTP sink with
the path parameter URL-encoded, the query string built and the JSON body typed by the schema; a body that
breaks the schema fails the step by field before anything is sent; graphs without an operation unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apps.connectors.openapi import openapi_document_load
from apps.core.exceptions import ApplicationError
from apps.runs.models import StepRun
from apps.runs.services import run_start
from apps.steps.base import StepContext, StepError
from apps.steps.registry import step_config_errors, step_config_parse, step_type_find
from apps.workflows.services import workflow_create, workflow_draft_save, workflow_version_publish
from tests.connectors.helpers import allow_loopback, make_connection
from tests.connectors.openapi_erp import ERP_YAML
from tests.connectors.servers import ApiServer
from tests.support.engine import drive, states
from tests.support.sink import Sink

pytestmark = pytest.mark.django_db

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "tenant": {"type": "string"},
        "number": {"type": "string"},
        "supplier": {"type": "integer"},
        "amount": {"type": "number"},
        "lines": {"type": "string", "description": "The invoice lines, as JSON"},
        "po": {"type": "string"},
    },
}
INPUTS = {
    "tenant": "acme",
    "number": "INV-2024-001",
    "supplier": 42,
    "amount": 1234.5,
    "lines": '[{"sku": "A-1", "quantity": 2, "unit_price": 617.25}]',
    "po": "PO 2024/17",
}
CREATE = {
    "connection": "erp",
    "operation": "createInvoice",
    "parameters": {"X-Tenant": "{{ input.tenant }}"},
    "body_fields": {
        "number": "{{ input.number }}",
        "supplier_id": "{{ input.supplier }}",
        "amount": "{{ input.amount }}",
        "paid": "{{ input.amount > 5000 }}",
        "lines": "{{ input.lines }}",
    },
}
READ = {"connection": "erp", "operation": "getPurchaseOrder", "parameters": {"po_number": "{{ input.po }}"}}


def _load(connection: Any, text: str = ERP_YAML) -> None:
    openapi_document_load(actor=None, connection=connection, data=text, source_kind="file", source="erp.yaml")


@pytest.fixture
def sink(tmp_path: Any, settings: Any) -> Any:
    allow_loopback(settings)
    with Sink(tmp_path / "sink.sqlite3") as running:
        yield running


@pytest.fixture
def erp(team: Any, sink: Any) -> Any:
    connection = make_connection(team, label="ERP API", config={"base_url": f"{sink.url}/api/v1/"})
    _load(connection)
    return connection


def _workflow(analyst: Any, team: Any, *configs: dict[str, Any]) -> Any:
    workflow = workflow_create(actor=analyst, name="Invoice posting", team=team)
    steps = [{"key": f"call_{index}", "type": "http.request", "config": config} for index, config in enumerate(configs)]
    edges = [{"from": f"call_{i}", "to": f"call_{i + 1}"} for i in range(len(steps) - 1)]
    workflow_draft_save(
        actor=analyst,
        workflow=workflow,
        graph={"steps": steps, "edges": edges},
        input_schema=INPUT_SCHEMA,
        expected_revision=None,
    )
    return workflow


def _publish(analyst: Any, workflow: Any) -> Any:
    return workflow_version_publish(actor=analyst, version=workflow.versions.get(state="draft"), note="v1")


def test_a_published_operation_runs_against_the_sink_with_typed_values(analyst: Any, team: Any, erp: Any, sink: Any):
    workflow = _workflow(analyst, team, CREATE, READ)
    _publish(analyst, workflow)
    run = drive(run_start(actor=analyst, workflow=workflow, inputs=INPUTS)[0])
    assert run.status == "succeeded", states(run)
    created, read = (StepRun.objects.get(run=run, step_key=key) for key in ("call_0", "call_1"))
    # Numbers and booleans go as JSON values, the list as a list: the sink echoes what it parsed.
    assert created.output["body"]["echo"] == {
        "number": "INV-2024-001",
        "supplier_id": 42,
        "amount": 1234.5,
        "paid": False,
        "lines": [{"sku": "A-1", "quantity": 2, "unit_price": 617.25}],
    }
    paths = [delivery.path for delivery in sink.deliveries()]
    assert paths == ["/api/v1/invoices", "/api/v1/purchase-orders/PO%202024%2F17"]
    assert read.output["status"] == 200
    assert all(row.effective_applies == 1 for row in sink.ledger().values())


def test_a_body_that_breaks_the_schema_fails_the_step_by_field_and_sends_nothing(
    analyst: Any, team: Any, erp: Any, sink: Any
):
    workflow = _workflow(analyst, team, CREATE)
    _publish(analyst, workflow)
    run = drive(run_start(actor=analyst, workflow=workflow, inputs={**INPUTS, "amount": -5})[0])
    assert run.status == "failed"
    error = StepRun.objects.get(run=run, step_key="call_0").error
    assert "POST /invoices · Create an invoice" in error
    assert "does not match the operation's schema: body.amount: -5.0 is less than or equal to the minimum of 0" in error
    assert sink.deliveries() == []  # refused before sending
    fixed = drive(run_start(actor=analyst, workflow=workflow, inputs=INPUTS)[0])
    assert fixed.status == "succeeded" and len(sink.deliveries()) == 1


def test_publishing_refuses_what_the_document_does_not_allow(analyst: Any, team: Any, erp: Any):
    workflow = _workflow(
        analyst,
        team,
        {"connection": "erp", "operation": "createInvoice", "body_fields": {"number": "INV-1", "discount": "5"}},
        {"connection": "erp", "operation": "archiveInvoice"},
        {"connection": "erp", "operation": "getPurchaseOrder", "parameters": {"po_number": " "}},
        {"operation": "health"},
        {"connection": "erp"},
    )
    with pytest.raises(ApplicationError) as refused:
        _publish(analyst, workflow)
    problems = refused.value.extra["problems"]
    for expected in (
        'step "call_0": parameters.X-Tenant: required by the operation',
        'step "call_0": body_fields.discount: not a field of the operation\'s body',
        'step "call_0": body_fields.supplier_id: required by the operation\'s body',
        'step "call_0": body_fields.amount: required by the operation\'s body',
        'step "call_1": operation: "archiveInvoice" is not an operation of the connection\'s OpenAPI document',
        'step "call_2": parameters.po_number: required by the operation',
        'step "call_3": operation: an operation belongs to a connection; choose the connection first',
        'step "call_4": url: give the URL, or choose an operation',
    ):
        assert any(problem.startswith(expected) for problem in problems), (expected, problems)


def test_an_operation_removed_from_the_document_after_publishing_fails_clearly(
    analyst: Any, team: Any, erp: Any, sink: Any
):
    workflow = _workflow(analyst, team, READ)
    _publish(analyst, workflow)
    _load(erp, ERP_YAML.replace("operationId: getPurchaseOrder", "operationId: readPurchaseOrder"))
    run = drive(run_start(actor=analyst, workflow=workflow, inputs=INPUTS)[0])
    assert run.status == "failed"
    error = StepRun.objects.get(run=run, step_key="call_0").error
    assert '"getPurchaseOrder" is not an operation of the OpenAPI document of connection "erp"' in error
    assert sink.deliveries() == []


def test_graphs_without_an_operation_validate_as_before(erp: Any) -> None:
    assert step_config_errors("http.request", {"url": "https://erp.example.com/x", "body": "{}"}) == []
    assert step_config_errors("http.request", {"connection": "erp", "url": "/invoices", "method": "PUT"}) == []
    assert step_config_errors("http.request", {}) == [
        "url: give the URL, or choose an operation of the connection's OpenAPI document"
    ]
    assert step_config_errors("http.request", {"url": "/x", "parameters": {"a": "1"}}) == [
        "operation: parameters and body fields need an operation; choose one"
    ]
    assert step_config_errors("http.request", {**READ, "parameters": {"po_number": "{{ input.po"}})[0].startswith(
        "parameters.po_number: the template does not parse"
    )
    raw_and_fields = {**CREATE, "body": '{"number": "x"}'}
    assert "body: give the body's fields or a raw body, not both" in step_config_errors("http.request", raw_and_fields)


# --- executed directly, against an API that records query strings and headers ---------------------------------


@pytest.fixture
def api(settings: Any) -> Any:
    allow_loopback(settings)
    with ApiServer() as server:
        yield server


def _execute(config: dict[str, Any], workflow: Any, inputs: dict[str, Any]) -> Any:
    step_type = step_type_find("http.request")
    context = StepContext(
        run_id=1, step_key="call", input=inputs, steps={}, idempotency_key="run-1-call", workflow_id=workflow.pk
    )
    return step_type().execute(step_config_parse("http.request", config), context)  # type: ignore[misc]


def test_query_strings_and_header_parameters(analyst: Any, team: Any, api: Any) -> None:
    api.static_tokens.add("tok-openapi-q-0001")
    connection = make_connection(
        team, config={"base_url": f"{api.url}/api/v1", "auth": "bearer"}, secrets={"token": "tok-openapi-q-0001"}
    )
    _load(connection)
    workflow = workflow_create(actor=analyst, name="Listing", team=team)
    config = {
        "connection": "erp",
        "operation": "listInvoices",
        "parameters": {"X-Tenant": "{{ input.tenant }}", "limit": "{{ input.n }}", "tag": "{{ input.tags | tojson }}"},
        "headers": {"X-Trace": "t-1"},
    }
    outcome = _execute(config, workflow, {"tenant": "acme", "n": 5, "tags": ["urgent", "q3 close"]})
    assert outcome.output["status"] == 200
    [received] = api.requests
    assert (received.method, received.path) == ("GET", "/api/v1/invoices?limit=5&tag=urgent&tag=q3+close")
    assert received.headers["x-tenant"] == "acme" and received.headers["x-trace"] == "t-1"
    assert received.headers["authorization"] == "Bearer tok-openapi-q-0001"
    with pytest.raises(StepError, match=r'parameter "limit" \(query\): 500 is greater than the maximum of 100'):
        _execute(config, workflow, {"tenant": "acme", "n": 500, "tags": []})
    assert len(api.requests) == 1


def test_a_merge_patch_body_and_a_simulation(analyst: Any, team: Any, api: Any) -> None:
    connection = make_connection(team, config={"base_url": api.url})
    _load(connection)
    workflow = workflow_create(actor=analyst, name="Orders", team=team)
    config = {
        "connection": "erp",
        "operation": "updatePurchaseOrder",
        "parameters": {"po_number": "PO-1"},
        "body_fields": {"status": "received", "note": "null"},
    }
    outcome = _execute(config, workflow, {})
    [received] = api.requests
    assert received.method == "PATCH" and received.headers["content-type"] == "application/merge-patch+json"
    assert json.loads(received.body) == {"status": "received", "note": None} == outcome.output["body"]["echo"]
    step_type = step_type_find("http.request")
    context = StepContext(run_id=1, step_key="call", input={}, steps={}, idempotency_key="k", workflow_id=workflow.pk)
    simulated = step_type().simulate(step_config_parse("http.request", config), context)  # type: ignore[misc]
    assert simulated["simulated"] is True
    assert simulated["request"]["operation"] == "updatePurchaseOrder"
    assert simulated["request"]["parameters"] == {"po_number": "PO-1"}
    assert len(api.requests) == 1
