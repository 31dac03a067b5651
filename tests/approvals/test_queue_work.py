"""Working a queue through the API: claims, skips and reassignments, what a decision refuses (and that a refused
decision changes nothing), out-of-office delegation, and escalation steps that fire once each."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from apps.accounts.services import team_create, user_create
from apps.approvals.models import (
    ApprovalActivity,
    ApprovalDecision,
    ApprovalQueue,
    ApprovalRequest,
    EscalationTimer,
    Notification,
)
from apps.approvals.services import absence_set, approval_queue_create, approval_queue_update, escalations_fire
from apps.audit.models import AuditEvent
from apps.runs.services import run_cancel
from tests.approvals.items import CLAIM_SCHEMA, PASSWORD, api, claim_workflow, decide, member, parked_item
from tests.support.engine import advance_clock, drive


@pytest.fixture
def rex(team):
    return member(team, "rex")


@pytest.fixture
def bea(db):
    """Bea reviews for another team, Billing: the Claims queue and its items do not exist for her."""
    user = user_create(username="bea", password=PASSWORD, roles=["reviewer"], first_name="Bea")
    team_create(name="Billing", members=[user])
    return user


@pytest.fixture
def item(analyst, team):
    """A claim whose amount the model is unsure of (0.55) and whose claimant it is sure of (0.97)."""
    return parked_item(analyst, claim_workflow(analyst, team, confidence={"amount": 0.55, "claimant": 0.97}))


def _snapshot(item: ApprovalRequest) -> tuple:
    """Everything a decision would change."""
    item.refresh_from_db()
    return (
        item.state,
        item.assignee_id,
        item.revision,
        item.approvals_count,
        item.corrected,
        item.step_run.state,
        ApprovalDecision.objects.filter(request=item).count(),
        AuditEvent.objects.filter(verb__in=["approval.approved", "approval.rejected"], target_id=str(item.pk)).count(),
    )


def test_the_item_carries_the_reviewed_proposal_and_its_confidences(item):
    assert item.proposal == item.corrected == {"amount": 120.0, "claimant": "Bo Berg"}
    assert item.confidence == {"amount": 0.55, "claimant": 0.97}
    assert (item.min_confidence, item.review_step_key) == (0.55, "extract")


# --- what a decision refuses ----------------------------------------------------------------------------------


def test_deciding_an_item_someone_else_claimed_is_409_and_changes_nothing(item, reviewer, rex):
    assert api(reviewer).post(f"/api/approvals/{item.pk}/claim/").status_code == 200
    before = _snapshot(item)
    response = decide(rex, item, decision="approved", confirmed=["amount"])
    assert response.status_code == 409 and "Rita is working on this item" in response.json()["detail"]
    assert api(rex).post(f"/api/approvals/{item.pk}/claim/").status_code == 409
    assert _snapshot(item) == before


def test_deciding_twice_is_409(item, reviewer):
    assert decide(reviewer, item, decision="rejected", reason="Duplicate").status_code == 200
    before = _snapshot(item)
    again = decide(reviewer, item, decision="approved", confirmed=["amount"])
    assert again.status_code == 409 and "already rejected" in again.json()["detail"]
    assert _snapshot(item) == before


def test_deciding_after_the_item_expired_is_409(analyst, team, reviewer):
    workflow = claim_workflow(analyst, team, name="Quick claim", due_in_seconds=60)
    item = parked_item(analyst, workflow)
    assert item.expires_at is not None
    advance_clock(120)
    drive(item.run)
    item.refresh_from_db()
    assert item.state == "expired"
    response = decide(reviewer, item, decision="approved")
    assert response.status_code == 409 and "already expired" in response.json()["detail"]
    assert not ApprovalDecision.objects.filter(request=item).exists()


def test_deciding_after_the_run_was_cancelled_is_409(item, analyst, reviewer):
    run_cancel(run=item.run, actor=analyst, reason="Customer withdrew the claim")
    item.refresh_from_db()
    assert item.state == "cancelled"
    response = decide(reviewer, item, decision="approved", confirmed=["amount"])
    assert response.status_code == 409 and "already cancelled" in response.json()["detail"]
    assert api(reviewer).post("/api/approvals/next/").status_code == 204
    assert not ApprovalDecision.objects.filter(request=item).exists()


def test_an_edit_that_breaks_the_schema_is_400_per_field_and_nothing_is_submitted(item, reviewer):
    ApprovalRequest.objects.filter(pk=item.pk).update(schema=CLAIM_SCHEMA)
    before = _snapshot(item)
    response = decide(
        reviewer, item, decision="approved", edits={"amount": -5, "claimant": ""}, reason="Read the receipt"
    )
    assert response.status_code == 400, response.content
    fields = response.json()["fields"]
    assert set(fields) == {"edits.amount", "edits.claimant"}, fields
    assert "minimum" in fields["edits.amount"][0] or "less than" in fields["edits.amount"][0]
    unknown = decide(reviewer, item, decision="approved", edits={"iban": "DE00"}, confirmed=["amount"], reason="x")
    assert unknown.status_code == 400 and "edits.iban" in unknown.json()["fields"]
    assert _snapshot(item) == before


def test_a_reviewer_outside_the_queue_gets_404(item, bea):
    client = api(bea)
    assert client.get(f"/api/approvals/{item.pk}/").status_code == 404
    assert decide(bea, item, decision="approved", confirmed=["amount"]).status_code == 404
    assert client.post(f"/api/approvals/{item.pk}/claim/").status_code == 404
    assert client.post("/api/approvals/next/").status_code == 204  # her own queue is empty
    item.refresh_from_db()
    assert (item.state, item.assignee_id) == ("pending", None)


def test_a_rejection_needs_a_reason(item, reviewer):
    before = _snapshot(item)
    response = decide(reviewer, item, decision="rejected", reason="   ")
    assert response.status_code == 400 and list(response.json()["fields"]) == ["reason"]
    assert _snapshot(item) == before


def test_approving_a_low_confidence_field_needs_it_confirmed_or_changed(item, reviewer):
    before = _snapshot(item)
    response = decide(reviewer, item, decision="approved")
    assert response.status_code == 400
    fields = response.json()["fields"]
    assert list(fields) == ["edits.amount"] and "0.55" in fields["edits.amount"][0]  # the sure claimant is not named
    assert _snapshot(item) == before

    changed = decide(reviewer, item, decision="approved", edits={"amount": 125.0}, reason="Receipt says 125")
    assert changed.status_code == 200, changed.content
    item.refresh_from_db()
    assert (item.state, item.edits) == ("approved", {"amount": 125.0})


def test_confirming_the_low_confidence_field_approves(item, reviewer):
    response = decide(reviewer, item, decision="approved", confirmed=["amount"])
    assert response.status_code == 200, response.content
    decision = ApprovalDecision.objects.get(request=item)
    assert (decision.confirmed_fields, decision.changes) == (["amount"], [])


def test_a_stale_revision_is_409(item, reviewer, rex):
    seen = api(reviewer).get(f"/api/approvals/{item.pk}/").json()["revision"]
    # Rex takes it and puts it back meanwhile: the item Rita has open is no longer what is in the queue.
    assert api(rex).post(f"/api/approvals/{item.pk}/claim/").status_code == 200
    assert api(rex).post(f"/api/approvals/{item.pk}/release/", {"reason": "Lunch"}, format="json").status_code == 200
    before = _snapshot(item)
    response = decide(reviewer, item, decision="approved", confirmed=["amount"], revision=seen)
    assert response.status_code == 409 and "changed since you opened it" in response.json()["detail"]
    assert _snapshot(item) == before
    fresh = api(reviewer).get(f"/api/approvals/{item.pk}/").json()["revision"]
    assert decide(reviewer, item, decision="approved", confirmed=["amount"], revision=fresh).status_code == 200


def test_skip_needs_a_reason_and_a_skipped_item_is_not_offered_to_her_again(item, reviewer, rex):
    client = api(reviewer)
    taken = client.post("/api/approvals/next/")
    assert taken.status_code == 200 and taken.json()["id"] == item.pk
    no_reason = client.post(f"/api/approvals/{item.pk}/skip/", {"reason": ""}, format="json")
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["fields"]
    item.refresh_from_db()
    assert item.assignee_id == reviewer.pk

    skipped = client.post(f"/api/approvals/{item.pk}/skip/", {"reason": "Need the policy text"}, format="json")
    assert skipped.status_code == 200 and skipped.json()["assignee"] is None
    assert client.post("/api/approvals/next/").status_code == 204
    assert api(rex).post("/api/approvals/next/").json()["id"] == item.pk


def test_reassign_only_to_someone_who_works_the_queue(item, reviewer, rex, bea, analyst):
    client = api(reviewer)
    assert client.post(f"/api/approvals/{item.pk}/claim/").status_code == 200
    revision = _snapshot(item)[2]
    for to in (bea.username, analyst.username, "nobody"):
        response = client.post(f"/api/approvals/{item.pk}/reassign/", {"to": to, "reason": "Yours"}, format="json")
        assert response.status_code == 400 and "to" in response.json()["fields"], (to, response.content)
    no_reason = client.post(f"/api/approvals/{item.pk}/reassign/", {"to": "rex", "reason": ""}, format="json")
    assert no_reason.status_code == 400
    item.refresh_from_db()
    assert (item.assignee_id, item.revision) == (reviewer.pk, revision)

    moved = client.post(f"/api/approvals/{item.pk}/reassign/", {"to": "rex", "reason": "He knows it"}, format="json")
    assert moved.status_code == 200 and moved.json()["assignee"] == "rex"
    assert Notification.objects.filter(user=rex, request=item, kind="assigned").count() == 1


# --- out of office ----------------------------------------------------------------------------------------------


def _away(person, delegate):
    today = timezone.localdate()
    return absence_set(
        actor=person, starts_on=today - timedelta(days=1), ends_on=today + timedelta(days=3), delegate=delegate
    )


def test_an_item_reassigned_to_someone_away_goes_to_her_delegate(item, reviewer, rex, admin_user_role):
    # Rex records his absence through the API, naming Rita.
    today = timezone.localdate()
    body = {"starts_on": str(today), "ends_on": str(today + timedelta(days=2)), "delegate": "rita", "note": "Leave"}
    assert api(rex).post("/api/absences/", body, format="json").status_code == 201

    moved = api(admin_user_role).post(
        f"/api/approvals/{item.pk}/reassign/", {"to": "rex", "reason": "Rex knows the claimant"}, format="json"
    )
    assert moved.status_code == 200, moved.content
    assert (moved.json()["assignee"], moved.json()["delegated_from"]) == ("rita", "rex")
    assert list(Notification.objects.filter(user=rex).values_list("kind", "request_id")) == [("delegated", item.pk)]
    assert list(Notification.objects.filter(user=reviewer).values_list("kind", flat=True)) == ["assigned"]
    assert ApprovalActivity.objects.filter(request=item, kind="delegated").count() == 1
    event = AuditEvent.objects.get(verb="approval.reassigned", target_id=str(item.pk))
    data = event.data_dict
    assert (event.actor_id, data["to"], data["delegated_from"]) == (admin_user_role.pk, reviewer.pk, rex.pk)
    # His notification reaches him through the API too.
    assert [n["kind"] for n in api(rex).get("/api/notifications/").json()["results"]] == ["delegated"]


def _queue(team, key, **settings):
    return approval_queue_create(
        actor=None, key=key, name=key, team=team, workers=[team.group], users=[team.group], **settings
    )


def test_round_robin_takes_turns_and_a_turn_of_someone_away_goes_to_her_delegate(analyst, team, reviewer, rex):
    remy = member(team, "remy")
    _queue(team, "claims:rotation", assignment="round_robin")
    workflow = claim_workflow(analyst, team, queue="claims:rotation")
    turns = [parked_item(analyst, workflow, amount=float(i)).assignee.username for i in range(6)]
    assert turns == ["remy", "rex", "rita"] * 2

    # Rex's turn goes to Rita, and it was still his turn: the rotation moves on rather than picking the
    # absent Rex for every item and piling them all on his delegate.
    _away(rex, reviewer)
    items = [parked_item(analyst, workflow, amount=float(i)) for i in range(4)]
    assert [(i.assignee.username, i.delegated_from and i.delegated_from.username) for i in items] == [
        ("remy", None),
        ("rita", "rex"),
        ("rita", None),
        ("remy", None),
    ]
    delegated = Notification.objects.filter(kind="delegated")
    assert list(delegated.values_list("user__username", "request_id")) == [("rex", items[1].pk)]
    assert Notification.objects.filter(user=remy, kind="assigned").count() == 4


def test_least_loaded_picks_the_emptiest_desk_and_delegates_when_its_owner_is_away(analyst, team, reviewer, rex):
    _queue(team, "claims:balanced", assignment="least_loaded")
    workflow = claim_workflow(analyst, team, queue="claims:balanced")
    first = parked_item(analyst, workflow)
    assert first.assignee == rex  # both empty: by name
    second = parked_item(analyst, workflow)
    assert second.assignee == reviewer

    assert decide(reviewer, second, decision="approved").status_code == 200  # her desk is empty again

    _away(reviewer, rex)
    third = parked_item(analyst, workflow)  # Rita has the emptiest desk, but she is away
    assert (third.assignee, third.delegated_from) == (rex, reviewer)
    assert Notification.objects.get(user=reviewer, kind="delegated").request_id == third.pk
    assert Notification.objects.filter(user=rex, kind="assigned").count() == 2


# --- escalation ---------------------------------------------------------------------------------------------


def test_escalation_steps_fire_once_each(analyst, team, reviewer):
    seniors = Group.objects.create(name="claims-seniors")
    sam = user_create(username="sam", password=PASSWORD, roles=["reviewer"], first_name="Sam")
    sam.groups.add(seniors)
    queue = _queue(
        team,
        "claims:sla",
        sla_hours=0.5,
        escalation=[{"at": 0.5, "action": "remind"}, {"at": 1.0, "action": "reassign"}],
        escalation_group=seniors,
    )
    from guardian.shortcuts import assign_perm

    assign_perm("approvals.work_approvalqueue", seniors, queue)
    item = parked_item(analyst, claim_workflow(analyst, team, queue="claims:sla"))
    timers = list(EscalationTimer.objects.filter(request=item).order_by("step"))
    assert [(t.step, t.action) for t in timers] == [(0, "remind"), (1, "reassign")]
    assert timers[0].fire_at < timers[1].fire_at == item.due_at
    assert escalations_fire() == 0  # not due yet

    assert api(reviewer).post(f"/api/approvals/{item.pk}/claim/").status_code == 200
    EscalationTimer.objects.filter(request=item).update(fire_at=timezone.now() - timedelta(minutes=1))
    assert escalations_fire() == 2
    assert escalations_fire() == 0

    assert EscalationTimer.objects.filter(request=item, fired_at__isnull=True).count() == 0
    assert list(Notification.objects.filter(user=reviewer).values_list("kind", flat=True)) == ["reminder"]
    assert list(Notification.objects.filter(user=sam).values_list("kind", flat=True)) == ["assigned"]
    item.refresh_from_db()
    assert item.assignee == sam
    verbs = list(
        AuditEvent.objects.filter(target_id=str(item.pk), verb__startswith="approval.")
        .order_by("pk")
        .values_list("verb", flat=True)
    )
    assert verbs == [
        "approval.requested",
        "approval.claimed",
        "approval.reminded",
        "approval.escalated",
        "approval.reassigned",
    ]
    kinds = list(ApprovalActivity.objects.filter(request=item).values_list("kind", flat=True))
    assert kinds == ["claimed", "reminded", "escalated", "reassigned"]
    assert decide(sam, item, decision="approved").status_code == 200


def test_a_decided_item_never_escalates(analyst, team, reviewer):
    _queue(team, "claims:sla", sla_hours=1, escalation=[{"at": 0.5, "action": "remind"}])
    item = parked_item(analyst, claim_workflow(analyst, team, queue="claims:sla"))
    assert decide(reviewer, item, decision="approved").status_code == 200
    EscalationTimer.objects.filter(request=item).update(fire_at=timezone.now() - timedelta(minutes=1))
    assert escalations_fire() == 0
    assert not Notification.objects.filter(kind="reminder").exists()


def test_queue_settings_are_refused_field_by_field(team, admin_user_role):
    queue = ApprovalQueue.objects.get(key="team:claims")
    response = api(admin_user_role).patch(
        "/api/approval-queues/team:claims/",
        {"sla_hours": -1, "escalation": [{"at": 0.5, "action": "shout"}], "policy": "most"},
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"sla_hours", "escalation", "policy"}
    approval_queue_update(actor=admin_user_role, queue=queue, sla_hours=8)
    queue.refresh_from_db()
    assert queue.sla_hours == 8


def test_escalation_reassigns_only_to_someone_who_may_decide_the_item(analyst, team, reviewer, manager):
    # The escalation group holds Max, a manager who does not work queues, and Rita, who already holds the item:
    # nobody to hand it to, so the lead hears that it breached rather than the item going to someone who
    # could not decide it (and whose claim would lock everyone else out).
    seniors = Group.objects.create(name="claims-seniors")
    manager.groups.add(seniors)
    reviewer.groups.add(seniors)
    queue = _queue(team, "claims:sla", sla_hours=1, escalation=[{"at": 1.0, "action": "reassign"}])
    queue.escalation_group, queue.lead = seniors, analyst
    queue.save()
    item = parked_item(analyst, claim_workflow(analyst, team, queue="claims:sla", separation_of_duties=False))
    assert api(reviewer).post(f"/api/approvals/{item.pk}/claim/").status_code == 200
    EscalationTimer.objects.filter(request=item).update(fire_at=timezone.now() - timedelta(minutes=1))
    assert escalations_fire() == 1
    item.refresh_from_db()
    assert item.assignee == reviewer
    assert not Notification.objects.filter(user=manager).exists()
    assert list(Notification.objects.filter(user=analyst).values_list("kind", flat=True)) == ["escalated"]


def test_items_she_holds_go_to_her_delegate_when_she_goes_away(analyst, team, reviewer):
    """Pull queues too: an absence starting today hands the items she holds to her delegate, who is told,
    and a second hand-over moves nothing."""
    from datetime import date

    from apps.approvals.models import Notification
    from apps.approvals.services import absence_set, absences_hand_over, approval_claim

    delegate = member(team, "dora")
    item = parked_item(analyst, claim_workflow(analyst, team))
    approval_claim(request=item, actor=reviewer)
    absence_set(actor=reviewer, starts_on=date.today(), ends_on=date.today(), delegate=delegate)
    absences_hand_over()  # what commit (and beat) run; the test's transaction never commits
    item.refresh_from_db()
    assert (item.assignee_id, item.delegated_from_id) == (delegate.pk, reviewer.pk)
    assert Notification.objects.filter(user=delegate, request=item, kind="assigned").exists()
    assert Notification.objects.filter(user=reviewer, request=item, kind="delegated").exists()
    assert absences_hand_over() == 0


def test_a_pushed_item_goes_to_the_next_person_after_a_partial_approval(analyst, team, reviewer, rex):
    """Two of three must approve, in a round-robin queue: once the first approves, the queue assigns the item
    again, to someone who has not decided it."""
    _queue(team, "claims:pair", assignment="round_robin")
    workflow = claim_workflow(analyst, team, queue="claims:pair", policy="k_of_n", required_approvals=2)
    item = parked_item(analyst, workflow)
    first = item.assignee
    assert first is not None
    assert decide(first, item, decision="approved").status_code == 200
    item.refresh_from_db()
    assert item.state == "pending" and item.approvals_count == 1
    assert item.assignee is not None and item.assignee != first
