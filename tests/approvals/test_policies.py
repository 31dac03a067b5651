"""Decision policies (any, all, k of n, sequential) and separation of duties, including the runs that descend
from one a reviewer started (a restart, a restart of a replay)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.accounts.services import team_create, user_create
from apps.approvals.models import ApprovalDecision, ApprovalQueue, ApprovalRequest, EscalationTimer
from apps.audit.models import AuditEvent
from apps.core.exceptions import ApplicationError
from apps.runs.models import Run
from apps.runs.services import run_replay, run_restart
from tests.approvals.items import PASSWORD, api, claim_workflow, decide, member, parked_item
from tests.support.engine import drive


@pytest.fixture
def rex(team):
    return member(team, "rex")


@pytest.fixture
def remy(team):
    return member(team, "remy")


def test_any_policy_one_approval_decides_and_resumes_the_run(analyst, team, reviewer):
    item = parked_item(analyst, claim_workflow(analyst, team))
    assert (item.policy, item.required_approvals, item.proposal) == ("any", 1, {"amount": 120.0, "claimant": "Bo Berg"})
    assert decide(reviewer, item, decision="approved").status_code == 200
    run = drive(item.run)
    assert run.status == "succeeded" and run.output == {"paid": 120.0}


def test_k_of_n_needs_k_different_people_and_one_person_counts_once(analyst, team, reviewer, rex, remy):
    item = parked_item(analyst, claim_workflow(analyst, team, policy="k_of_n", required_approvals=2))
    assert (item.policy, item.required_approvals) == ("k_of_n", 2)

    assert decide(reviewer, item, decision="approved").status_code == 200
    item.refresh_from_db()
    assert (item.state, item.approvals_count, item.assignee_id) == ("pending", 1, None)
    assert item.step_run.state == "waiting"

    again = decide(reviewer, item, decision="approved")
    assert again.status_code == 409 and "already decided" in again.json()["detail"]
    claim_again = api(reviewer).post(f"/api/approvals/{item.pk}/claim/")
    assert claim_again.status_code == 409
    assert api(reviewer).post("/api/approvals/next/").status_code == 204  # Next does not offer it to her again

    assert decide(rex, item, decision="approved").status_code == 200
    item.refresh_from_db()
    assert (item.state, item.approvals_count, item.decided_by_id) == ("approved", 2, rex.pk)
    run = drive(item.run)
    assert run.status == "succeeded"
    assert run.step_runs.get(step_key="review").output["approvers"] == ["rita", "rex"]
    assert ApprovalDecision.objects.filter(request=item).count() == 2
    assert decide(remy, item, decision="approved").status_code == 409


def test_k_of_n_an_approval_that_changes_the_data_never_completes_it(analyst, team, reviewer, rex, remy):
    item = parked_item(analyst, claim_workflow(analyst, team, policy="k_of_n", required_approvals=2))
    assert decide(reviewer, item, decision="approved").status_code == 200
    # Rex would complete it, but he corrects the amount: four eyes on the change, so a third person approves.
    changed = decide(rex, item, decision="approved", edits={"amount": 99.0}, reason="Receipt says 99")
    assert changed.status_code == 200, changed.content
    item.refresh_from_db()
    assert (item.state, item.approvals_count, item.required_approvals) == ("pending", 2, 3)
    assert item.corrected == {"amount": 99.0, "claimant": "Bo Berg"}
    assert decide(remy, item, decision="approved").status_code == 200
    run = drive(item.run)
    assert run.status == "succeeded" and run.output == {"paid": 99.0}


def test_all_policy_needs_every_reviewer_of_the_queue_and_any_rejection_rejects(analyst, team, reviewer, rex, remy):
    workflow = claim_workflow(analyst, team, policy="all")
    item = parked_item(analyst, workflow)
    # The analyst is on the team but does not work queues: the three reviewers must all approve.
    assert item.required_approvals == 3
    for person in (reviewer, rex):
        assert decide(person, item, decision="approved").status_code == 200
    item.refresh_from_db()
    assert (item.state, item.approvals_count) == ("pending", 2)
    assert decide(remy, item, decision="approved").status_code == 200
    item.refresh_from_db()
    assert item.state == "approved"

    other = parked_item(analyst, workflow, amount=5.0)
    assert decide(reviewer, other, decision="approved").status_code == 200
    assert decide(rex, other, decision="rejected", reason="Not covered").status_code == 200
    other.refresh_from_db()
    assert (other.state, other.decided_by_id) == ("rejected", rex.pk)
    run = drive(other.run)
    assert run.output == {"why": "Not covered"}
    assert decide(remy, other, decision="approved").status_code == 409


def test_sequential_goes_queue_by_queue_and_only_the_current_queue_decides(analyst, team, reviewer, rex):
    finance_lead = user_create(username="fay", password=PASSWORD, roles=["reviewer"], first_name="Fay")
    finance = team_create(name="Finance", members=[finance_lead])
    # Ana may not send items to another team's queue until she is given its use right.
    with pytest.raises(ApplicationError) as refused:
        claim_workflow(analyst, team, name="Refused", policy="sequential", then_queues=["team:finance"])
    assert any('may not send items to the approval queue "team:finance"' in p for p in refused.value.extra["problems"])
    assign_perm("approvals.use_approvalqueue", analyst, ApprovalQueue.objects.get(key="team:finance"))
    # Each queue has its own service level and escalation chain; the item is timed by the queue it waits in.
    chain = [{"at": 0.5, "action": "remind"}]
    ApprovalQueue.objects.filter(key="team:claims").update(sla_hours=2, escalation=chain)
    ApprovalQueue.objects.filter(key="team:finance").update(sla_hours=48, escalation=chain)
    workflow = claim_workflow(analyst, team, policy="sequential", then_queues=["team:finance"])
    item = parked_item(analyst, workflow)
    assert (item.policy, item.required_approvals, item.queue.key) == ("sequential", 2, "team:claims")
    assert item.due_at is not None and item.due_at - item.created_at < timedelta(hours=3)

    assert decide(reviewer, item, decision="approved").status_code == 200
    item.refresh_from_db()
    assert (item.state, item.stage, item.queue.key, item.approvals_count) == ("pending", 1, "team:finance", 1)
    assert item.due_at - timezone.now() > timedelta(hours=47)
    timers = list(EscalationTimer.objects.filter(request=item).order_by("step").values_list("step", "cancelled"))
    assert timers == [(0, True), (100, False)]  # the Claims reminder stopped, Finance's started
    # Rex works Claims only; the item now waits in Finance. He still sees the run (same team): 403, not 404.
    assert decide(rex, item, decision="approved").status_code == 403
    assert api(rex).post("/api/approvals/next/").status_code == 204

    taken = api(finance_lead).post("/api/approvals/next/")
    assert taken.status_code == 200 and taken.json()["id"] == item.pk
    assert decide(finance_lead, item, decision="approved", revision=taken.json()["revision"]).status_code == 200
    item.refresh_from_db()
    assert item.state == "approved"
    assert list(ApprovalDecision.objects.filter(request=item).values_list("actor__username", "stage")) == [
        ("rita", 0),
        ("fay", 1),
    ]
    assert finance.group.name == "team:finance"


# --- separation of duties -----------------------------------------------------------------------------------


@pytest.fixture
def rosa(team):
    """Rosa builds workflows and reviews: she may start runs, and work the team's queue."""
    return member(team, "rosa", "analyst", "reviewer")


