"""The "New workflow" gallery keeps its promise: every template is an export file that parses, creates a
publishable draft, runs every sample of its input schema to the end on real services (the development
inference server answering from its demo script and embedding with its real model, a PostgreSQL "ERP" database
read through an SQL connection, HTTP connections to a local sink standing in for the ERP and the CMS, SMTP
connections to a mail server of the test's own, the support knowledge base ingested into pgvector, approvals
decided by Rita, the weekly assistant fired by its schedule from a frozen clock and reading the product's own API
over HTTP), and survives export → import with the same checksum and a byte-identical re-export."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils.html import escape
from rest_framework.test import APIClient

from apps.accounts.models import Team, User
from apps.accounts.services import team_create
from apps.approvals.documents import review_document_for_user
from apps.approvals.models import ApprovalRequest
from apps.approvals.selectors import low_confidence_fields_for
from apps.approvals.services import approval_decide
from apps.connectors.models import Connection
from apps.connectors.services import connection_create, connection_update
from apps.core.exceptions import ValidationFailed
from apps.knowledge.demo import seed_knowledge_demo
from apps.knowledge.ingest import document_ingest
from apps.knowledge.models import Collection, Document
from apps.knowledge.parsing import parse_document
from apps.runs.documents import document_input_value, document_store
from apps.runs.models import Run
from apps.runs.services import run_start
from apps.workflows.demo import SAMPLE_CLAIMS
from apps.workflows.exchange import document_build, document_dump, document_parse, workflow_import
from apps.workflows.gallery import GALLERY, gallery_template_get, gallery_templates, workflow_create_from_template
from apps.workflows.gallery.samples import SAMPLES_DIR, SampleFile, sample_file_get, sample_files_for_field
from apps.workflows.graph import graph_checksum
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import (
    version_problems,
    workflow_draft_get_or_create,
    workflow_version_publish,
)
from devserver import DEMO_SCRIPT, Script
from devserver.engine import Constraint
from devserver.scripts import choose_reply
from tests.support import erp as erp_support
from tests.support.claim_samples import SAMPLE_CLAIM_FILES, SampleClaim, claim_pdf
from tests.support.engine import drive, states
from tests.support.erp import ErpDatabase
from tests.support.sink import Sink
from tests.support.smtp import PrivateSmtpServer, private_smtp_server

pytestmark = pytest.mark.django_db
erp_postgresql = erp_support.erp_postgresql  # the ERP database fixture

TEMPLATES = (
    "claims-triage",
    "invoice-review",
    "marketing-copy",
    "remote-work-assistant",
    "support-ticket-triage",
    "weekly-approvals-assistant",
)
SKIPPED, SUCCEEDED, WAITING = "skipped", "succeeded", "waiting"


@dataclass
class Systems:
    """The outside systems the templates' connections reach: the ERP's database, one HTTP sink standing in for
    the ERP's and the CMS's APIs, and a mail server."""

    sink: Sink
    mail: PrivateSmtpServer
    erp: ErpDatabase


@pytest.fixture
def sink(systems: Systems) -> Sink:
    return systems.sink


@pytest.fixture
def systems(tmp_path: Any, settings: Any, team: Team, erp_postgresql: ErpDatabase) -> Iterator[Systems]:
    """The connections the templates name, owned by the analyst's team, to real local servers the outbound
    address guard is told to allow."""
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32"]
    erp_postgresql.reset()
    with Sink(tmp_path / "sink.sqlite3") as sink, private_smtp_server() as mail:
        connections = [
            ("erp-db", "ERP database", "sql", erp_postgresql.config, erp_postgresql.secrets),
            ("erp-api", "ERP API", "http", {"base_url": f"{sink.url}/api/"}, {}),
            ("cms-api", "CMS API", "http", {"base_url": f"{sink.url}/api/"}, {}),
            ("support-mail", "Support mail", "smtp", _smtp(mail, "Lumo Support <support@lumo.example>"), {}),
            ("team-mail", "Team mail", "smtp", _smtp(mail, "AIOS assistant <assistant@aios.example>"), {}),
            # The product's own API as a person: the weekly assistant's test points it at a real server.
            ("aios-api", "AIOS API", "http", {"base_url": f"{sink.url}/api/", "auth": "bearer"}, {"token": "x"}),
        ]
        for name, label, kind, config, secrets in connections:
            connection_create(actor=None, name=name, label=label, kind=kind, team=team, config=config, secrets=secrets)
        yield Systems(sink=sink, mail=mail, erp=erp_postgresql)


def _smtp(server: PrivateSmtpServer, sender: str) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "security": "none", "from_address": sender}


@pytest.fixture
def finance(reviewer: User, analyst: User) -> Team:
    """The invoice template's queue, "team:finance", with Rita in it (and Ana, who may send items there)."""
    return team_create(name="Finance", members=[reviewer, analyst])


