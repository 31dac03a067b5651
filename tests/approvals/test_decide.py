"""Human approval: the run parks without a worker, a person decides once, the run resumes on the branch."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from rest_framework.test import APIClient

from apps.approvals.models import ApprovalRequest
from apps.audit.models import AuditEvent
from apps.runs.services import run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.engine import drive
from tests.support.figures import record_figure

GRAPH = {
    "steps": [
        {
            "key": "review",
            "type": "human.approval",
            "config": {"queue": "team:claims", "title": "Check the refund"},
            "inputs": {"amount": "input.amount"},
        },
        {
            "key": "pay",
            "type": "data.transform",
            "config": {"fields": {"paid": "params.amount"}},
            "inputs": {"amount": "input.amount"},
        },
        {"key": "tell", "type": "data.transform", "config": {"fields": {"why": "steps.review.reason"}}},
    ],
    "edges": [
        {"from": "review", "to": "pay", "when": "approved"},
        {"from": "review", "to": "tell", "when": "rejected"},
    ],
}
SCHEMA = {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}


@pytest.fixture
def refund_workflow(analyst, team):
    workflow = workflow_create(actor=analyst, name="Refund", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=GRAPH, input_schema=SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


@pytest.fixture
def parked(analyst, refund_workflow):
    run, _ = run_start(actor=analyst, workflow=refund_workflow, inputs={"amount": 120.5})
    drive(run)
    return run


def test_approval_parks_the_run_and_approving_resumes_the_approved_branch(parked, reviewer):
    review = parked.step_runs.get(step_key="review")
    assert (review.state, review.waiting_for) == ("waiting", "approval")
    request = ApprovalRequest.objects.get(step_run=review)
    assert request.payload == {"amount": 120.5} and request.queue.key == "team:claims"
    client = APIClient()
    client.force_authenticate(reviewer)
    response = client.post(f"/api/approvals/{request.pk}/decide/", {"decision": "approved"}, format="json")
    assert response.status_code == 200, response.content
    drive(parked)
    parked.refresh_from_db()
    assert parked.status == "succeeded" and parked.output == {"paid": 120.5}
    assert parked.step_runs.get(step_key="tell").state == "skipped"
    assert AuditEvent.objects.filter(verb="approval.approved", actor_id=reviewer.pk).count() == 1


def test_second_decision_is_409_and_rejection_needs_a_reason(parked, reviewer, admin_user_role):
    request = ApprovalRequest.objects.get(run=parked)
    client = APIClient()
    client.force_authenticate(reviewer)
    no_reason = client.post(f"/api/approvals/{request.pk}/decide/", {"decision": "rejected"}, format="json")
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["fields"]
    first = client.post(
        f"/api/approvals/{request.pk}/decide/", {"decision": "rejected", "reason": "Duplicate"}, format="json"
    )
    other = APIClient()
    other.force_authenticate(admin_user_role)
    second = other.post(f"/api/approvals/{request.pk}/decide/", {"decision": "approved"}, format="json")
    assert (first.status_code, second.status_code) == (200, 409)
    assert "already rejected" in second.json()["detail"]
    drive(parked)
    parked.refresh_from_db()
    assert parked.status == "succeeded" and parked.output == {"why": "Duplicate"}


def test_initiator_outsider_and_non_members_cannot_decide(parked, analyst, outsider, manager):
    request = ApprovalRequest.objects.get(run=parked)
    for user, status in [(analyst, 403), (manager, 403), (outsider, 404)]:
        client = APIClient()
        client.force_authenticate(user)
        response = client.post(f"/api/approvals/{request.pk}/decide/", {"decision": "approved"}, format="json")
        assert response.status_code == status, (user.username, response.content)
    request.refresh_from_db()
    assert request.state == "pending"


@pytest.mark.django_db(transaction=True)
def test_racing_deciders_produce_exactly_one_decision(analyst, team, reviewer, admin_user_role):
    from apps.accounts.services import user_create

    workflow = workflow_create(actor=analyst, name="Refund race", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=GRAPH, input_schema=SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    deciders = [reviewer, admin_user_role] + [
        user_create(username=f"rev{i}", password="x-long-password-1", roles=["reviewer"]) for i in range(2)
    ]
    for user in deciders[2:]:
        user.groups.add(team.group)  # on the team, so they see its runs
    gates = 10
    runs = [run_start(actor=analyst, workflow=workflow, inputs={"amount": float(i)})[0] for i in range(gates)]
    # A worker process started by an earlier test may claim a step before `drive` sees it queued: wait until
    # every run has parked at its approval, so each gate is raced.
    deadline = time.monotonic() + 60
    while ApprovalRequest.objects.filter(run__in=runs).count() < gates and time.monotonic() < deadline:
        for run in runs:
            drive(run)
        time.sleep(0.1)
    statuses: list[int] = []

    def decide(user, request_id, decision):
        client = APIClient()
        client.force_authenticate(user)
        body = {"decision": decision, "reason": "race"}
        statuses.append(client.post(f"/api/approvals/{request_id}/decide/", body, format="json").status_code)
        connection.close()

    for request in ApprovalRequest.objects.filter(run__in=runs):
        threads = [
            threading.Thread(target=decide, args=(user, request.pk, "approved" if i % 2 else "rejected"))
            for i, user in enumerate(deciders)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    decided = AuditEvent.objects.filter(verb__in=["approval.approved", "approval.rejected"]).count()
    single = sum(
        1
        for request in ApprovalRequest.objects.filter(run__in=runs)
        if AuditEvent.objects.filter(
            verb__in=["approval.approved", "approval.rejected"], target_id=str(request.pk)
        ).count()
        == 1
    )
    ok = decided == gates == single and statuses.count(200) == gates and statuses.count(409) == gates * 3
    record_figure(
        f"C1 decisions_per_gate 1 in {single}/{gates} racers {len(deciders)} conflicts_409 {statuses.count(409)} "
        f"{'ok' if ok else 'miss'}"
    )
    assert ok, statuses
    assert ApprovalRequest.objects.filter(state="pending").count() == 0