def _refused_everywhere(person, item):
    """The person who started the run (or its original) can neither decide, claim nor be given it by Next."""
    client = api(person)
    refused = decide(person, item, decision="approved")
    assert refused.status_code == 403 and "separation of duties" in refused.json()["detail"]
    assert client.post(f"/api/approvals/{item.pk}/claim/").status_code == 403
    assert client.post("/api/approvals/next/").status_code == 204
    # Nor is it in her inbox's unclaimed view or its count (the restart chain is stored with the item).
    unclaimed = client.get("/api/approvals/?view=unclaimed").json()
    assert item.pk not in [row["id"] for row in unclaimed["results"]] and unclaimed["counts"]["unclaimed"] == 0
    item.refresh_from_db()
    assert (item.state, item.assignee_id) == ("pending", None)
    assert not ApprovalDecision.objects.filter(request=item).exists()


def test_the_person_who_started_the_run_may_not_decide_it(analyst, team, reviewer, rosa):
    workflow = claim_workflow(rosa, team)
    item = parked_item(rosa, workflow)
    _refused_everywhere(rosa, item)
    assert decide(reviewer, item, decision="approved").status_code == 200

    # A step that turns separation of duties off lets her decide her own run.
    relaxed = parked_item(rosa, claim_workflow(rosa, team, name="Petty cash", separation_of_duties=False))
    assert decide(rosa, relaxed, decision="approved").status_code == 200