@pytest.fixture
def marketing(reviewer: User, analyst: User) -> Team:
    """The product-description template's queue, "team:marketing", with Rita in it (and Ana, who may send
    items there)."""
    return team_create(name="Marketing", members=[reviewer, analyst])


@pytest.fixture
def support(reviewer: User, analyst: User) -> Team:
    """The support template's queue, "team:support", with Rita in it (and Ana, who may send items there)."""
    return team_create(name="Support", members=[reviewer, analyst])


@pytest.fixture
def support_kb(analyst: User, team: Team) -> Collection:
    """The demo's support knowledge base ("support-kb"), owned by the analyst's team, every article parsed,
    chunked and embedded by the development inference server's real model, as a worker would."""
    collection = seed_knowledge_demo(analyst, team)
    assert collection is not None
    documents = Document.objects.filter(collection=collection).values_list("pk", flat=True)
    assert {document_ingest(pk) for pk in documents} == {"ready"}
    return collection


def _file_documents(slug: str) -> list[str]:
    """The documents of a gallery file as separate texts, comments and all, as `document_parse` reads one."""
    text = (GALLERY / f"{slug}.aios.yaml").read_text()
    return [part for part in re.split(r"^---\n", text, flags=re.MULTILINE) if part.strip()]


def _samples(workflow: Workflow) -> list[tuple[str, dict[str, Any]]]:
    """(label, run inputs) for every example of the newest published input schema (the one runs start)."""
    newest = workflow.versions.filter(state=WorkflowVersion.State.PUBLISHED).order_by("-number").first()
    assert newest is not None
    schema = newest.input_schema
    return [
        (example["label"], {key: value for key, value in example.items() if key != "label"})
        for example in schema["examples"]
    ]


def _publish(actor: User, workflow: Workflow) -> WorkflowVersion:
    """Publish the workflow's draft as the gallery made it: its steps name the connections, collection and
    queues the test created, so nothing needs editing."""
    draft = workflow_draft_get_or_create(actor=actor, workflow=workflow)
    assert version_problems(draft) == []
    return workflow_version_publish(actor=actor, version=draft, note="Published from the gallery.")


def _from_gallery(slug: str, analyst: User, team: Team) -> Workflow:
    """The template created as Ana for team Claims and published (its supporting workflows are published by the
    gallery itself)."""
    workflow = workflow_create_from_template(actor=analyst, template=slug, team=team)
    _publish(analyst, workflow)
    return workflow


def _settled(run: Run, done: Callable[[Run], bool], *, seconds: float = 60) -> Run:
    """Drive `run` here until `done(run)`: in a transactional test, committed steps are visible to the session's
    Celery worker too, which may be running one of them when `drive` looks, so look again until it is done."""
    deadline = time.monotonic() + seconds
    while True:
        run = drive(run)
        if done(run) or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _decide(run: Run, actor: User, decision: str, reason: str = "") -> Run:
    """Decide the run's only open approval, then drive the run to its next stop."""
    request = ApprovalRequest.objects.get(run=run, state=ApprovalRequest.State.PENDING)
    approval_decide(request=request, actor=actor, decision=decision, reason=reason)
    return drive(run)


def _script_reply(text: str, schema: dict[str, Any] | None = None) -> Any:
    """What the demo script answers to a prompt containing `text` (parsed when a schema constrains it)."""
    constraint = Constraint("json", schema) if schema is not None else None
    reply = choose_reply(
        Script.load(DEMO_SCRIPT), route="chat", match_text=text, tail_source="x", constraint=constraint
    )
    assert reply.source == "script", f"the demo script does not answer {text!r}"
    return json.loads(reply.text) if schema is not None else reply.text


def _step(template: str, step_key: str) -> dict[str, Any]:
    """A step of the template's main workflow, as the gallery file has it."""
    steps = gallery_template_get(template).documents[-1]["spec"]["graph"]["steps"]
    return next(step for step in steps if step["key"] == step_key)


# --- the files --------------------------------------------------------------------------------------------


def test_every_gallery_file_parses_and_creates_a_publishable_draft(
    analyst, team, finance, marketing, support, systems, support_kb
):
    assert sorted(template.slug for template in gallery_templates()) == list(TEMPLATES)
    for template in gallery_templates():
        texts = _file_documents(template.slug)
        assert [document_parse(text) for text in texts] == list(template.documents)
        workflow = workflow_create_from_template(actor=analyst, template=template.slug, team=team)
        draft = workflow.versions.get(state=WorkflowVersion.State.DRAFT)
        # The placeholder addresses are valid URLs, so nothing but the analyst's judgement stands between the
        # draft and publishing; every problem here would be a bug of the template.
        assert version_problems(draft) == [], template.slug
        assert graph_checksum(draft.graph, draft.input_schema) == graph_checksum(
            template.documents[-1]["spec"]["graph"], template.documents[-1]["spec"]["input_schema"]
        )
        for document in template.supporting:
            supporting = Workflow.objects.get(slug=document["metadata"]["slug"])
            assert supporting.versions.filter(state=WorkflowVersion.State.PUBLISHED).count() == 1


