"""Documents as run inputs: storing a PDF (its text page by page, and what is refused), where a range of its
text sits on its pages, its pages as images, and runs started with one from the Run form and over the API; and
the other formats (Word, Markdown, CSV...) stored the same way, with one page and no page images.

Every document here comes from tests.support.documents (PDFs written byte by byte), so the reader under test
never reads a file made by itself.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from apps.audit.models import AuditEvent
from apps.core.exceptions import ValidationFailed
from apps.runs.documents import (
    MAX_BYTES,
    document_input_value,
    document_page_png,
    document_page_sizes,
    document_store,
    document_text_boxes,
    input_document_for_run,
)
from apps.runs.models import InputDocument, Run
from apps.runs.services import run_start
from apps.workflows.input_schema import input_schema_errors, input_validate
from apps.workflows.run_form import rows_from_schema, schema_from_rows
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.documents import PAGE_HEIGHT, PAGE_WIDTH, SAMPLE_CSV, SAMPLE_MARKDOWN, docx_of, pdf_of
from tests.support.engine import drive

__all__ = ["pdf_of"]  # tests.approvals reads it from here

CLAIM_PAGES = (
    ["Claimant: Daniel Park. Policy POL-48230.", "My bicycle was stolen from our locked garage."],
    ["I reported it to the police.", "The bicycle cost EUR 640.00 last spring."],
)


def refusal(actor: Any, data: bytes) -> str:
    with pytest.raises(ValidationFailed) as refused:
        document_store(actor=actor, name="claim.pdf", data=data)
    assert refused.value.fields == {"file": [refused.value.message]}
    return refused.value.message


# --- storing ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_pdf_is_stored_with_its_text_page_by_page(analyst):
    data = pdf_of(*CLAIM_PAGES)
    document = document_store(actor=analyst, name="C:\\scans\\claim.pdf", data=data)
    assert (document.name, document.page_count, document.size) == ("claim.pdf", 2, len(data))
    assert document.sha256 == hashlib.sha256(data).hexdigest()
    assert bytes(document.data) == data
    pages = [document.text[start:end] for start, end in document.page_offsets]
    assert pages == ["\n".join(lines) for lines in CLAIM_PAGES]
    assert document.text == InputDocument.PAGE_SEPARATOR.join(pages)
    event = AuditEvent.objects.get(verb="document.stored")
    assert json.loads(event.data) == {
        "name": "claim.pdf",
        "sha256": document.sha256,
        "pages": 2,
        "size": len(data),
        "format": "pdf",
    }
    assert document.content_type == "application/pdf"


@pytest.mark.django_db
def test_the_same_file_is_stored_once_per_person(analyst, reviewer):
    data = pdf_of(*CLAIM_PAGES)
    first = document_store(actor=analyst, name="claim.pdf", data=data)
    assert document_store(actor=analyst, name="again.pdf", data=data) == first
    theirs = document_store(actor=reviewer, name="claim.pdf", data=data)
    assert theirs != first and theirs.uploaded_by == reviewer
    assert InputDocument.objects.count() == 2
    assert AuditEvent.objects.filter(verb="document.stored").count() == 2


@pytest.mark.django_db
def test_what_is_not_a_readable_pdf_with_text_is_refused_with_its_reason(analyst):
    assert refusal(analyst, b"Claimant: Daniel Park") == (
        '"claim.pdf" is not a PDF: its name ends in .pdf, but it holds something else.'
    )
    assert (
        refusal(analyst, b"%PDF-1.4\nnothing else") == '"claim.pdf" is not a PDF that can be read: it may be damaged.'
    )
    assert refusal(analyst, pdf_of(["x"], drawing_only=True)) == (
        '"claim.pdf" has no text: it looks scanned, and AIOS does not read scans yet.'
    )
    assert refusal(analyst, pdf_of(*CLAIM_PAGES, encrypt=True)) == (
        '"claim.pdf" is protected by a password: save it without the password and upload it again.'
    )
    assert refusal(analyst, pdf_of(*CLAIM_PAGES, password="s3cret")) == (
        '"claim.pdf" is protected by a password: save it without the password and upload it again.'
    )
    assert refusal(analyst, pdf_of(*[["a page"]] * 201)) == (
        '"claim.pdf" has 201 pages: AIOS reads documents of at most 200 pages.'
    )
    too_big = pdf_of(*CLAIM_PAGES) + b"%" * (MAX_BYTES + 1)
    assert refusal(analyst, too_big) == '"claim.pdf" is 20.1 MB: AIOS reads documents of at most 20 MB.'
    assert not InputDocument.objects.exists()


# --- where text sits, and page images ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_range_of_the_text_maps_to_line_boxes_on_its_pages(analyst):
    document = document_store(actor=analyst, name="claim.pdf", data=pdf_of(*CLAIM_PAGES))
    start = document.text.index("EUR 640.00")
    [on_page] = document_text_boxes(document, start, start + len("EUR 640.00"))
    assert (on_page.page, on_page.page_width, on_page.page_height) == (2, PAGE_WIDTH, PAGE_HEIGHT)
    [box] = on_page.boxes
    # After "The bicycle cost " (about 89 pt of Helvetica 12 from the margin at 72 pt), about 65 pt wide; on the
    # second line, whose baseline is 16 pt below the first's at 720 pt: 88 pt from the top of the page.
    assert 155 < box.x < 170 and 60 < box.width < 72
    assert 72 < box.y < 88 < box.y + box.height < 92
    # A range across two lines and the page break: one box per line, on each page it touches.
    start = document.text.index("locked garage")
    end = document.text.index("police") + len("police")
    spans = document_text_boxes(document, start, end)
    assert [(span.page, len(span.boxes)) for span in spans] == [(1, 1), (2, 1)]
    assert document_text_boxes(document, 0, 0) == []


@pytest.mark.django_db
def test_a_page_renders_as_a_png_1000_pixels_wide_and_is_cached(analyst, settings, tmp_path):
    settings.AIOS_DATA_DIR = tmp_path
    document = document_store(actor=analyst, name="claim.pdf", data=pdf_of(*CLAIM_PAGES))
    png = document_page_png(document, 2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == 1000 and abs(height - 1000 * PAGE_HEIGHT / PAGE_WIDTH) < 1
    [cached] = list(Path(tmp_path, "page-images").rglob("*.png"))
    assert cached.read_bytes() == png and cached.name == f"{document.sha256}-2-1000.png"
    assert document_page_png(document, 2) == png
    with pytest.raises(ValueError):
        document_page_png(document, 3)


# --- the input schema and the run form designer ----------------------------------------------------------------

CLAIM_SCHEMA = {
    "type": "object",
    "properties": {
        "claim": {"type": "object", "format": "document", "title": "Claim (PDF)"},
        "note": {"type": "string", "title": "Note", "minLength": 3},
    },
    "required": ["claim", "note"],
    "x-order": ["claim", "note"],
}


def test_a_document_field_is_part_of_the_input_schema_and_the_designer():
    assert input_schema_errors(CLAIM_SCHEMA) == []
    assert input_schema_errors({"type": "object", "properties": {"x": {"type": "object"}}}) == [
        'input schema: field "x" is an object, and only documents (files) are supported'
    ]
    rows = rows_from_schema(CLAIM_SCHEMA)
    assert [(row.name, row.kind) for row in rows] == [("claim", "document"), ("note", "short_text")]
    schema, valid = schema_from_rows(rows)
    assert valid and schema["properties"]["claim"] == {"type": "object", "format": "document", "title": "Claim (PDF)"}
    rows[0].default = "x"
    assert not schema_from_rows(rows)[1] and rows[0].errors == [
        "A document has no default: it is uploaded with each run."
    ]


def test_a_run_input_names_its_document_with_its_text():
    value = {"document": 3, "name": "claim.pdf", "sha256": "0" * 64, "pages": 2, "text": "Policy POL-48230"}
    assert input_validate(CLAIM_SCHEMA, {"claim": value, "note": "abc"}) == ({"claim": value, "note": "abc"}, {})
    _, errors = input_validate(CLAIM_SCHEMA, {"claim": {"document": 3}, "note": "abc"})
    assert errors == {"claim": ["Upload the document as a file: PDF, Word (.docx), HTML, Markdown, plain text or CSV."]}


# --- runs with a document --------------------------------------------------------------------------------------


@pytest.fixture
def document_workflow(analyst, team):
    """A published workflow whose input is a claim PDF and a note; its one step reads the document's input."""
    workflow = workflow_create(actor=analyst, name="PDF claims", team=team)
    graph = {
        "steps": [
            {
                "key": "read",
                "type": "data.transform",
                "config": {"fields": {"pages": "input.claim.pages", "name": "input.claim.name"}},
            }
        ]
    }
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=CLAIM_SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_run_form_takes_a_pdf_and_the_run_reads_its_text(analyst, document_workflow):
    url = reverse("runs:create", args=[document_workflow.slug])
    page = browser(analyst).get(url).content.decode()
    assert 'enctype="multipart/form-data"' in page
    assert 'type="file" name="claim"' in page
    accept = page.split('type="file" name="claim"', 1)[1].split('accept="', 1)[1].split('"', 1)[0]
    assert {"application/pdf", ".pdf", ".docx", "text/html", ".md", "text/plain", ".csv"} <= set(accept.split(","))
    assert '<label for="id_claim">Claim (PDF)' in page
    upload = SimpleUploadedFile("claim.pdf", pdf_of(*CLAIM_PAGES), content_type="application/pdf")
    response = browser(analyst).post(url, {"claim": upload, "note": "Bike theft"})
    assert response.status_code == 302
    run = Run.objects.get(workflow=document_workflow)
    document = InputDocument.objects.get()
    assert run.inputs["claim"] == {
        "document": document.pk,
        "name": "claim.pdf",
        "sha256": document.sha256,
        "pages": 2,
        "text": document.text,
    }
    assert "EUR 640.00" in run.inputs["claim"]["text"]
    drive(run)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert run.step_runs.get().output == {"pages": 2, "name": "claim.pdf"}


