"""The decision view over a PDF: an `llm.extract` reads a claim PDF's text (the development inference server
answers the demo's claim POL-48230), a `human.approval` reviews it, and the reviewer sees the document's pages
as images with a labelled box around each field's evidence, on the page where it is."""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from apps.approvals.documents import review_document_field, review_document_for_user
from apps.approvals.models import ApprovalRequest
from apps.runs.documents import document_input_value, document_store
from apps.runs.services import run_start
from apps.workflows.demo import CLAIM_FIELDS_SCHEMA, SAMPLE_CLAIMS
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.runs.test_documents import pdf_of
from tests.support.engine import drive

# The demo's stolen-bicycle claim, as lines on two pages: the amount is on the second.
CLAIM_TEXT = next(sample["claim_text"] for sample in SAMPLE_CLAIMS if "POL-48230" in sample["claim_text"])
CLAIM_PAGES = (
    [
        "Claimant: Daniel Park. Policy POL-48230.",
        "My bicycle was stolen from our locked garage during the night;",
        "the lock was cut. I reported it to the police.",
    ],
    ["The bicycle cost EUR 640.00 last spring."],
)
SCHEMA = {
    "type": "object",
    "properties": {"claim": {"type": "object", "format": "document", "title": "Claim (PDF)"}},
    "required": ["claim"],
}


def review_graph(source: str) -> dict[str, Any]:
    return {
        "steps": [
            {
                "key": "extract",
                "type": "llm.extract",
                "config": {
                    "prompt": "Extract the fields of this insurance claim.\n\nClaim:\n{{ input.claim.text }}",
                    "source": source,
                    "json_schema": CLAIM_FIELDS_SCHEMA,
                },
            },
            {
                "key": "review",
                "type": "human.approval",
                "config": {"queue": "team:claims", "title": "Check the claim", "review_step": "extract"},
            },
        ],
        "edges": [{"from": "extract", "to": "review"}],
    }


def parked(analyst: Any, team: Any, *, source: str = "{{ input.claim.text }}") -> ApprovalRequest:
    """A run over the claim PDF, driven to its approval; the item waiting there."""
    workflow = workflow_create(actor=analyst, name="PDF claim review", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=review_graph(source), input_schema=SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    document = document_store(actor=analyst, name="claim-48230.pdf", data=pdf_of(*CLAIM_PAGES))
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"claim": document_input_value(document)})
    drive(run)
    return ApprovalRequest.objects.get(run=run)


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_pdf_holds_the_demo_claim():
    assert " ".join(" ".join(lines) for lines in CLAIM_PAGES) == CLAIM_TEXT.replace("\n", " ")


@pytest.mark.django_db
def test_the_decision_view_shows_the_pages_with_a_box_for_each_fields_evidence(analyst, reviewer, team):
    item = parked(analyst, team)
    assert item.proposal["amount"] == 640.0 and item.proposal["policy_number"] == "POL-48230"
    assert item.source_text == item.run.inputs["claim"]["text"]
    assert review_document_field(item) == "claim"

    document = review_document_for_user(reviewer, item)
    assert document is not None and [page.number for page in document.pages] == [1, 2]
    marks = {mark.field: page.number for page in document.pages for mark in page.marks}
    assert marks["amount"] == 2 and marks["policy_number"] == 1 and marks["claimant"] == 1

    page = browser(reviewer).get(reverse("approvals:item", args=[item.pk])).content.decode()
    source = page[
        page.index('<section class="card review-source"') : page.index('<section class="card review-proposal"')
    ]
    for number in (1, 2):
        url = reverse("approvals:item-page", args=[item.pk, number])
        assert f'<img src="{url}" alt="Page {number} of claim-48230.pdf"' in source
    figures = source.split('<figure class="document-page"')[1:]
    assert len(figures) == 2
    assert 'viewBox="0 0 612.00 792.00"' in figures[1]
    # The amount's evidence: a labelled group of boxes on page 2, which the "Show the evidence" link targets.
    amount = re.search(
        r'<g class="evidence page-evidence" data-field="amount" id="evidence-amount".*?</g>', figures[1], re.S
    )
    assert amount is not None and "<title>Evidence for amount</title>" in amount.group(0)
    assert re.search(
        r'<rect class="page-evidence-box" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="[\d.]+"', amount.group(0)
    )
    assert ">amount</text>" in amount.group(0)
    assert 'data-field="amount"' not in figures[0]
    assert 'href="#evidence-amount"' in page
    # Each evidence id once on the page: the text view, behind its toggle, marks without ids.
    assert page.count('id="evidence-amount"') == 1
    assert '<details class="document-text"><summary>Text</summary>' in source
    assert 'style="' not in source and "<script" not in source


@pytest.mark.django_db
def test_the_page_image_is_a_png_for_whoever_sees_the_item_and_404_for_others(analyst, reviewer, outsider, team):
    item = parked(analyst, team)
    response = browser(reviewer).get(reverse("approvals:item-page", args=[item.pk, 2]))
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    body = b"".join(response) if response.streaming else response.content
    assert body[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">I", body[16:20]) == (1000,)
    assert browser(analyst).get(reverse("approvals:item-page", args=[item.pk, 1])).status_code == 200
    assert browser(outsider).get(reverse("approvals:item-page", args=[item.pk, 1])).status_code == 404
    assert browser(reviewer).get(reverse("approvals:item-page", args=[item.pk, 3])).status_code == 404
    assert Client().get(reverse("approvals:item-page", args=[item.pk, 1])).status_code == 302


@pytest.mark.django_db
def test_a_source_that_is_not_the_documents_text_keeps_the_text_view(analyst, reviewer, team):
    item = parked(analyst, team, source="Claim: {{ input.claim.text }}")
    assert item.source_text.startswith("Claim: ") and review_document_field(item) is None
    page = browser(reviewer).get(reverse("approvals:item", args=[item.pk])).content.decode()
    assert '<figure class="document-page"' not in page
    assert '<mark id="evidence-amount" class="evidence"' in page
    assert browser(reviewer).get(reverse("approvals:item-page", args=[item.pk, 1])).status_code == 404
