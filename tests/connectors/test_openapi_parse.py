"""Reading OpenAPI documents into operations, and building a request for one: real-world-shaped documents (an
ERP in 3.0 YAML with shared components, a catalogue in 3.1 JSON), the refusals (not OpenAPI, a version we do
not read, a reference to another file, too large, aliases, schemas that explode once resolved), and requests
typed and checked by the document's schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apps.connectors.openapi import (
    MAX_DOCUMENT_BYTES,
    MAX_OPERATIONS,
    Operation,
    RequestInvalid,
    build_request,
    describe_schema,
    document_load,
    document_parse,
    typed_value,
)
from apps.core.exceptions import ValidationFailed
from tests.connectors.openapi_erp import CATALOGUE_31, ERP_YAML


def _erp() -> dict[str, Operation]:
    return {operation.operation_id: operation for operation in document_parse(document_load(ERP_YAML)).operations}


def _refused(text: str | bytes) -> str:
    with pytest.raises(ValidationFailed) as refused:
        document_parse(document_load(text))
    assert refused.value.fields["document"] == [refused.value.message]
    return refused.value.message


def test_the_erp_document_lists_what_a_step_can_call() -> None:
    parsed = document_parse(document_load(ERP_YAML))
    assert (parsed.openapi_version, parsed.title, parsed.api_version) == ("3.0.3", "Acme ERP API", "1.4.0")
    listed = [(o.operation_id, o.method, o.path, o.summary) for o in parsed.operations]
    assert listed == [
        ("listInvoices", "GET", "/invoices", "List invoices"),
        ("createInvoice", "POST", "/invoices", "Create an invoice"),
        ("payInvoice", "POST", "/invoices/{invoice_id}/payments", "Record a payment"),
        ("getPurchaseOrder", "GET", "/purchase-orders/{po_number}", "Read a purchase order"),
        ("updatePurchaseOrder", "PATCH", "/purchase-orders/{po_number}", "Change a purchase order"),
        # No operationId: named by method and path.
        ("DELETE /purchase-orders/{po_number}", "DELETE", "/purchase-orders/{po_number}", "Cancel a purchase order"),
        ("attachToPurchaseOrder", "POST", "/purchase-orders/{po_number}/attachments", "Attach a scanned document"),
        ("listSupplierContacts", "GET", "/suppliers/{supplier_id}/contacts", ""),
        ("listCategories", "GET", "/categories", "The category tree"),
        ("health", "GET", "/health", ""),
    ]
    notes = " ".join(parsed.notes)
    assert "https://erp.acme.example/api/v1" in parsed.notes[0]
    assert "Skipped HEAD /health" in notes
    assert 'cookie parameter "session" is not sent' in notes


def test_parameters_come_from_components_and_the_path_with_their_schemas() -> None:
    operations = _erp()
    listing = operations["listInvoices"]
    # The Accept header parameter is the request's own business (OpenAPI ignores it).
    assert [(p.name, p.location, p.required) for p in listing.parameters] == [
        ("X-Tenant", "header", True),
        ("status", "query", False),
        ("limit", "query", False),
        ("tag", "query", False),
    ]
    status = listing.parameters[1]
    assert status.schema == {"type": "string", "enum": ["open", "paid", "void"]}
    assert status.description == "Only invoices in this state."
    order = operations["getPurchaseOrder"].parameters
    assert [(p.name, p.location, p.required, p.key) for p in order] == [("po_number", "path", True, "po_number")]
    assert order[0].description.startswith("The purchase order's number")


def test_the_json_body_is_resolved_and_rewritten_as_json_schema() -> None:
    body = _erp()["createInvoice"].body
    assert body is not None and body.is_json and body.required and body.content_type == "application/json"
    assert body.description == "The invoice as printed."
    schema = body.schema
    assert schema is not None
    # 3.0's boolean exclusiveMinimum and nullable, as JSON Schema; references resolved, also inside arrays.
    assert schema["properties"]["amount"] == {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "Total including tax.",
    }
    assert schema["properties"]["notes"] == {"type": ["string", "null"]}
    assert schema["properties"]["lines"]["items"]["properties"]["unit_price"]["exclusiveMinimum"] == 0
    # The fields a form offers: read-only ones are the server's.
    assert [(f.name, f.required) for f in body.fields()] == [
        ("number", True),
        ("supplier_id", True),
        ("amount", True),
        ("currency", False),
        ("paid", False),
        ("due_date", False),
        ("notes", False),
        ("lines", False),
    ]
    merge_patch = _erp()["updatePurchaseOrder"].body
    assert merge_patch is not None and merge_patch.content_type == "application/merge-patch+json"
    upload = _erp()["attachToPurchaseOrder"].body
    assert upload is not None and not upload.is_json and upload.content_type == "multipart/form-data"


def test_a_recursive_schema_is_cut_where_it_recurses() -> None:
    # The category tree refers to itself; the cut accepts any value and says why.
    document = document_load(ERP_YAML)
    document["paths"]["/categories"]["post"] = {
        "operationId": "createCategory",
        "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Category"}}}},
        "responses": {"201": {"description": "ok"}},
    }
    parsed = {o.operation_id: o for o in document_parse(document).operations}
    schema = parsed["createCategory"].body.schema  # type: ignore[union-attr]
    assert schema["properties"]["children"]["items"] == {"x-recursive": "Category"}


def test_an_openapi_31_json_document() -> None:
    [operation] = document_parse(document_load(CATALOGUE_31)).operations
    assert (operation.operation_id, operation.method, operation.path) == ("putProduct", "PUT", "/products/{sku}")
    assert operation.body is not None
    assert operation.body.schema["properties"]["price"] == {"type": ["number", "null"], "exclusiveMinimum": 0}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", 'must be a mapping with an "openapi" field'),
        ("title: not an API\n", 'it has no "openapi" field'),
        ('{"swagger": "2.0", "paths": {}}', "Swagger 2.0 document; convert it to OpenAPI 3"),
        ('{"openapi": "2.5.0", "paths": {}}', "OpenAPI 2.5.0 is not supported"),
        ('{"openapi": "3.2.0", "paths": {}}', "OpenAPI 3.2.0 is not supported: give an OpenAPI 3.0 or 3.1"),
        ('{"openapi": "3.0.3", "paths": {}}', "lists no operation the HTTP request step can call"),
        ('{"openapi": "3.0.3", "paths": {"/x": {"head": {}}}}', "lists no operation"),
        ("openapi: 3.0.0\npaths: [\n", "neither JSON nor valid YAML (line"),
        (b"\xff\xfe\x00bad", "not text (UTF-8)"),
        ("   ", "The document is empty."),
    ],
)
def test_documents_that_are_not_usable_openapi_are_refused_clearly(text: str | bytes, expected: str) -> None:
    assert expected in _refused(text)


def test_a_reference_to_another_file_or_a_url_is_refused_by_name() -> None:
    for ref in ("common.yaml#/components/schemas/Money", "https://schemas.example.com/money.json"):
        document = document_load(ERP_YAML)
        document["components"]["schemas"]["Line"]["properties"]["unit_price"] = {"$ref": ref}
        message = _refused(json.dumps(document))
        assert f'refers to "{ref}"' in message
        assert "#/components/schemas/Line/properties/unit_price" in message
        assert "bundle it into one file" in message


def test_a_reference_to_nothing_is_refused() -> None:
    document = document_load(ERP_YAML)
    document["components"]["schemas"]["Invoice"]["properties"]["amount"] = {"$ref": "#/components/schemas/Cash"}
    assert 'The reference "#/components/schemas/Cash" points at nothing' in _refused(json.dumps(document))


def test_size_limits() -> None:
    padding = "#" + "x" * 100 + "\n"
    large = ERP_YAML + padding * (MAX_DOCUMENT_BYTES // len(padding) + 1)
    assert "too large: 2.0 MB, the most is 2 MB" in _refused(large)
    many = {
        "openapi": "3.0.0",
        "paths": {f"/r{n}": {"get": {"responses": {}}} for n in range(MAX_OPERATIONS + 1)},
    }
    assert f"more than {MAX_OPERATIONS} operations" in _refused(json.dumps(many))


def test_schemas_that_explode_once_resolved_are_refused() -> None:
    # Each level refers to the one below twice: 2**30 parts once resolved, from a few lines.
    schemas: dict[str, Any] = {"L0": {"type": "string"}}
    for level in range(1, 31):
        below = {"$ref": f"#/components/schemas/L{level - 1}"}
        schemas[f"L{level}"] = {"type": "object", "properties": {"a": below, "b": below}}
    document = {
        "openapi": "3.1.0",
        "paths": {
            "/x": {
                "post": {
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/L30"}}}},
                    "responses": {},
                }
            }
        },
        "components": {"schemas": schemas},
    }
    assert "too large once their references are resolved" in _refused(json.dumps(document))


def test_yaml_aliases_are_refused() -> None:
    text = "openapi: 3.0.0\nx: &a [1, 2]\ny: *a\npaths: {}\n"
    assert "YAML aliases" in _refused(text)


# --- building requests ------------------------------------------------------------------------------------------


def test_path_parameters_are_url_encoded_and_queries_built() -> None:
    operations = _erp()
    built = build_request(operations["getPurchaseOrder"], parameters={"po_number": "PO 2024/17?x"}, body_fields={})
    assert (built.method, built.url, built.body) == ("GET", "/purchase-orders/PO%202024%2F17%3Fx", "")
    listing = build_request(
        operations["listInvoices"],
        parameters={"X-Tenant": "acme", "status": "open", "limit": "25", "tag": '["urgent", "q3 close"]'},
        body_fields={},
    )
    assert listing.url == "/invoices?status=open&limit=25&tag=urgent&tag=q3+close"
    assert listing.headers == {"X-Tenant": "acme"}


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"status": "open"}, 'parameter "X-Tenant" (header) is required by the operation, but its value is empty'),
        ({"X-Tenant": "acme", "limit": "ten"}, "parameter \"limit\" (query): expected a whole number, got 'ten'"),
        ({"X-Tenant": "acme", "limit": "500"}, 'parameter "limit" (query): 500 is greater than the maximum of 100'),
        ({"X-Tenant": "acme", "status": "late"}, "parameter \"status\" (query): 'late' is not one of"),
        ({"X-Tenant": "acme\r\nX-Evil: 1"}, "a header value must be one line"),
    ],
)
def test_parameters_that_do_not_fit_are_named(parameters: dict[str, str], expected: str) -> None:
    with pytest.raises(RequestInvalid) as refused:
        build_request(_erp()["listInvoices"], parameters=parameters, body_fields={})
    assert expected in refused.value.message


def test_body_fields_are_typed_by_the_schema() -> None:
    built = build_request(
        _erp()["createInvoice"],
        parameters={"X-Tenant": "acme"},
        body_fields={
            "number": "INV-2024-001",
            "supplier_id": "42",
            "amount": "1234.50",
            "paid": "False",
            "notes": "",  # empty: not sent
            "lines": "[{'sku': 'A-1', 'quantity': 2, 'unit_price': 617.25}]",  # as a template prints a list
        },
    )
    assert built.content_type == "application/json"
    assert json.loads(built.body) == {
        "number": "INV-2024-001",
        "supplier_id": 42,
        "amount": 1234.5,
        "paid": False,
        "lines": [{"sku": "A-1", "quantity": 2, "unit_price": 617.25}],
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"number": "INV-1", "supplier_id": "42"}, "body: 'amount' is a required property"),
        (
            {"number": "INV-1", "supplier_id": "42", "amount": "0"},
            "body.amount: 0 is less than or equal to the minimum",
        ),
        ({"number": "INV-1", "supplier_id": "x", "amount": "1"}, 'body field "supplier_id": expected a whole number'),
        ({"number": "INV-1", "supplier_id": "4", "amount": "1", "currency": "CHF"}, "body.currency: 'CHF' is not one"),
        (
            {"number": "INV-1", "supplier_id": "4", "amount": "1", "lines": '[{"sku": "A", "quantity": 0}]'},
            "body.lines.0.quantity: 0 is less than the minimum of 1",
        ),
        ({"number": "INV-1", "supplier_id": "4", "amount": "1", "paid": "maybe"}, "expected true or false"),
        ({"discount": "5"}, 'body field "discount" is not a field of the operation\'s body'),
        ({}, "the operation requires a request body, but its fields are empty"),
    ],
)
def test_a_body_that_does_not_fit_its_schema_is_named_before_sending(fields: dict[str, str], expected: str) -> None:
    with pytest.raises(RequestInvalid) as refused:
        build_request(_erp()["createInvoice"], parameters={"X-Tenant": "acme"}, body_fields=fields)
    assert expected in refused.value.message


def test_a_raw_body_for_nested_bodies_is_checked_too() -> None:
    pay = _erp()["payInvoice"]
    built = build_request(pay, parameters={"invoice_id": "7"}, body_fields={}, raw_body='[{"amount": 10}]')
    assert (built.url, json.loads(built.body)) == ("/invoices/7/payments", [{"amount": 10}])
    with pytest.raises(RequestInvalid, match=r"0\.amount: -1 is less than or equal to the minimum"):
        build_request(pay, parameters={"invoice_id": "7"}, body_fields={}, raw_body='[{"amount": -1}]')
    with pytest.raises(RequestInvalid, match="the raw body is not JSON"):
        build_request(pay, parameters={"invoice_id": "7"}, body_fields={}, raw_body="amount=1")
    with pytest.raises(RequestInvalid, match="takes no request body"):
        build_request(_erp()["health"], parameters={}, body_fields={}, raw_body="{}")


def test_typed_values_and_descriptions() -> None:
    assert typed_value("12.0", {"type": "integer"}) == 12
    assert typed_value("7", {"type": "number"}) == 7 and typed_value("7.5", {"type": "number"}) == 7.5
    assert typed_value("null", {"type": ["number", "null"]}) is None
    assert typed_value("yes", {"type": "boolean"}) is True
    assert typed_value('{"a": 1}', {}) == {"a": 1} and typed_value("plain", {}) == "plain"
    with pytest.raises(ValueError, match="finite"):
        typed_value("nan", {"type": "number"})
    assert describe_schema({"type": "integer", "minimum": 1, "maximum": 100}) == "Whole number, 1 to 100"
    assert describe_schema({"type": "string", "enum": ["open", "paid"]}) == "One of: open, paid"
    assert describe_schema({"type": "string", "format": "date"}) == "Text (date)"
