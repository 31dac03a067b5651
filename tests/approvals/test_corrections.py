"""Reviewers' decisions as labelled data: the workflow's corrections export (JSON Lines over the API) and the
calibration of confidence scores against what reviewers corrected."""

from __future__ import annotations

import json
from datetime import timedelta

from django.test import Client
from django.utils import timezone

from apps.approvals.corrections import workflow_calibration
from apps.approvals.models import ApprovalQueue, ApprovalRequest
from apps.approvals.services import approval_queue_update
from tests.approvals.items import api, claim_workflow, decide, member, parked_item

REASONS = [{"code": "misread_amount", "label": "Amount misread"}, {"code": "duplicate", "label": "Duplicate"}]


def _export(user, workflow):
    response = api(user).get(f"/api/workflows/{workflow.slug}/corrections/")
    body = b"".join(response.streaming_content) if response.status_code == 200 else response.content
    return response, body


def test_the_export_has_one_line_per_decision_with_what_the_reviewer_saw_and_did(
    analyst, team, reviewer, admin_user_role, outsider
):
    approval_queue_update(
        actor=admin_user_role, queue=ApprovalQueue.objects.get(key="team:claims"), reason_codes=REASONS
    )
    rex = member(team, "rex")
    workflow = claim_workflow(analyst, team, confidence={"amount": 0.55, "claimant": 0.97})
    corrected, confirmed, rejected = (parked_item(analyst, workflow, amount=a, name="Bo Berg") for a in (120, 80, 40))

    # Rita works the first for 42 seconds (her claim is moved back), and corrects the amount.
    assert api(reviewer).post(f"/api/approvals/{corrected.pk}/claim/").status_code == 200
    ApprovalRequest.objects.filter(pk=corrected.pk).update(claimed_at=timezone.now() - timedelta(seconds=42))
    response = decide(reviewer, corrected, decision="approved", edits={"amount": 112.5}, reason_code="misread_amount")
    assert response.status_code == 200, response.content
    assert decide(rex, confirmed, decision="approved", confirmed=["amount"]).status_code == 200
    assert decide(rex, rejected, decision="rejected", reason_code="duplicate", reason="Paid in May").status_code == 200

    response, body = _export(analyst, workflow)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson"
    assert f'filename="{workflow.slug}-corrections.jsonl"' in response["Content-Disposition"]
    lines = body.decode().splitlines()
    assert len(lines) == 3
    records = {record["item"]: record for record in map(json.loads, lines)}

    first = records[corrected.pk]
    assert first["input"] == {"amount": 120, "name": "Bo Berg"}
    assert first["model_output"] == {"amount": 120, "claimant": "Bo Berg"}
    assert first["corrected_output"] == {"amount": 112.5, "claimant": "Bo Berg"}
    assert first["changes"] == [{"field": "amount", "before": 120, "after": 112.5}]
    assert (first["decision"], first["reason_code"], first["reviewer"]) == ("approved", "misread_amount", "rita")
    assert 42 <= first["time_spent_seconds"] < 60
    assert first["confidence"] == {"amount": 0.55, "claimant": 0.97}
    assert (first["reviewed_step"], first["step"], first["queue"]) == ("extract", "review", "team:claims")

    second = records[confirmed.pk]
    assert second["changes"] == [] and second["corrected_output"] == second["model_output"]
    assert (second["reviewer"], second["confirmed_fields"], second["time_spent_seconds"]) == ("rex", ["amount"], None)

    third = records[rejected.pk]
    assert (third["decision"], third["reason_code"], third["reason"]) == ("rejected", "duplicate", "Paid in May")
    assert third["changes"] == [] and third["corrected_output"] == {"amount": 40, "claimant": "Bo Berg"}

    # Whoever may not view the workflow gets nothing, not even its name.
    assert _export(outsider, workflow)[0].status_code == 404


def test_a_change_needs_one_of_the_queues_reason_codes(analyst, team, reviewer, admin_user_role):
    approval_queue_update(
        actor=admin_user_role, queue=ApprovalQueue.objects.get(key="team:claims"), reason_codes=REASONS
    )
    item = parked_item(analyst, claim_workflow(analyst, team))
    missing = decide(reviewer, item, decision="approved", edits={"amount": 1.0})
    assert missing.status_code == 400 and list(missing.json()["fields"]) == ["reason_code"]
    unknown = decide(reviewer, item, decision="approved", edits={"amount": 1.0}, reason_code="whim")
    assert unknown.status_code == 400 and list(unknown.json()["fields"]) == ["reason_code"]
    item.refresh_from_db()
    assert item.state == "pending"


def test_a_multi_person_decision_is_one_line_per_person(analyst, team, reviewer):
    rex = member(team, "rex")
    workflow = claim_workflow(analyst, team, policy="k_of_n", required_approvals=2)
    item = parked_item(analyst, workflow)
    assert decide(reviewer, item, decision="approved").status_code == 200
    assert decide(rex, item, decision="approved").status_code == 200
    lines = [json.loads(line) for line in _export(analyst, workflow)[1].decode().splitlines()]
    assert [(line["item"], line["reviewer"]) for line in lines] == [(item.pk, "rita"), (item.pk, "rex")]


def test_calibration_from_known_corrections(analyst, team, reviewer):
    workflow = claim_workflow(analyst, team, confidence={"amount": 0.92, "claimant": 0.97})
    items = [parked_item(analyst, workflow, amount=float(100 + i)) for i in range(21)]
    # 20 approvals: one corrects the amount; a rejection says nothing about single fields and is left out.
    for item in items[:19]:
        assert decide(reviewer, item, decision="approved").status_code == 200
    fixed = decide(reviewer, items[19], decision="approved", edits={"amount": 1.0}, reason="Typo")
    assert fixed.status_code == 200, fixed.content
    assert decide(reviewer, items[20], decision="rejected", reason="Not ours").status_code == 200

    bins = {entry.field: entry for entry in workflow_calibration(workflow)}
    assert set(bins) == {"amount", "claimant"}
    amount, claimant = bins["amount"], bins["claimant"]
    assert (amount.low, amount.high, amount.reviews, amount.correct) == (0.9, 0.95, 20, 19)
    assert amount.sentence == "amount: 0.92 means 95 % correct over 20 reviews"
    assert claimant.sentence == "claimant: 0.97 means 100 % correct over 20 reviews"

    # The analyst reads the same figures on her workflow's page (a fragment loaded after the page).
    client = Client()
    client.force_login(analyst)
    page = client.get(f"/inbox/workflows/{workflow.slug}/accuracy/").content.decode()
    assert "amount: 0.92 means 95 % correct over 20 reviews" in page
    assert f"/api/workflows/{workflow.slug}/corrections/" in page


def test_before_any_review_the_workflow_page_says_so(analyst, team):
    workflow = claim_workflow(analyst, team, confidence={"amount": 0.92})
    client = Client()
    client.force_login(analyst)
    response = client.get(f"/inbox/workflows/{workflow.slug}/accuracy/")
    assert (
        response.status_code == 200
        and "No reviewer has decided an item of this workflow yet" in response.content.decode()
    )