def test_a_restart_by_someone_else_is_still_not_decided_by_the_original_starter(analyst, team, reviewer, rosa):
    item = parked_item(rosa, claim_workflow(rosa, team))
    assert decide(reviewer, item, decision="approved").status_code == 200
    original = drive(item.run)
    assert original.status == "succeeded"

    restart = drive(run_restart(run=original, step_key="review", actor=analyst))
    assert restart.initiator_id == analyst.pk and restart.restarted_from_id == original.pk
    again = ApprovalRequest.objects.get(run=restart)
    _refused_everywhere(rosa, again)
    assert decide(reviewer, again, decision="approved").status_code == 200
    assert drive(restart).status == "succeeded"


def test_a_restart_of_a_replay_is_not_decided_by_the_original_starter(analyst, team, reviewer, admin_user_role, rosa):
    item = parked_item(rosa, claim_workflow(rosa, team))
    assert decide(reviewer, item, decision="approved").status_code == 200
    original = drive(item.run)

    # A replay reuses the recorded decision: it asks no one again, so it opens no item.
    replay = drive(run_replay(run=original, actor=analyst))
    assert (replay.status, replay.replay_of_id) == ("succeeded", original.pk)
    assert not ApprovalRequest.objects.filter(run=replay).exists()

    # Restarting the replay asks people again: Adam started it, Ana the replay, but Rosa the original.
    restart = drive(run_restart(run=replay, step_key="review", actor=admin_user_role))
    again = ApprovalRequest.objects.get(run=restart)
    _refused_everywhere(rosa, again)
    assert decide(reviewer, again, decision="approved").status_code == 200
    assert Run.objects.get(pk=restart.pk).initiator_id == admin_user_role.pk
    assert AuditEvent.objects.filter(verb="approval.approved", target_id=str(again.pk), actor_id=reviewer.pk).exists()


def test_whoever_skipped_a_step_with_her_own_output_may_not_decide_the_run(analyst, team, reviewer, rosa):
    """Rosa owns the workflow and reviews; Ana starts a run whose extraction fails for good, and Rosa skips it
    with an output of her own: the approval then judges data Rosa made, so she may not decide it."""
    from django.test import override_settings

    from apps.runs.lifecycle import step_run_claim
    from apps.runs.models import Incident
    from apps.runs.services import incident_skip, run_start
    from apps.runs.sweeper import leases_reclaim

    workflow = claim_workflow(rosa, team)
    # Without a skip, Rosa decides the runs Ana starts.
    plain = parked_item(analyst, workflow)
    assert decide(rosa, plain, decision="approved").status_code == 200

    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"amount": 120.0, "name": "Bo Berg"})
    step = run.step_runs.get(step_key="extract")
    with override_settings(AIOS_STEP_RESTART_CAP=0):
        step_run_claim(step_run_id=step.pk, worker="doomed")
        leases_reclaim(timezone.now() + timedelta(hours=1))
    incident = Incident.objects.get(step_run=step, resolved_at__isnull=True)
    output = {"data": {"amount": 99.0, "claimant": "Bo Berg"}, "confidence": {"amount": 1.0, "claimant": 1.0}}
    incident_skip(incident=incident, actor=rosa, output=output)
    drive(run)
    item = ApprovalRequest.objects.get(run=run)
    _refused_everywhere(rosa, item)
    assert decide(reviewer, item, decision="approved").status_code == 200