def test_demo_script_answers_every_gallery_sample_as_the_sample_says():
    extract_schema = _step("invoice-review", "extract")["config"]["json_schema"]
    invoices = {
        "INV-3021": ("Papeterie Nord GmbH", "PO-7781", 1240.00, 235.60, 1475.60),
        "INV-5540": ("Brightline Consulting Ltd", "PO-8120", 9800.00, 1862.00, 11962.00),
    }
    for number, (vendor, po_number, net, tax, total) in invoices.items():
        assert _script_reply(f"Invoice:\nINVOICE {number} from {vendor}", extract_schema) == {
            "vendor": vendor,
            "invoice_number": number,
            "po_number": po_number,
            "currency": "EUR",
            "net_amount": net,
            "tax_amount": tax,
            "total": total,
        }
    for sku, wood in (("CHAIR-OAK-01", "oak"), ("CHAIR-ASH-02", "ash"), ("CHAIR-PINE-03", "pine")):
        description = _script_reply(f"the product with SKU {sku}.")
        assert f"{wood} chair" in description and sku in description
        assert 50 <= len(description.split()) <= 70


# --- every sample to the end ------------------------------------------------------------------------------


def _claim_samples() -> list[tuple[SampleClaim, SampleFile]]:
    """Each sample claim of the template with its file, in the order the claim field lists them."""
    spec = gallery_template_get("claims-triage").documents[-1]["spec"]["input_schema"]["properties"]["claim"]
    files = sample_files_for_field(spec)
    claims = {claim.file_name: claim for claim in SAMPLE_CLAIM_FILES}
    return [(claims[sample.name], sample) for sample in files]


def _claim_inputs(actor: User, label: str) -> dict[str, Any]:
    """Run inputs of the claims template: the sample claim PDF called `label`, stored as an upload of `actor`."""
    sample = next(sample for _, sample in _claim_samples() if sample.label == label)
    document = document_store(actor=actor, name=sample.name, data=sample.path.read_bytes())
    return {"claim": document_input_value(document)}