@pytest.mark.django_db
def test_a_bad_upload_is_a_field_error_and_a_good_one_is_kept_while_other_fields_are_fixed(analyst, document_workflow):
    url = reverse("runs:create", args=[document_workflow.slug])
    scan = SimpleUploadedFile("scan.pdf", pdf_of(["x"], drawing_only=True), content_type="application/pdf")
    response = browser(analyst).post(url, {"claim": scan, "note": "Bike theft"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "&quot;scan.pdf&quot; has no text: it looks scanned, and AIOS does not read scans yet." in page
    assert 'value="Bike theft"' in page
    assert not Run.objects.exists()

    good = SimpleUploadedFile("claim.pdf", pdf_of(*CLAIM_PAGES), content_type="application/pdf")
    response = browser(analyst).post(url, {"claim": good, "note": "no"})
    assert response.status_code == 400
    document = InputDocument.objects.get()
    page = response.content.decode()
    assert f'<input type="hidden" name="claim-document" value="{document.pk}">' in page
    assert "Uploaded: <strong>claim.pdf</strong> (2 pages)" in page
    assert "This field is required." not in page
    response = browser(analyst).post(url, {"claim-document": str(document.pk), "note": "Bike theft"})
    assert response.status_code == 302
    assert Run.objects.get().inputs["claim"]["document"] == document.pk


@pytest.mark.django_db
def test_the_run_form_keeps_no_document_of_someone_else(analyst, reviewer, document_workflow):
    theirs = document_store(actor=reviewer, name="theirs.pdf", data=pdf_of(*CLAIM_PAGES))
    url = reverse("runs:create", args=[document_workflow.slug])
    response = browser(analyst).post(url, {"claim-document": str(theirs.pk), "note": "Bike theft"})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert not Run.objects.exists()


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.django_db
def test_the_api_uploads_a_pdf_and_starts_a_run_naming_it(analyst, document_workflow):
    data = pdf_of(*CLAIM_PAGES)
    response = api(analyst).post("/api/documents/", {"file": SimpleUploadedFile("claim.pdf", data)}, format="multipart")
    assert response.status_code == 201, response.content
    document = InputDocument.objects.get()
    assert response.json() == {
        "id": document.pk,
        "name": "claim.pdf",
        "sha256": hashlib.sha256(data).hexdigest(),
        "pages": 2,
        "size": len(data),
        "content_type": "application/pdf",
    }
    # Only the id counts: a name or text sent along is replaced by the stored document's.
    claim = {"document": document.pk, "name": "forged.pdf", "text": "Policy POL-00000"}
    response = api(analyst).post(
        f"/api/workflows/{document_workflow.slug}/runs/", {"inputs": {"claim": claim, "note": "Bike"}}, format="json"
    )
    assert response.status_code == 201, response.content
    inputs = Run.objects.get().inputs
    assert (inputs["claim"]["name"], inputs["claim"]["text"]) == ("claim.pdf", document.text)


@pytest.mark.django_db
def test_the_api_refuses_bad_uploads_and_documents_of_someone_else(analyst, reviewer, document_workflow):
    response = api(analyst).post(
        "/api/documents/", {"file": SimpleUploadedFile("claim.pdf", b"not a pdf")}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["fields"] == {
        "file": ['"claim.pdf" is not a PDF: its name ends in .pdf, but it holds something else.']
    }
    theirs = document_store(actor=reviewer, name="claim.pdf", data=pdf_of(*CLAIM_PAGES))
    url = f"/api/workflows/{document_workflow.slug}/runs/"
    for claim, message in [
        ({"document": theirs.pk}, f"No document {theirs.pk}: upload the file with POST /api/documents/ first."),
        ({"document": 999999}, "No document 999999: upload the file with POST /api/documents/ first."),
        ("Policy POL-48230", 'Name an uploaded document: {"document": <id from POST /api/documents/>}.'),
    ]:
        response = api(analyst).post(url, {"inputs": {"claim": claim, "note": "Bike"}}, format="json")
        assert response.status_code == 400
        assert response.json()["fields"] == {"claim": [message]}
    assert not Run.objects.exists()


# --- other formats ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_word_markdown_and_csv_files_are_stored_as_one_page_of_text_without_page_images(analyst, document_workflow):
    uploads = [
        ("policy.docx", docx_of(("heading", 1, "Travel"), ("paragraph", "Book the cheapest fare."))),
        ("handbook.md", SAMPLE_MARKDOWN.encode()),
        ("products.csv", SAMPLE_CSV.encode()),
    ]
    expected_types = [
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "text/markdown",
        "text/csv",
    ]
    for (name, data), content_type in zip(uploads, expected_types, strict=True):
        # Browsers send what they guess; the bytes and the name decide.
        upload = SimpleUploadedFile(name, data, content_type="application/octet-stream")
        response = api(analyst).post("/api/documents/", {"file": upload}, format="multipart")
        assert response.status_code == 201, response.content
        body = response.json()
        document = InputDocument.objects.get(pk=body["id"])
        assert (body["content_type"], body["pages"], body["name"]) == (content_type, 1, name)
        assert document.page_offsets == [[0, len(document.text)]]
        assert (
            json.loads(AuditEvent.objects.filter(verb="document.stored").latest("pk").data)["format"]
            == ({"policy.docx": "docx", "handbook.md": "markdown", "products.csv": "csv"}[name])
        )
        # Page images and evidence boxes are a PDF's: another format has none, and the reviewer reads its text.
        assert document_page_sizes(document) == [] and document_text_boxes(document, 0, 5) == []
        with pytest.raises(ValueError, match="is not a PDF"):
            document_page_png(document, 1)
        inputs = {"claim": document_input_value(document), "note": "abc"}
        run = run_start(actor=analyst, workflow=document_workflow, inputs=inputs)[0]
        run = drive(Run.objects.get(pk=run.pk))
        assert run.status == Run.Status.SUCCEEDED
        assert run.inputs["claim"]["text"] == document.text
        assert input_document_for_run(analyst, run=run, field_name="claim") is None
    assert "Columns: sku; name; price; description" in InputDocument.objects.get(name="products.csv").text
    pdf = document_store(actor=analyst, name="claim.pdf", data=pdf_of(*CLAIM_PAGES))
    run = run_start(
        actor=analyst, workflow=document_workflow, inputs={"claim": document_input_value(pdf), "note": "abc"}
    )[0]
    assert input_document_for_run(analyst, run=run, field_name="claim") == pdf


@pytest.mark.django_db
def test_a_file_of_the_wrong_type_or_too_large_is_refused_with_the_reason_and_the_limit(analyst, document_workflow):
    png = SimpleUploadedFile("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, content_type="image/png")
    response = api(analyst).post("/api/documents/", {"file": png}, format="multipart")
    assert response.status_code == 400
    assert response.json()["fields"] == {
        "file": ['"photo.png" is an image: AIOS reads documents with text, not images.']
    }
    program = SimpleUploadedFile("setup.exe", b"MZ\x90\x00binary", content_type="application/octet-stream")
    response = api(analyst).post("/api/documents/", {"file": program}, format="multipart")
    assert response.json()["fields"]["file"] == [
        '"setup.exe" is not a document AIOS reads: upload a PDF, Word (.docx), HTML, Markdown, plain text or CSV file.'
    ]
    big = SimpleUploadedFile("minutes.txt", b"a" * (MAX_BYTES + 1), content_type="text/plain")
    response = api(analyst).post("/api/documents/", {"file": big}, format="multipart")
    assert response.json()["fields"] == {"file": ['"minutes.txt" is 20.1 MB: AIOS reads documents of at most 20 MB.']}
    big.seek(0)
    response = browser(analyst).post(
        reverse("runs:create", args=[document_workflow.slug]), {"claim": big, "note": "abc"}
    )
    assert response.status_code == 400
    assert "&quot;minutes.txt&quot; is 20.1 MB: AIOS reads documents of at most 20 MB." in response.content.decode()
    assert not InputDocument.objects.exists() and not Run.objects.exists()
