"""The "New workflow" gallery keeps its promise: every template is an export file that parses, creates a
publishable draft, runs every sample of its input schema to the end on the test stack (the development
inference server answering from its demo script, HTTP steps pointed at a local sink, approvals decided by
Rita), and survives export → import with the same checksum and a byte-identical re-export."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from apps.accounts.models import Team, User
from apps.accounts.services import team_create
from apps.approvals.models import ApprovalRequest
from apps.approvals.services import approval_decide
from apps.runs.models import Run
from apps.runs.services import run_start
from apps.workflows.exchange import document_build, document_dump, document_parse, workflow_import
from apps.workflows.gallery import GALLERY, gallery_template_get, gallery_templates, workflow_create_from_template
from apps.workflows.graph import graph_checksum
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.services import (
    version_problems,
    workflow_draft_get_or_create,
    workflow_draft_save,
    workflow_version_publish,
)
from devserver import DEMO_SCRIPT, Script
from devserver.engine import Constraint
from devserver.scripts import choose_reply
from tests.support.engine import drive, states
from tests.support.sink import Sink

pytestmark = pytest.mark.django_db

TEMPLATES = ("claims-triage", "invoice-review", "marketing-copy")
# The addresses the templates ship with, which an analyst replaces with her own systems before publishing.
PLACEHOLDER_BASES = ("https://erp.example.com", "https://cms.example.com")
SKIPPED, SUCCEEDED, WAITING = "skipped", "succeeded", "waiting"


@pytest.fixture
def sink(tmp_path: Any, settings: Any) -> Iterator[Sink]:
    """The ERP and the CMS of the templates: a loopback server the SSRF guard is told to allow."""
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32"]
    with Sink(tmp_path / "sink.sqlite3") as running:
        yield running


@pytest.fixture
def finance(reviewer: User, analyst: User) -> Team:
    """The invoice template's queue, "team:finance", with Rita in it (and Ana, who may send items there)."""
    return team_create(name="Finance", members=[reviewer, analyst])


@pytest.fixture
def marketing(reviewer: User, analyst: User) -> Team:
    """The product-description template's queue, "team:marketing", with Rita in it (and Ana, who may send
    items there)."""
    return team_create(name="Marketing", members=[reviewer, analyst])


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


def _pointed(value: Any, base: str) -> Any:
    """`value` with every placeholder address replaced by `base`, as an analyst edits the step's URL."""
    if isinstance(value, dict):
        return {key: _pointed(item, base) for key, item in value.items()}
    if isinstance(value, list):
        return [_pointed(item, base) for item in value]
    if isinstance(value, str):
        for placeholder in PLACEHOLDER_BASES:
            value = value.replace(placeholder, base)
    return value


def _point_and_publish(actor: User, workflow: Workflow, base: str) -> WorkflowVersion:
    """Edit the draft (started from the newest published version when there is none) so its HTTP steps call
    `base`, then publish it."""
    draft = workflow_draft_get_or_create(actor=actor, workflow=workflow)
    draft = workflow_draft_save(
        actor=actor,
        workflow=workflow,
        graph=_pointed(copy.deepcopy(draft.graph), base),
        input_schema=copy.deepcopy(draft.input_schema),
        expected_revision=draft.revision,
        label="Point the HTTP steps at our systems",
    )
    assert not any(placeholder in json.dumps(draft.graph) for placeholder in PLACEHOLDER_BASES)
    assert version_problems(draft) == []
    return workflow_version_publish(actor=actor, version=draft, note="Pointed at our systems.")


def _from_gallery(slug: str, analyst: User, team: Team, sink: Sink) -> Workflow:
    """The template created as Ana for team Claims, its workflows pointed at the sink and published (the
    per-item workflow of a for-each first, so the for-each pins the pointed version)."""
    workflow = workflow_create_from_template(actor=analyst, template=slug, team=team)
    for document in gallery_template_get(slug).supporting:
        _point_and_publish(analyst, Workflow.objects.get(slug=document["metadata"]["slug"]), sink.url)
    _point_and_publish(analyst, workflow, sink.url)
    return workflow


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


def test_every_gallery_file_parses_and_creates_a_publishable_draft(analyst, team, finance, marketing):
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


def test_claims_triage_runs_every_sample_to_the_end(analyst, reviewer, team, sink):
    workflow = _from_gallery("claims-triage", analyst, team, sink)
    finished = automatic = by_adjuster = 0
    samples = _samples(workflow)
    for label, inputs in samples:
        run = drive(run_start(actor=analyst, workflow=workflow, inputs=inputs)[0])
        policy = re.search(r"POL-\d+", inputs["claim_text"]).group()
        extracted = run.step_runs.get(step_key="extract").output["data"]
        assert extracted["policy_number"] == policy, label
        if extracted["amount"] <= 1000 and not extracted["injury_reported"]:
            assert run.status == Run.Status.SUCCEEDED, run.error
            assert states(run) == {
                "extract": SUCCEEDED,
                "check": SUCCEEDED,
                "adjuster": SKIPPED,
                "auto_approve": SUCCEEDED,
            }
            assert run.output["decision"] == "approved" and run.output["policy_number"] == policy
            automatic += 1
        else:
            assert run.status == Run.Status.RUNNING and states(run)["adjuster"] == WAITING, label
            request = ApprovalRequest.objects.get(run=run)
            assert (request.queue.key, request.payload["policy_number"]) == ("team:claims", policy)
            run = _decide(run, reviewer, "approved")
            assert run.status == Run.Status.SUCCEEDED, run.error
            assert states(run) == {
                "extract": SUCCEEDED,
                "check": SUCCEEDED,
                "adjuster": SUCCEEDED,
                "auto_approve": SKIPPED,
            }
            assert (run.output["decision"], run.output["decided_by"]) == ("approved", "rita")
            by_adjuster += 1
        finished += 1
    assert (len(samples), automatic, by_adjuster) == (4, 2, 2)
    print(
        f"G1 claims-triage samples {finished}/{len(samples)} finished "
        f"({automatic} approved automatically, {by_adjuster} by the adjuster)"
    )


