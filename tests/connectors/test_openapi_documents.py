"""An HTTP connection's OpenAPI document, stored and shown: loaded from a file or fetched from under the base URL
(through the SSRF guard, with the connection's authentication), refused with the reason and nothing saved when
it cannot be read, audited, removable unless published workflows call its operations; and its page by persona."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.connectors.models import OpenApiDocument, OpenApiOperation
from apps.connectors.openapi import (
    openapi_document_fetch,
    openapi_document_load,
    openapi_document_remove,
    operation_choices,
    operation_get,
    operations_in_use,
)
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from tests.connectors.helpers import allow_loopback, make_connection
from tests.connectors.openapi_erp import CATALOGUE_31, ERP_YAML

pytestmark = pytest.mark.django_db
TOKEN = "tok-openapi-0001"


class DocumentServer:
    """Serves documents at paths ({path: (status, body)}) and records the headers of each request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes]] = {}
        self.received: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.received.append({name.lower(): value for name, value in self.headers.items()})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    status, body = 401, b'{"error": "who are you?"}'
                else:
                    status, body = outer.routes.get(self.path, (404, b"not here"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def documents() -> Iterator[DocumentServer]:
    server = DocumentServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def erp(team: Any, documents: DocumentServer) -> Any:
    return make_connection(
        team,
        label="ERP API",
        config={"base_url": f"{documents.url}/api/v1/", "auth": "bearer", "headers": {"X-Tenant": "acme"}},
        secrets={"token": TOKEN},
    )


def _load(connection: Any, actor: Any = None, text: str = ERP_YAML) -> OpenApiDocument:
    document, _ = openapi_document_load(
        actor=actor, connection=connection, data=text, source_kind="file", source="erp.yaml"
    )
    return document


def test_an_admin_loads_a_file_and_the_operations_are_stored_and_audited(erp: Any, admin_user_role: Any) -> None:
    document = _load(erp, admin_user_role)
    assert (document.title, document.api_version, document.openapi_version) == ("Acme ERP API", "1.4.0", "3.0.3")
    assert document.source_kind == "file" and document.source == "erp.yaml" and len(document.sha256) == 64
    assert document.operations.count() == 10
    assert operation_choices("erp")[:2] == [  # type: ignore[index]
        ("listInvoices", "GET /invoices · List invoices"),
        ("createInvoice", "POST /invoices · Create an invoice"),
    ]
    created = operation_get("erp", "createInvoice")
    assert created is not None and created.body is not None and created.body.required
    # The body's fields in the document's order, though the database keeps object keys in an order of its own.
    assert [field.name for field in created.body.fields()] == [
        "number",
        "supplier_id",
        "amount",
        "currency",
        "paid",
        "due_date",
        "notes",
        "lines",
    ]
    event = AuditEvent.objects.get(verb="connection.openapi_loaded")
    assert event.actor_id == admin_user_role.pk
    assert '"operations":10' in event.data and "Invoice" not in event.data  # counts and hashes, not the text
    # A newer document replaces the old one whole.
    _load(erp, admin_user_role, CATALOGUE_31)
    assert list(OpenApiOperation.objects.values_list("operation_id", flat=True)) == ["putProduct"]
    assert OpenApiDocument.objects.count() == 1


def test_a_document_that_cannot_be_read_changes_nothing(erp: Any) -> None:
    _load(erp)
    with pytest.raises(ValidationFailed, match=r"Swagger 2\.0"):
        _load(erp, text='{"swagger": "2.0"}')
    with pytest.raises(ValidationFailed, match="outside itself"):
        _load(erp, text=ERP_YAML.replace("'#/components/schemas/Money'", "'money.yaml'"))
    assert OpenApiDocument.objects.get().title == "Acme ERP API"
    assert OpenApiOperation.objects.count() == 10
    assert AuditEvent.objects.filter(verb="connection.openapi_loaded").count() == 1


def test_only_managers_load_and_only_http_connections_have_documents(erp: Any, analyst: Any, team: Any) -> None:
    with pytest.raises(Forbidden):
        _load(erp, analyst)
    mail = make_connection(team, name="mail", kind="smtp")
    with pytest.raises(ValidationFailed, match="Only HTTP connections"):
        _load(mail)
    assert not OpenApiDocument.objects.exists()


def test_fetching_uses_the_connection_and_the_ssrf_guard(erp: Any, documents: DocumentServer, settings: Any) -> None:
    documents.routes["/api/v1/openapi.yaml"] = (200, ERP_YAML.encode())
    # Loopback is a private address: refused before any request, unless an admin allowlisted it.
    with pytest.raises(ValidationFailed) as refused:
        openapi_document_fetch(actor=None, connection=erp, path="/openapi.yaml")
    assert "loopback" in refused.value.fields["path"][0]
    assert documents.received == [] and not OpenApiDocument.objects.exists()
    allow_loopback(settings)
    document, lost = openapi_document_fetch(actor=None, connection=erp, path="openapi.yaml")
    assert document.source_kind == "url" and document.source == "openapi.yaml" and lost == {}
    [request] = documents.received
    assert request["authorization"] == f"Bearer {TOKEN}" and request["x-tenant"] == "acme"
    assert "application/json" in request["accept"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/missing.json", "answered HTTP 404: not here"),
        ("https://elsewhere.example.com/openapi.json", "not a full URL"),
        ("", "Give a path"),
    ],
)
def test_fetch_refusals_name_the_path(erp: Any, settings: Any, path: str, expected: str) -> None:
    allow_loopback(settings)
    with pytest.raises(ValidationFailed) as refused:
        openapi_document_fetch(actor=None, connection=erp, path=path)
    assert expected in refused.value.fields["path"][0]
    assert not OpenApiDocument.objects.exists()


def test_an_answer_echoing_the_token_is_redacted(erp: Any, documents: DocumentServer, settings: Any) -> None:
    allow_loopback(settings)
    documents.routes["/api/v1/echo"] = (500, f"bad token {TOKEN}".encode())
    with pytest.raises(ValidationFailed) as refused:
        openapi_document_fetch(actor=None, connection=erp, path="/echo")
    assert TOKEN not in refused.value.message and "[secret]" in refused.value.message


def _publish_calling(analyst: Any, team: Any, operation: str) -> Any:
    from apps.workflows.services import workflow_create, workflow_draft_save, workflow_version_publish

    workflow = workflow_create(actor=analyst, name="Invoice posting", team=team)
    graph = {
        "steps": [
            {
                "key": "post",
                "type": "http.request",
                "config": {
                    "connection": "erp",
                    "operation": operation,
                    "parameters": {"X-Tenant": "acme"},
                    "body_fields": {"number": "INV-1", "supplier_id": "4", "amount": "10"},
                },
            }
        ]
    }
    workflow_draft_save(
        actor=analyst,
        workflow=workflow,
        graph=graph,
        input_schema={"type": "object", "properties": {}},
        expected_revision=None,
    )
    return workflow_version_publish(actor=analyst, version=workflow.versions.get(state="draft"))


def test_removal_is_refused_while_published_versions_call_its_operations(erp: Any, analyst: Any, team: Any) -> None:
    _load(erp)
    _publish_calling(analyst, team, "createInvoice")
    assert operations_in_use("erp") == {"createInvoice": ["Invoice posting"]}
    with pytest.raises(Conflict, match="Published versions of Invoice posting call operations"):
        openapi_document_remove(actor=None, connection=erp)
    # A newer document without the operation loads, and says which published workflows lose it.
    _, lost = openapi_document_load(actor=None, connection=erp, data=CATALOGUE_31, source_kind="file", source="c")
    assert lost == {"createInvoice": ["Invoice posting"]}


def test_removal_when_nothing_calls_it(erp: Any) -> None:
    _load(erp)
    openapi_document_remove(actor=None, connection=erp)
    assert not OpenApiDocument.objects.exists() and not OpenApiOperation.objects.exists()
    assert AuditEvent.objects.filter(verb="connection.openapi_removed").count() == 1
    assert operation_choices("erp") is None


# --- the page --------------------------------------------------------------------------------------------------


def test_the_page_lists_operations_for_users_and_the_forms_for_managers(
    client: Any, erp: Any, analyst: Any, admin_user_role: Any
) -> None:
    url = reverse("connectors:openapi", args=["erp"])
    client.force_login(analyst)
    empty = client.get(url).content.decode()
    assert "No OpenAPI document yet" in empty and "Load operations" not in empty
    _load(erp)
    page = client.get(url).content.decode()
    assert "Operations of ERP API" in page and "/purchase-orders/{po_number}" in page
    assert "Read a purchase order" in page and "createInvoice" in page and "Load operations" not in page
    assert client.post(url, {"action": "remove"}).status_code == 403
    client.force_login(admin_user_role)
    assert "Load a newer document" in client.get(url).content.decode()
    detail = client.get(reverse("connectors:detail", args=["erp"])).content.decode()
    assert "View its operations" in detail


def test_an_upload_through_the_page(client: Any, erp: Any, admin_user_role: Any) -> None:
    client.force_login(admin_user_role)
    url = reverse("connectors:openapi", args=["erp"])
    bad = SimpleUploadedFile("erp.json", b'{"openapi": "3.0.0", "paths": {"/x": {"$ref": "other.yaml#/x"}}}')
    refused = client.post(url, {"action": "upload", "document": bad})
    assert refused.status_code == 400
    assert "outside itself" in refused.content.decode() and not OpenApiDocument.objects.exists()
    good = SimpleUploadedFile("erp.yaml", ERP_YAML.encode(), content_type="application/yaml")
    response = client.post(url, {"action": "upload", "document": good}, follow=True)
    assert response.redirect_chain[-1][0] == url
    page = response.content.decode()
    assert "Loaded the OpenAPI document &quot;Acme ERP API&quot;: 10 operations." in page
    assert "Skipped HEAD /health" in page
    history = client.get(reverse("connectors:detail", args=["erp"])).content.decode()
    assert "Loaded the OpenAPI document &quot;Acme ERP API&quot; 1.4.0 (10 operations, from a file)" in history


def test_a_fetch_through_the_page_shows_the_reason_under_the_path(client: Any, erp: Any, admin_user_role: Any) -> None:
    client.force_login(admin_user_role)
    response = client.post(reverse("connectors:openapi", args=["erp"]), {"action": "fetch", "path": "/openapi.json"})
    assert response.status_code == 400
    assert "a loopback address; requests there are not allowed" in response.content.decode()


def test_other_kinds_have_no_openapi_page(client: Any, team: Any, admin_user_role: Any) -> None:
    make_connection(team, name="mail", kind="smtp")
    client.force_login(admin_user_role)
    assert client.get(reverse("connectors:openapi", args=["mail"])).status_code == 404


def test_loading_and_removing_by_persona(
    client: Any, erp: Any, analyst: Any, reviewer: Any, manager: Any, outsider: Any
) -> None:
    _load(erp)
    url = reverse("connectors:openapi", args=["erp"])
    upload = {"action": "upload", "document": SimpleUploadedFile("c.json", CATALOGUE_31.encode())}
    for persona, expected in ((analyst, 403), (reviewer, 403), (manager, 404), (outsider, 404)):
        client.force_login(persona)
        for data in ({"action": "remove"}, {"action": "fetch", "path": "/openapi.json"}, upload):
            assert client.post(url, data).status_code == expected, (persona, data)
    client.logout()
    assert client.post(url, {"action": "remove"}).status_code == 302
    assert OpenApiDocument.objects.get().title == "Acme ERP API"