def _api(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_claims_sample_files_are_the_generated_claim_pdfs():
    samples = _claim_samples()
    # Every sample claim of the demo has its PDF, listed by the claim field, and every PDF of the folder is listed.
    assert [claim.label for claim, _ in samples] == [sample["label"] for sample in SAMPLE_CLAIMS]
    assert [sample.label for _, sample in samples] == [claim.label for claim, _ in samples]
    assert sorted(path.name for path in SAMPLES_DIR.glob("*.pdf")) == sorted(sample.name for _, sample in samples)
    for claim, sample in samples:
        # The committed file is what the generator makes today: regenerate and commit after changing a claim.
        assert sample.path.read_bytes() == claim_pdf(claim), "make it again: python -m tests.support.claim_samples"
        assert (sample.kind, sample.content_type) == ("PDF", "application/pdf") and sample.size < 4096
        parsed = parse_document(sample.path.read_bytes(), filename=sample.name)
        assert len(parsed.pages) == 1
        # The claimant's own words are in the PDF as the demo's sample has them (lines joined by the reader).
        assert " ".join(claim.narrative.split()) in " ".join(parsed.text.split())
        for line in (f"Claimant: {claim.claimant}", f"Policy number: {claim.policy_number}", claim.amount):
            assert line in parsed.text, (sample.name, line)
    # Names that are not files of the folder are nothing: the listing is the only way in.
    for name in ("../claims-triage.aios.yaml", "__init__.py", "claims-triage.aios.yaml", "", "nothing.pdf"):
        assert sample_file_get(name) is None, name


def test_claims_run_page_links_the_sample_pdfs_and_starts_a_run_from_one(analyst, outsider, team):
    workflow = _from_gallery("claims-triage", analyst, team)
    client = Client()
    client.force_login(analyst)
    page = client.get(reverse("runs:create", args=[workflow.slug])).content.decode()
    assert 'type="file" name="claim"' in page and 'enctype="multipart/form-data"' in page
    assert "a saved sample cannot fill in a file" in page  # the Run form's samples hold no files: it says so
    links = re.findall(r'<a href="(/workflows/new/samples/[^"]+)" download>([^<]+)</a>', page)
    assert [label for _, label in links] == [claim.label for claim, _ in _claim_samples()]

    # Anyone signed in downloads them (they are the product's own examples); nobody else, and nothing else.
    stranger = Client()
    stranger.force_login(outsider)
    for (url, _), (_, sample) in zip(links, _claim_samples(), strict=True):
        response = stranger.get(url)
        assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
        assert response["Content-Disposition"] == f'attachment; filename="{sample.name}"'
        assert b"".join(response.streaming_content) == sample.path.read_bytes()
    assert Client().get(links[0][0]).status_code == 302  # to the sign-in page
    for name in ("__init__.py", "..%2Fclaims-triage.aios.yaml", "nothing.pdf"):
        assert stranger.get(f"/workflows/new/samples/{name}").status_code == 404, name

    # The downloaded file, uploaded on the Run form, starts a run that reads it.
    bumper = next(sample for claim, sample in _claim_samples() if claim.policy_number == "POL-10442")
    with bumper.path.open("rb") as upload:
        response = client.post(reverse("runs:create", args=[workflow.slug]), {"claim": upload})
    assert response.status_code == 302, response.content.decode()[:2000]
    run = drive(Run.objects.get(workflow=workflow))
    assert run.inputs["claim"]["name"] == bumper.name and "POL-10442" in run.inputs["claim"]["text"]
    assert run.status == Run.Status.SUCCEEDED and run.output["policy_number"] == "POL-10442"


def test_claims_triage_runs_every_sample_to_the_end(analyst, reviewer, team):
    """Every sample claim PDF, uploaded through the API as a person would and named in a run started through the
    API: the fields extracted are the claim's, each with its evidence in the PDF's text; small claims without
    injury are approved at once, the others wait for an adjuster who sees the PDF's page with the evidence boxed,
    and who approves (after confirming the field the model was unsure of) or rejects."""
    workflow = _from_gallery("claims-triage", analyst, team)
    finished = automatic = by_adjuster = 0
    samples = _claim_samples()
    for claim, sample in samples:
        upload = _api(analyst).post(
            "/api/documents/", {"file": SimpleUploadedFile(sample.name, sample.path.read_bytes())}, format="multipart"
        )
        assert upload.status_code == 201, upload.content
        assert (upload.json()["pages"], upload.json()["content_type"]) == (1, "application/pdf")
        inputs = {"claim": {"document": upload.json()["id"]}}
        started = _api(analyst).post(f"/api/workflows/{workflow.slug}/runs/", {"inputs": inputs}, format="json")
        assert started.status_code == 201, started.content
        run = drive(Run.objects.get(pk=started.json()["id"]))
        text = run.inputs["claim"]["text"]
        extract = run.step_runs.get(step_key="extract").output
        extracted, evidence = extract["data"], extract["evidence"]
        assert (extracted["claimant"], extracted["policy_number"], extracted["amount"]) == (
            claim.claimant,
            claim.policy_number,
            claim.amount_value,
        ), claim.label
        assert extract["source_text"] == text
        # Each field's evidence is where the claim form states it.
        labels = {"claimant": "Claimant: ", "policy_number": "Policy number: ", "amount": "Amount claimed: EUR "}
        for field, label in labels.items():
            found = evidence[field]
            assert text[found["start"] : found["end"]] == found["quote"], (claim.label, field)
            assert text[: found["start"]].endswith(label), (claim.label, field, text[: found["end"]])
        if claim.policy_number in ("POL-10442", "POL-48230"):  # EUR 850 and EUR 640, nobody hurt
            assert run.status == Run.Status.SUCCEEDED, run.error
            assert states(run) == {
                "extract": SUCCEEDED,
                "check": SUCCEEDED,
                "adjuster": SKIPPED,
                "auto_approve": SUCCEEDED,
                "adjuster_approved": SKIPPED,
                "adjuster_rejected": SKIPPED,
            }
            assert run.output["decision"] == "approved" and run.output["policy_number"] == claim.policy_number
            automatic += 1
            finished += 1
            continue
        assert run.status == Run.Status.RUNNING and states(run)["adjuster"] == WAITING, claim.label
        item = ApprovalRequest.objects.get(run=run)
        assert item.queue.key == "team:claims" and item.title == f"Claim {claim.policy_number}: {claim.claimant}"
        assert item.payload["policy_number"] == claim.policy_number and item.proposal == extracted
        # The adjuster's view: the PDF's page with a box around each field's evidence.
        document = review_document_for_user(reviewer, item)
        assert document is not None and document.name == sample.name
        [page] = document.pages
        assert {"claimant", "policy_number", "amount"} <= {mark.field for mark in page.marks}
        low = low_confidence_fields_for(item)
        assert low, f"the demo script scores one field of {claim.policy_number} low"
        if claim.policy_number == "POL-31808":
            run = _decide(run, reviewer, "rejected", reason="The store's liability insurer covers the fall.")
            assert run.status == Run.Status.SUCCEEDED, run.error
            assert states(run)["adjuster_rejected"] == SUCCEEDED and states(run)["adjuster_approved"] == SKIPPED
            assert run.output == {
                "decision": "rejected",
                "reason": "The store's liability insurer covers the fall.",
                "decided_by": "rita",
                "policy_number": "POL-31808",
            }
        else:
            with pytest.raises(ValidationFailed):  # the field the model was unsure of must be looked at first
                approval_decide(request=item, actor=reviewer, decision="approved")
            approval_decide(request=item, actor=reviewer, decision="approved", confirmed=low)
            run = drive(run)
            assert run.status == Run.Status.SUCCEEDED, run.error
            assert states(run) == {
                "extract": SUCCEEDED,
                "check": SUCCEEDED,
                "adjuster": SUCCEEDED,
                "auto_approve": SKIPPED,
                "adjuster_approved": SUCCEEDED,
                "adjuster_rejected": SKIPPED,
            }
            assert (run.output["decision"], run.output["decided_by"]) == ("approved", "rita")
            assert (run.output["policy_number"], run.output["amount"]) == (claim.policy_number, claim.amount_value)
        by_adjuster += 1
        finished += 1
    assert (len(samples), automatic, by_adjuster) == (4, 2, 2)
    print(
        f"G1 claims-triage sample PDFs {finished}/{len(samples)} finished "
        f"({automatic} approved automatically, {by_adjuster} decided by the adjuster on the PDF with its evidence)"
    )


def test_invoice_review_reconciles_with_the_erp_posts_what_fits_and_asks_finance_for_the_rest(
    analyst, reviewer, team, finance, systems
):
    sink = systems.sink
    workflow = _from_gallery("invoice-review", analyst, team)
    samples = dict(_samples(workflow))
    assert len(samples) == 2
    consistent, inconsistent = samples["Office supplies (consistent)"], samples["Consulting (totals do not add up)"]

    straight = drive(run_start(actor=analyst, workflow=workflow, inputs=consistent)[0])
    assert straight.status == Run.Status.SUCCEEDED, straight.error
    assert states(straight) == {
        "extract": SUCCEEDED,
        "lookup": SUCCEEDED,
        "reconcile": SUCCEEDED,
        "policy": SUCCEEDED,
        "post": SUCCEEDED,
        "finance": SKIPPED,
        "post_approved": SKIPPED,
        "rejected": SKIPPED,
    }
    # The purchase order came from the ERP's database (the amount as the database's exact decimal text).
    assert straight.step_runs.get(step_key="lookup").output["rows"] == [
        {
            "po_number": "PO-7781",
            "net_amount": "1240.00",
            "currency": "EUR",
            "status": "received",
            "vendor": "Papeterie Nord GmbH",
        }
    ]
    reconciled = straight.step_runs.get(step_key="reconcile").output
    assert (reconciled["consistent"], reconciled["po_found"], reconciled["within_po"]) == (True, True, True)
    [delivery] = sink.deliveries()
    assert (delivery.path, delivery.status, delivery.applied) == ("/api/invoices", 200, True)
    # The sink answers with the body it received: what the ERP saw is the invoice as the sample says.
    assert straight.output["body"]["echo"] == {
        "vendor": "Papeterie Nord GmbH",
        "invoice": "INV-3021",
        "po": "PO-7781",
        "total": 1475.6,
    }

    approved = drive(run_start(actor=analyst, workflow=workflow, inputs=inconsistent)[0])
    reconcile = approved.step_runs.get(step_key="reconcile").output
    assert reconcile["consistent"] is False and reconcile["difference"] == pytest.approx(300.0)
    # Net EUR 9,800 against a purchase order of EUR 9,500: over what was ordered as well.
    assert (reconcile["po_found"], reconcile["po_net_amount"], reconcile["within_po"]) == (True, 9500.0, False)
    assert approved.status == Run.Status.RUNNING and states(approved)["finance"] == WAITING
    request = ApprovalRequest.objects.get(run=approved)
    assert request.queue.key == "team:finance"
    assert request.payload == {
        "vendor": "Brightline Consulting Ltd",
        "total": 11962.0,
        "difference": 300.0,
        "purchase_order": "PO-8120",
        "po_found": True,
        "po_net_amount": 9500.0,
    }
    approved = _decide(approved, reviewer, "approved")
    assert approved.status == Run.Status.SUCCEEDED, approved.error
    assert states(approved) == {
        "extract": SUCCEEDED,
        "lookup": SUCCEEDED,
        "reconcile": SUCCEEDED,
        "policy": SUCCEEDED,
        "post": SKIPPED,
        "finance": SUCCEEDED,
        "post_approved": SUCCEEDED,
        "rejected": SKIPPED,
    }
    assert approved.output["body"]["echo"] == {
        "vendor": "Brightline Consulting Ltd",
        "invoice": "INV-5540",
        "total": 11962.0,
        "approved_by": "rita",
    }
    assert len(sink.deliveries()) == 2

    rejected = drive(run_start(actor=analyst, workflow=workflow, inputs=inconsistent)[0])
    rejected = _decide(rejected, reviewer, "rejected", reason="The VAT does not match the net amount.")
    assert rejected.status == Run.Status.SUCCEEDED, rejected.error
    assert states(rejected)["post_approved"] == SKIPPED and states(rejected)["rejected"] == SUCCEEDED
    assert rejected.output == {"status": "rejected", "reason": "The VAT does not match the net amount."}
    assert len(sink.deliveries()) == 2  # nothing posted for the rejected invoice
    print(
        f"G2 invoice-review samples {len(samples)}/{len(samples)} finished "
        "(INV-3021 matched PO-7781 in the ERP database and posted straight through, INV-5540 over PO-8120 "
        "posted after finance; a rejection posts nothing)"
    )


def test_marketing_copy_describes_checks_approves_and_publishes_every_sku(analyst, reviewer, team, marketing, systems):
    sink = systems.sink
    workflow = _from_gallery("marketing-copy", analyst, team)
    child_workflow = Workflow.objects.get(slug="product-description")
    published = workflow.versions.get(state=WorkflowVersion.State.PUBLISHED)
    assert published.graph["steps"][0]["config"]["version"] == 1
    samples = dict(_samples(workflow))
    three, catalogue = samples["Three chairs"]["skus"], samples["Spring catalogue (50 products)"]["skus"]
    assert len(catalogue) == len(set(catalogue)) == 50

    run = drive(run_start(actor=analyst, workflow=workflow, inputs={"skus": three})[0])
    assert run.status == Run.Status.RUNNING and states(run)["for_each"] == WAITING
    children = list(Run.objects.filter(parent_step_run__run=run).order_by("item_index"))
    assert [child.inputs["sku"] for child in children] == three
    # The brand check passes the oak and ash chairs straight through; the pine chair's description waits for
    # marketing.
    for child in children:
        assert (child.workflow, child.version.number) == (child_workflow, 1)
        brand = child.step_runs.get(step_key="brand").output
        if child.inputs["sku"] == "CHAIR-PINE-03":
            assert brand["label"] == "off_brand"
            assert states(child) == {"write": SUCCEEDED, "brand": SUCCEEDED, "review": WAITING, "publish": "pending"}
            request = ApprovalRequest.objects.get(run=child)
            assert request.queue.key == "team:marketing"
            assert request.payload["description"] == _script_reply(child.inputs["sku"])
            assert request.payload["style_check"] == "off_brand"
        else:
            assert (brand["label"], brand["branch"]) == ("on_brand", "confident")
            assert states(child) == {"write": SUCCEEDED, "brand": SUCCEEDED, "review": SUCCEEDED, "publish": SUCCEEDED}
    pending = ApprovalRequest.objects.get(run__parent_step_run__run=run, state=ApprovalRequest.State.PENDING)
    approval_decide(request=pending, actor=reviewer, decision="approved", reason="")
    run = drive(run)
    assert run.status == Run.Status.SUCCEEDED, run.error
    report = run.step_runs.get(step_key="report").output
    assert report == {"products": 3, "failed": 0} and run.output == report
    deliveries = sink.deliveries()
    assert sorted(delivery.path for delivery in deliveries) == sorted(
        f"/api/products/{sku}/description" for sku in three
    )
    assert all(delivery.status == 200 and delivery.applied for delivery in deliveries)
    results = run.step_runs.get(step_key="for_each").output["results"]
    assert [result["body"]["echo"]["description"] for result in results] == [_script_reply(sku) for sku in three]

    # The spring catalogue: 50 products, one approval (the pine chair again), 50 descriptions in the CMS.
    big = drive(run_start(actor=analyst, workflow=workflow, inputs={"skus": catalogue})[0])
    for request in ApprovalRequest.objects.filter(run__parent_step_run__run=big, state=ApprovalRequest.State.PENDING):
        assert request.payload["sku"] == "CHAIR-PINE-03"
        approval_decide(request=request, actor=reviewer, decision="approved", reason="")
    big = drive(big)
    assert big.status == Run.Status.SUCCEEDED, big.error
    assert big.output == {"products": 50, "failed": 0}
    published_paths = {delivery.path for delivery in sink.deliveries()}
    assert {f"/api/products/{sku}/description" for sku in catalogue} <= published_paths
    # The pine chair's description was published once per run: the second run's key differs from the first's.
    assert len(sink.deliveries()) == len(three) + len(catalogue)
    print(
        f"G3 marketing-copy samples 2/2 finished (3 and 50 products, 0 failed; 1 approval each, the rest passed "
        f"the brand check; {len(sink.deliveries())} CMS deliveries)"
    )


def test_support_triage_answers_from_the_knowledge_base_and_asks_support_when_unsure(
    analyst, reviewer, team, support, systems, support_kb, client
):
    workflow = _from_gallery("support-ticket-triage", analyst, team)
    samples = dict(_samples(workflow))
    refund = samples["Refund of a yearly plan (answered at once)"]
    lamp = samples["Lamp stuck after an update (goes to a person)"]

    answered = drive(run_start(actor=analyst, workflow=workflow, inputs=refund)[0])
    assert answered.status == Run.Status.SUCCEEDED, answered.error
    assert states(answered) == {
        "classify": SUCCEEDED,
        "retrieve": SUCCEEDED,
        "draft": SUCCEEDED,
        "route": SUCCEEDED,
        "send": SUCCEEDED,
        "review": SKIPPED,
        "send_reviewed": SKIPPED,
        "by_hand": SKIPPED,
    }
    topic = answered.step_runs.get(step_key="classify").output
    assert (topic["label"], topic["branch"]) == ("refunds", "confident")
    retrieved = answered.step_runs.get(step_key="retrieve")
    passages = retrieved.output["passages"]
    # The reply cites passage 1, and passage 1 is the refund policy's part on subscriptions: the right passage,
    # found by hybrid search over the real embeddings and the full-text index.
    draft = answered.step_runs.get(step_key="draft").output["data"]
    assert draft["cited"] == [1] and draft["answered"] is True
    cited = passages[draft["cited"][0] - 1]
    assert cited["document"] == "refunds.md", [passage["document"] for passage in passages]
    # What the reply promises (a full refund within 14 days) is in a retrieved passage of that policy.
    assert any(p["document"] == "refunds.md" and "14 days" in p["text"] for p in passages)
    # The run page's sources are the same passages, with scores.
    assert [source["document"] for source in retrieved.usage["sources"]] == [p["document"] for p in passages]
    [message] = systems.mail.messages()
    assert message["To"] == "jonas.weber@example.com" and message["Subject"] == "Re: Refund for my yearly plan?"
    body = message.get_content()
    assert "14 days" in body and "Sources: refunds.md" in body

    unsure = drive(run_start(actor=analyst, workflow=workflow, inputs=lamp)[0])
    assert unsure.status == Run.Status.RUNNING and states(unsure)["review"] == WAITING
    assert unsure.step_runs.get(step_key="classify").output["branch"] == "low_confidence"
    request = ApprovalRequest.objects.get(run=unsure)
    assert request.queue.key == "team:support"
    assert request.payload["topic"] == "devices" and request.payload["customer"] == "priya.nair@example.com"
    assert len(systems.mail.messages()) == 1  # nothing sent before a person decides
    # The reviewer sees the passages the draft was written from beside it.
    client.force_login(reviewer)
    page = client.get(reverse("approvals:item", args=[request.pk])).content.decode()
    lamp_passages = unsure.step_runs.get(step_key="retrieve").output["passages"]
    assert "Sources the answer was drafted from" in page
    assert all(escape(passage["document"]) in page for passage in lamp_passages)
    # The drafted reply is a box that keeps its line breaks; sent back untouched, as a browser sends a textarea
    # (CRLF), it is no correction.
    assert '<textarea id="field-draft_reply"' in page
    posted = {f"field-{name}": str(value).replace("\n", "\r\n") for name, value in request.proposal.items()}
    preview = client.post(
        reverse("approvals:decide", args=[request.pk]),
        {**posted, "decision": "approved", "stage": "review", "revision": request.revision},
    ).content.decode()
    assert "You changed 0 of" in preview
    unsure = _decide(unsure, reviewer, "approved")
    assert unsure.status == Run.Status.SUCCEEDED, unsure.error
    assert states(unsure)["send_reviewed"] == SUCCEEDED and states(unsure)["send"] == SKIPPED
    second = systems.mail.messages()[1]
    assert second["To"] == "priya.nair@example.com" and "firmware" in second.get_content()
    print(
        "G5 support-triage samples 2/2 finished (the refund answered at once citing refunds.md, "
        "the unsure lamp ticket answered after support approved; 2 mails)"
    )


@pytest.mark.django_db(transaction=True)
def test_weekly_assistant_fires_monday_at_eight_and_emails_the_digest_of_waiting_approvals(
    analyst, reviewer, team, systems, asgi_server, monkeypatch
):
    from apps.accounts.services import api_token_issue
    from apps.runs import outbox
    from apps.runs.triggers import schedules_fire_due, trigger_create

    # This test commits (the API server must see its data) and drives the runs here; the session's Celery worker,
    # started by other tests, would otherwise take their steps from the broker and run them without this test's
    # outbound allowlist. The doorbell is silenced for this test only: the steps wait in the database, where the
    # driver finds them, as the sweeper would.
    monkeypatch.setattr(outbox, "_outbox_send_committed", lambda rows: None)

    # Something waiting in Rita's queue: a claim for the adjuster.
    claims = _from_gallery("claims-triage", analyst, team)
    inputs = _claim_inputs(analyst, "Kitchen water leak")
    waiting = _settled(
        run_start(actor=analyst, workflow=claims, inputs=inputs)[0], lambda r: states(r)["adjuster"] == WAITING
    )
    assert states(waiting)["adjuster"] == WAITING
    # The assistant reads the product's own API as Rita, over HTTP, with her API token in a connection.
    _token, key = api_token_issue(user=reviewer, name="weekly assistant", lifetime_days=7)
    connection_update(
        actor=None,
        connection=Connection.objects.get(name="aios-api"),
        config={"base_url": f"{asgi_server}/api/", "auth": "bearer"},
        secrets={"token": key},
    )
    workflow = _from_gallery("weekly-approvals-assistant", analyst, team)
    monday = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)  # 08:00 in Berlin (winter time)
    trigger, _ = trigger_create(
        actor=analyst,
        workflow=workflow,
        kind="schedule",
        name="Monday 08:00",
        config={"cron": "0 8 * * 1", "timezone": "Europe/Berlin"},
        inputs={"recipient": '"rita@example.com"', "scheduled_for": "payload.scheduled_at_local"},
        now=monday - timedelta(days=2),
    )
    # The clock stands still a minute before, at the time, and again a minute after: one run, at 08:00.
    assert schedules_fire_due(monday - timedelta(minutes=1)) == 0
    assert schedules_fire_due(monday) == 1
    assert schedules_fire_due(monday + timedelta(minutes=1)) == 0
    [run] = Run.objects.filter(workflow=workflow)
    assert [(firing.outcome, firing.run_id) for firing in trigger.firings.all()] == [("started", run.pk)]
    assert (run.trigger, run.inputs["recipient"]) == ("schedule", "rita@example.com")
    assert run.inputs["scheduled_for"] == "2026-12-07T08:00:00+01:00"
    run = _settled(run, lambda r: r.status == Run.Status.SUCCEEDED)
    assert run.status == Run.Status.SUCCEEDED, run.error
    pending = run.step_runs.get(step_key="pending").output["body"]
    assert pending["count"] == 1 and pending["results"][0]["queue"] == "team:claims"
    [message] = systems.mail.messages()
    assert message["To"] == "rita@example.com"
    assert message["Subject"] == "Your waiting approvals: 1 this week"
    assert "Open your inbox" in message.get_content()
    print("G6 weekly-assistant fired 1/1 at Monday 08:00 Europe/Berlin (07:00 UTC) and mailed a digest of 1 item")