def test_invoice_review_posts_consistent_invoices_and_asks_finance_for_the_rest(analyst, reviewer, team, finance, sink):
    workflow = _from_gallery("invoice-review", analyst, team, sink)
    samples = dict(_samples(workflow))
    assert len(samples) == 2
    consistent, inconsistent = samples["Office supplies (consistent)"], samples["Consulting (totals do not add up)"]

    straight = drive(run_start(actor=analyst, workflow=workflow, inputs=consistent)[0])
    assert straight.status == Run.Status.SUCCEEDED, straight.error
    assert states(straight) == {
        "extract": SUCCEEDED,
        "reconcile": SUCCEEDED,
        "policy": SUCCEEDED,
        "post": SUCCEEDED,
        "finance": SKIPPED,
        "post_approved": SKIPPED,
        "rejected": SKIPPED,
    }
    assert straight.step_runs.get(step_key="reconcile").output["consistent"] is True
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
    assert approved.status == Run.Status.RUNNING and states(approved)["finance"] == WAITING
    request = ApprovalRequest.objects.get(run=approved)
    assert request.queue.key == "team:finance"
    assert request.payload == {"vendor": "Brightline Consulting Ltd", "total": 11962.0, "difference": 300.0}
    approved = _decide(approved, reviewer, "approved")
    assert approved.status == Run.Status.SUCCEEDED, approved.error
    assert states(approved) == {
        "extract": SUCCEEDED,
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
        "(INV-3021 posted straight through, INV-5540 posted after finance; a rejection posts nothing)"
    )


def test_marketing_copy_describes_approves_and_publishes_every_sku(analyst, reviewer, team, marketing, sink):
    workflow = _from_gallery("marketing-copy", analyst, team, sink)
    child_workflow = Workflow.objects.get(slug="product-description")
    published = workflow.versions.get(state=WorkflowVersion.State.PUBLISHED)
    assert published.graph["steps"][0]["config"]["version"] == 2  # the pointed version, not the gallery's
    [(_label, inputs)] = _samples(workflow)
    skus = inputs["skus"]

    run = drive(run_start(actor=analyst, workflow=workflow, inputs=inputs)[0])
    assert run.status == Run.Status.RUNNING and states(run)["for_each"] == WAITING
    children = list(Run.objects.filter(parent_step_run__run=run).order_by("item_index"))
    assert [child.inputs["sku"] for child in children] == skus
    for child in children:
        assert (child.workflow, child.version.number) == (child_workflow, 2)
        assert states(child) == {"write": SUCCEEDED, "review": WAITING, "publish": "pending"}
        request = ApprovalRequest.objects.get(run=child)
        assert request.queue.key == "team:marketing"
        assert request.payload["description"] == _script_reply(child.inputs["sku"])
    for child in children:
        approval_decide(request=ApprovalRequest.objects.get(run=child), actor=reviewer, decision="approved", reason="")
    run = drive(run)
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert states(run) == {"for_each": SUCCEEDED, "report": SUCCEEDED}
    report = run.step_runs.get(step_key="report").output
    assert report == {"products": 3, "failed": 0} and run.output == report

    deliveries = sink.deliveries()
    assert sorted(delivery.path for delivery in deliveries) == sorted(
        f"/api/products/{sku}/description" for sku in skus
    )
    assert all(delivery.status == 200 and delivery.applied for delivery in deliveries)
    for child in children:
        child.refresh_from_db()
        assert child.status == Run.Status.SUCCEEDED, child.error
        assert states(child) == {"write": SUCCEEDED, "review": SUCCEEDED, "publish": SUCCEEDED}
        assert child.output["body"]["echo"] == {"description": _script_reply(child.inputs["sku"])}
    results = run.step_runs.get(step_key="for_each").output["results"]
    assert [result["body"]["echo"]["description"] for result in results] == [_script_reply(sku) for sku in skus]

    # The per-product workflow's own sample runs on its own too.
    [(_label, single)] = _samples(child_workflow)
    alone = drive(run_start(actor=analyst, workflow=child_workflow, inputs=single)[0])
    alone = _decide(alone, reviewer, "approved")
    assert alone.status == Run.Status.SUCCEEDED, alone.error
    assert alone.output["body"]["echo"] == {"description": _script_reply(single["sku"])}
    assert len(sink.deliveries()) == len(deliveries) + 1
    print(
        f"G3 marketing-copy samples 1/1 finished ({report['products']} products, {report['failed']} failed, "
        f"{len(deliveries)} CMS deliveries after {len(children)} approvals)"
    )


# --- export → import ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", TEMPLATES)
def test_every_published_version_round_trips_with_its_checksum(slug, analyst, team, finance, marketing, sink):
    _from_gallery(slug, analyst, team, sink)
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
