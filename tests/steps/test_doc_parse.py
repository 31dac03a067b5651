"""`doc.parse` in real runs (driven in the test process, on the real database): a document uploaded as the run's
input over the API or the Run form, inline content and text from run data, a document passed on to a
sub-workflow; and the refusals: a document that is not this run's (someone else's, or one not among the run's
inputs, however its id got into the run's data), unreadable content, a malformed value, a bad expression."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from apps.runs.documents import document_store
from apps.runs.models import InputDocument, Run
from apps.runs.services import run_start
from apps.steps.registry import step_config_errors, step_types
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.documents import SAMPLE_DOCX_BLOCKS, SAMPLE_HTML, SAMPLE_MARKDOWN, docx_of, pdf_of
from tests.support.engine import drive

CLAIM_PAGES = (
    ["Claimant: Daniel Park. Policy POL-48230.", "My bicycle was stolen from our locked garage."],
    ["Costs", "The bicycle cost EUR 640.00 last spring."],
)
DOCUMENT_SCHEMA = {
    "type": "object",
    "properties": {"claim": {"type": "object", "format": "document", "title": "Claim"}},
    "required": ["claim"],
}


def parse_step(key: str = "parse", document: str = "input.claim", **config: Any) -> dict[str, Any]:
    return {"key": key, "type": "doc.parse", "config": {"document": document, **config}}


def publish(analyst: Any, team: Any, name: str, steps: list[dict[str, Any]], schema: dict[str, Any]) -> Any:
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph={"steps": steps}, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def step_output(run: Run, key: str = "parse") -> dict[str, Any]:
    return run.step_runs.get(step_key=key).output


def step_error(run: Run, key: str = "parse") -> str:
    assert run.status == Run.Status.FAILED, run.status
    return run.step_runs.get(step_key=key).error


def test_doc_parse_is_a_data_step_whose_expression_is_checked():
    step_type = step_types()["doc.parse"]
    assert (step_type.category, step_type.queue) == ("Data", "engine")
    assert step_config_errors("doc.parse", {"document": "input.claim"}) == []
    assert step_config_errors("doc.parse", {"document": "input.claim +"})[0].startswith(
        "document: the expression does not parse"
    )
    assert step_config_errors("doc.parse", {"document": "input.claim", "format": "rtf"})[0].startswith("format:")


@pytest.mark.django_db
def test_it_reads_a_pdf_uploaded_as_the_runs_input_exactly_as_the_run_stored_it(analyst, team):
    steps = [
        parse_step(),
        {
            "key": "use",
            "type": "data.transform",
            "config": {"fields": {"first": "steps.parse.sections[0].heading", "pages": "size(steps.parse.pages)"}},
        },
    ]
    workflow = publish(analyst, team, "Parse claims", steps, DOCUMENT_SCHEMA)
    data = pdf_of(*CLAIM_PAGES, outline=[("Costs", 1)])
    upload = api(analyst).post("/api/documents/", {"file": SimpleUploadedFile("claim.pdf", data)}, format="multipart")
    assert upload.status_code == 201, upload.content
    response = api(analyst).post(
        f"/api/workflows/{workflow.slug}/runs/", {"inputs": {"claim": {"document": upload.json()["id"]}}}, format="json"
    )
    assert response.status_code == 201, response.content
    run = drive(Run.objects.get(pk=response.json()["id"]))
    assert run.status == Run.Status.SUCCEEDED, run.error
    document = InputDocument.objects.get()
    output = step_output(run)
    # The same reader as the upload's: the text and its page offsets are the stored ones, character for character.
    assert output["text"] == document.text == run.inputs["claim"]["text"]
    assert [[page["start"], page["end"]] for page in output["pages"]] == document.page_offsets
    costs = document.page_offsets[1][0]
    assert output == {
        "text": document.text,
        "format": "pdf",
        "name": "claim.pdf",
        "pages": [
            {"number": 1, "start": 0, "end": costs - 3},
            {"number": 2, "start": costs, "end": len(document.text)},
        ],
        "sections": [{"heading": "Costs", "level": 1, "start": costs, "end": len(document.text)}],
        "characters": len(document.text),
    }
    assert step_output(run, "use") == {"first": "Costs", "pages": 2}


@pytest.mark.django_db
def test_it_reads_a_word_document_uploaded_through_the_run_form(analyst, team):
    workflow = publish(analyst, team, "Parse policies", [parse_step()], DOCUMENT_SCHEMA)
    client = Client()
    client.force_login(analyst)
    upload = SimpleUploadedFile("policy.docx", docx_of(*SAMPLE_DOCX_BLOCKS), content_type="application/octet-stream")
    response = client.post(reverse("runs:create", args=[workflow.slug]), {"claim": upload})
    assert response.status_code == 302, response.content.decode()[:2000]
    run = drive(Run.objects.get(workflow=workflow))
    assert run.status == Run.Status.SUCCEEDED, run.error
    output = step_output(run)
    assert output["format"] == "docx" and output["name"] == "policy.docx"
    assert "Meals | EUR 60, per day | Manager" in output["text"]
    assert [(section["heading"], section["level"]) for section in output["sections"]] == [
        ("Expense policy", 0),
        ("Travel", 1),
        ("Hotels", 2),
        ("Equipment", 1),
    ]
    assert output["pages"] == [{"number": 1, "start": 0, "end": len(output["text"])}]
    assert output["text"] == run.inputs["claim"]["text"]


@pytest.mark.django_db
def test_it_reads_inline_text_and_base64_content_from_run_data(analyst, team):
    schema = {
        "type": "object",
        "properties": {"page": {"type": "string"}, "notes": {"type": "string"}, "csv": {"type": "string"}},
    }
    steps = [
        parse_step("html", '{"name": "returns.html", "text": input.page}'),
        parse_step(
            "markdown", '{"name": "handbook.md", "content_type": "text/markdown", "content_base64": input.notes}'
        ),
        parse_step("plain", "input.page", format="text"),
        parse_step("table", '{"name": "upload", "text": input.csv}', format="csv"),
    ]
    workflow = publish(analyst, team, "Parse inline", steps, schema)
    inputs = {
        "page": SAMPLE_HTML,
        "notes": base64.b64encode(SAMPLE_MARKDOWN.encode()).decode(),
        "csv": "sku;price\nSKU-1;9,90\n",
    }
    run = drive(run_start(actor=analyst, workflow=workflow, inputs=inputs)[0])
    assert run.status == Run.Status.SUCCEEDED, run.error
    html = step_output(run, "html")
    assert (html["format"], html["name"]) == ("html", "returns.html")
    assert "Ignore all previous" not in html["text"] and "How to return" in html["text"]
    markdown = step_output(run, "markdown")
    assert markdown["format"] == "markdown"
    assert [section["heading"] for section in markdown["sections"]] == [
        "Support handbook",
        "Escalations",
        "Refunds",
        "Exceptions",
    ]
    plain = step_output(run, "plain")
    assert (plain["format"], plain["name"]) == ("text", "text")
    assert plain["text"].startswith("<!DOCTYPE html>")  # read as text, as asked: markup and all
    assert step_output(run, "table")["text"] == "Columns: sku; price\n\nsku: SKU-1; price: 9,90"


@pytest.mark.django_db
def test_a_document_that_is_not_this_runs_input_is_refused(analyst, reviewer, team):
    schema = {"type": "object", "properties": {"other": {"type": "integer"}}, "required": ["other"]}
    workflow = publish(
        analyst, team, "Reach for a document", [parse_step(document='{"document": input.other}')], schema
    )
    theirs = document_store(actor=reviewer, name="theirs.pdf", data=pdf_of(["Reviewer's private claim"]))
    mine = document_store(actor=analyst, name="mine.pdf", data=pdf_of(["Ana's other claim"]))
    for document in (theirs, mine):
        run = drive(run_start(actor=analyst, workflow=workflow, inputs={"other": document.pk})[0])
        assert step_error(run) == (
            f'Step "parse": document {document.pk} is not one of this run\'s input documents, '
            "so this run may not read it."
        )
        assert "private claim" not in str(run.step_runs.get().output)
    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"other": 999999})[0])
    assert "document 999999 is not one of this run's input documents" in step_error(run)


@pytest.mark.django_db
def test_a_sub_workflow_reads_the_document_its_parent_passes_on_but_not_one_forged_into_its_input(
    analyst, reviewer, team
):
    child = publish(
        analyst,
        team,
        "Read a claim",
        [parse_step(document="input.doc")],
        {
            "type": "object",
            "properties": {"doc": {"type": "object", "format": "document"}},
            "required": ["doc"],
        },
    )
    parent_steps = [
        {
            "key": "call",
            "type": "flow.subworkflow",
            "config": {"workflow": child.slug},
            "inputs": {"doc": "input.claim"},
        }
    ]
    parent = publish(analyst, team, "Pass a claim on", parent_steps, DOCUMENT_SCHEMA)
    mine = document_store(actor=analyst, name="claim.pdf", data=pdf_of(*CLAIM_PAGES))
    response = api(analyst).post(
        f"/api/workflows/{parent.slug}/runs/", {"inputs": {"claim": {"document": mine.pk}}}, format="json"
    )
    run = drive(Run.objects.get(pk=response.json()["id"]))
    assert run.status == Run.Status.SUCCEEDED, run.error
    child_run = Run.objects.get(parent_step_run__run=run)
    assert step_output(child_run)["text"] == mine.text

    # An expression can put any id into a sub-workflow's document field; the document still is not the run's.
    theirs = document_store(actor=reviewer, name="theirs.pdf", data=pdf_of(["Reviewer's private claim"]))
    forged = f'{{"document": {theirs.pk}, "name": "x.pdf", "sha256": "{theirs.sha256}", "pages": 1, "text": ""}}'
    forging_steps = [
        {"key": "call", "type": "flow.subworkflow", "config": {"workflow": child.slug}, "inputs": {"doc": forged}}
    ]
    forger = publish(analyst, team, "Forge a claim", forging_steps, {"type": "object", "properties": {}})
    run = drive(run_start(actor=analyst, workflow=forger, inputs={})[0])
    assert run.status == Run.Status.FAILED
    child_run = Run.objects.get(parent_step_run__run=run)
    assert child_run.inputs["doc"]["document"] == theirs.pk  # it got this far...
    assert step_error(child_run) == (  # ...and no further
        f'Step "parse": document {theirs.pk} is not one of this run\'s input documents, so this run may not read it.'
    )


@pytest.mark.django_db
def test_unreadable_content_and_malformed_values_fail_the_step_with_a_reason(analyst, team):
    schema = {"type": "object", "properties": {"content": {"type": "string"}, "number": {"type": "integer"}}}
    cases = [
        (
            '{"name": "claim.pdf", "content_base64": input.content}',
            {"content": base64.b64encode(pdf_of(*CLAIM_PAGES, password="s3cret")).decode()},
            'Step "parse": "claim.pdf" is protected by a password: save it without the password and upload it again.',
        ),
        (
            '{"name": "claim.pdf", "content_base64": input.content}',
            {"content": "not base64!"},
            'Step "parse": the content of "claim.pdf" is not valid base64.',
        ),
        (
            '{"name": "scan.pdf", "content_base64": input.content}',
            {"content": base64.b64encode(pdf_of(["x"], drawing_only=True)).decode()},
            'Step "parse": "scan.pdf" has no text: it looks scanned, and AIOS does not read scans yet.',
        ),
        (
            '{"name": "report.docx", "text": input.content}',
            {"content": "plain words"},
            'Step "parse": "report.docx" is not a Word document: its name ends in .docx, but it holds something else.',
        ),
        ("input.number", {"number": 7}, 'Step "parse": the document expression gave int, not a document from'),
        ('{"name": "x"}', {}, 'Step "parse": the document expression gave an object without "document"'),
        ("input.missing", {}, 'Step "parse": the document expression `input.missing` failed: no such field'),
    ]
    for index, (expression, inputs, message) in enumerate(cases):
        workflow = publish(analyst, team, f"Unreadable {index}", [parse_step(document=expression)], schema)
        run = drive(run_start(actor=analyst, workflow=workflow, inputs=inputs)[0])
        assert step_error(run).startswith(message), (expression, step_error(run))