# --- export → import ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", TEMPLATES)
def test_every_published_version_round_trips_with_its_checksum(
    slug, analyst, team, finance, marketing, support, systems, support_kb
):
    _from_gallery(slug, analyst, team)
    round_trips = 0
    for document in gallery_template_get(slug).documents:
        source = Workflow.objects.get(slug=document["metadata"]["slug"])
        # Another instance receives the versions in order under a slug free there, so its version numbers (part
        # of the export) come out the same.
        promoted_slug = f"{source.slug}-promoted"
        for version in source.versions.filter(state=WorkflowVersion.State.PUBLISHED).order_by("number"):
            exported = document_dump(document_build(source, version))
            assert document_dump(document_parse(exported)) == exported

            checked = workflow_import(actor=analyst, text=exported, dry_run=True)
            assert (checked.workflow, checked.draft, checked.missing) == (source, None, {})
            assert checked.checksum == version.checksum

            assert exported.count(f"slug: {source.slug}\n") == 1
            incoming = exported.replace(f"slug: {source.slug}\n", f"slug: {promoted_slug}\n")
            result = workflow_import(actor=analyst, text=incoming)
            assert result.workflow.slug == promoted_slug and result.created == (version.number == 1)
            assert graph_checksum(result.draft.graph, result.draft.input_schema) == version.checksum
            republished = workflow_version_publish(actor=analyst, version=result.draft, note=version.note)
            assert (republished.number, republished.checksum) == (version.number, version.checksum)
            assert document_dump(document_build(result.workflow, republished)) == incoming
            round_trips += 1
    print(f"G4 {slug} round trips {round_trips}/{round_trips} byte-identical with the same checksum")
