"""The builder's form for an HTTP request that calls an OpenAPI operation, through the real builder pages: the
operation picker lists the operations of a connection the analyst may use (and of no other), choosing one
replaces the method and URL with a field per parameter and per body field (required ones marked, the
description as help, each a template with the data picker), saving stores them in the step's config, and
changing the operation clears the values of the old one."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from lxml import html

from apps.connectors.openapi import openapi_document_load
from apps.workflows.services import workflow_create, workflow_draft_save
from tests.connectors.helpers import finance_team, make_connection
from tests.connectors.openapi_erp import ERP_YAML

pytestmark = pytest.mark.django_db


@pytest.fixture
def workflow(analyst: Any, team: Any) -> Any:
    connection = make_connection(team, label="ERP API")
    openapi_document_load(actor=None, connection=connection, data=ERP_YAML, source_kind="file", source="erp.yaml")
    workflow = workflow_create(actor=analyst, name="Invoice posting", team=team)
    graph = {"steps": [{"key": "post", "type": "http.request", "config": {"url": "/invoices"}}]}
    schema = {"type": "object", "properties": {"number": {"type": "string"}}}
    workflow_draft_save(actor=analyst, workflow=workflow, graph=graph, input_schema=schema, expected_revision=None)
    return workflow


def _panel(client: Client, workflow: Any) -> Any:
    response = client.get(f"/workflows/{workflow.slug}/edit/?step=post")
    assert response.status_code == 200
    return html.fromstring(response.content.decode())


def _save(client: Client, workflow: Any, **fields: str) -> dict[str, Any]:
    draft = workflow.versions.get(state="draft")
    data = {"revision": draft.revision, "name": "Post the invoice", **fields}
    response = client.post(f"/workflows/{workflow.slug}/edit/steps/post/", data)
    assert response.status_code == 302
    return workflow.versions.get(state="draft").graph["steps"][0]["config"]


def _options(page: Any, name: str) -> list[tuple[str, str]]:
    return [(o.get("value"), o.text_content()) for o in page.xpath(f'//select[@name="{name}"]/option')]


def _label(page: Any, name: str) -> str:
    [control] = page.xpath(f'//*[@name="{name}"]')
    [label] = page.xpath(f'//label[@for="{control.get("id")}"]')
    return " ".join(label.text_content().split())


def test_pick_an_operation_and_fill_its_form(client: Client, analyst: Any, workflow: Any) -> None:
    client.force_login(analyst)
    page = _panel(client, workflow)
    # Without a connection there is nothing to pick from; the connection's select says how to get operations.
    assert not page.xpath('//select[@name="config.operation"]')
    assert page.xpath('//button[@name="apply" and @value="config.connection"]')[0].text == "Show its operations"

    config = _save(client, workflow, **{"config.connection": "erp", "config.method": "POST", "config.url": "/invoices"})
    page = _panel(client, workflow)
    options = _options(page, "config.operation")
    assert options[0] == ("", "None: write the method and URL")
    assert ("createInvoice", "POST /invoices · Create an invoice") in options
    assert ("getPurchaseOrder", "GET /purchase-orders/{po_number} · Read a purchase order") in options
    assert _label(page, "config.operation") == "Operation"
    assert page.xpath('//button[@name="apply" and @value="config.operation"]')[0].text == "Show its fields"

    config = _save(
        client, workflow, **{"config.connection": "erp", "config.operation": "createInvoice", "config.url": "/x"}
    )
    assert config["operation"] == "createInvoice"
    page = _panel(client, workflow)
    # The operation gives the method and the path: those fields are gone; its parameters and body fields come.
    assert not page.xpath('//*[@name="config.url"]') and not page.xpath('//*[@name="config.method"]')
    assert "POST /invoices: Books a supplier invoice" in page.text_content()
    assert _label(page, "config.parameters.X-Tenant") == "X-Tenant * (required)"
    assert _label(page, "config.body_fields.amount") == "amount * (required)"
    assert _label(page, "config.body_fields.currency") == "currency"
    assert not page.xpath('//*[@name="config.body_fields.id"]')  # read-only: the server's
    amount = page.xpath('//*[@name="config.body_fields.amount"]')[0]
    assert amount.tag == "textarea" and amount.get("data-widget") == "template"
    help_text = page.xpath(f'//*[@id="{amount.get("aria-describedby")}"]')[0].text_content()
    assert help_text == "Number, more than 0. Total including tax."
    # Each value is a template with the data picker beside it.
    assert page.xpath(f'//*[@data-target="{amount.get("id")}"]') or amount.get("id") in page.text_content()

    config = _save(
        client,
        workflow,
        **{
            "config.connection": "erp",
            "config.operation": "createInvoice",
            "config.parameters.present": "1",
            "config.parameters.X-Tenant": "acme",
            "config.body_fields.present": "1",
            "config.body_fields.number": "{{ input.number }}",
            "config.body_fields.supplier_id": "42",
            "config.body_fields.amount": "",
        },
    )
    assert config["parameters"] == {"X-Tenant": "acme"}
    assert config["body_fields"] == {"number": "{{ input.number }}", "supplier_id": "42"}
    page = _panel(client, workflow)
    # The empty required field is shown with its problem, as publishing would refuse it.
    amount_field = page.xpath('//*[@name="config.body_fields.amount"]/ancestor::div[contains(@class, "field")][1]')[0]
    assert "required by the operation's body" in amount_field.text_content()
    assert "field--invalid" in amount_field.get("class")

    # Another operation: the old one's values go, the new one's fields come.
    config = _save(
        client,
        workflow,
        **{
            "config.connection": "erp",
            "config.operation": "getPurchaseOrder",
            "config.parameters.present": "1",
            "config.parameters.X-Tenant": "acme",
            "config.body_fields.present": "1",
            "config.body_fields.number": "{{ input.number }}",
        },
    )
    assert config["operation"] == "getPurchaseOrder"
    assert "parameters" not in config and "body_fields" not in config
    page = _panel(client, workflow)
    assert _label(page, "config.parameters.po_number") == "po_number * (required)"
    assert not page.xpath('//*[@name="config.body_fields.number"]')

    # Back to no operation: the method and URL return, with what they held.
    config = _save(client, workflow, **{"config.connection": "erp", "config.operation": ""})
    assert "operation" not in config and config["url"] == "/x"
    page = _panel(client, workflow)
    assert page.xpath('//*[@name="config.url"]')[0].text_content() == "/x"


def test_operations_of_a_connection_the_analyst_may_not_use_are_not_offered(
    client: Client, analyst: Any, outsider: Any, workflow: Any
) -> None:
    elsewhere = make_connection(finance_team(outsider), name="ledger", label="Ledger")
    openapi_document_load(actor=None, connection=elsewhere, data=ERP_YAML, source_kind="file", source="l.yaml")
    draft = workflow.versions.get(state="draft")
    graph = {"steps": [{"key": "post", "type": "http.request", "config": {"connection": "ledger", "url": "/x"}}]}
    workflow_draft_save(
        actor=analyst, workflow=workflow, graph=graph, input_schema=draft.input_schema, expected_revision=None
    )
    client.force_login(analyst)
    page = _panel(client, workflow)
    assert ("ledger", "ledger (missing)") in _options(page, "config.connection")
    assert _options(page, "config.operation") == [("", "None: write the method and URL")]
    assert "createInvoice" not in page.text_content()


def test_a_connection_without_a_document_says_how_to_get_one(client: Client, analyst: Any, team: Any) -> None:
    make_connection(team, name="crm", label="CRM")
    workflow = workflow_create(actor=analyst, name="Leads", team=team)
    graph = {"steps": [{"key": "post", "type": "http.request", "config": {"connection": "crm", "url": "/x"}}]}
    schema = {"type": "object", "properties": {}}
    workflow_draft_save(actor=analyst, workflow=workflow, graph=graph, input_schema=schema, expected_revision=None)
    client.force_login(analyst)
    page = _panel(client, workflow)
    assert _options(page, "config.operation") == [("", "None: write the method and URL")]
    assert 'The connection "crm" has no OpenAPI document: an admin loads one' in page.text_content()
    assert page.xpath('//*[@name="config.url"]')  # the URL is still written by hand
