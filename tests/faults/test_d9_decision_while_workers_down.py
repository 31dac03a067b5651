"""D9: approvals decided while every worker (and beat) is down, and approval due times that pass during
the outage.

Expected: a decision is stored at once (HTTP 2xx from the API, no worker needed); runs continue when the
workers return; each undecided gate's due timer fires exactly once (one expiry per gate), and the due
timers of decided gates do nothing.
"""

from __future__ import annotations

import time

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.approvals.models import ApprovalRequest
from apps.audit.models import AuditEvent
from apps.runs.models import StepRun, Timer
from apps.runs.services import run_start
from tests.faults.harness import check_invariants, percentile, sized, wait_runs, wait_until
from tests.faults.workflows import N_INPUT, publish
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(10, 100)
# Long enough for every gate to open before any is due (the larger size opens more of them).
DUE_SECONDS = sized(6, 30)


def graph() -> dict:
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n * 10"}}},
            {
                "key": "review",
                "type": "human.approval",
                "config": {"queue": "team:claims", "title": "D9 gate", "due_in_seconds": DUE_SECONDS},
                "inputs": {"amount": "steps.prepare.amount"},
            },
            {"key": "approved", "type": "data.transform", "config": {"fields": {"by": "steps.review.decided_by"}}},
            {"key": "expired", "type": "data.transform", "config": {"fields": {"why": "steps.review.decision"}}},
        ],
        "edges": [
            {"from": "prepare", "to": "review"},
            {"from": "review", "to": "approved", "when": "approved"},
            {"from": "review", "to": "expired", "when": "expired"},
        ],
    }


@pytest.mark.timeout(sized(120, 600))
def test_d9_decisions_during_an_outage_resume_and_each_due_timer_fires_once(analyst, reviewer, team, fleet):
    workflow = publish(analyst, "D9 gates", graph(), team=team, input_schema=N_INPUT)
    fleet.worker(concurrency=2, wait=False)
    fleet.beat(wait=False)
    fleet.ready()
    ids = [run_start(actor=analyst, workflow=workflow, inputs={"n": n})[0].pk for n in range(N)]
    wait_until(
        lambda: ApprovalRequest.objects.filter(run_id__in=ids, state="pending").count() == N,
        timeout=60,
        what=f"{N} approval requests to open",
    )
    fleet.kill_all()

    # Every worker is gone: decide half of the gates through the API; the rest pass their due time.
    client = APIClient()
    client.force_authenticate(reviewer)
    requests = list(ApprovalRequest.objects.filter(run_id__in=ids).order_by("run_id"))
    to_decide, to_expire = requests[: N // 2], requests[N // 2 :]
    statuses = []
    for request in to_decide:
        response = client.post(f"/api/approvals/{request.pk}/decide/", {"decision": "approved"}, format="json")
        statuses.append(response.status_code)
    stored_at_once = ApprovalRequest.objects.filter(pk__in=[r.pk for r in to_decide], state="approved").count()
    latest_due = max(r.due_at for r in requests)
    time.sleep(max((latest_due - timezone.now()).total_seconds(), 0) + 1.0)
    assert not Timer.objects.filter(run_id__in=ids, kind="approval_due", fired_at__isnull=False).exists(), (
        "a due timer fired while no sweeper was running"
    )

    restarted_at = timezone.now()
    fleet.worker(concurrency=2, wait=False)
    fleet.beat(wait=False)
    fleet.ready()
    wait_runs(ids, timeout=sized(60, 300))
    invariants = check_invariants(ids)

    expiries = dict.fromkeys((r.pk for r in requests), 0)
    for target_id in AuditEvent.objects.filter(
        verb="approval.expired", target_type="approvals.approvalrequest"
    ).values_list("target_id", flat=True):
        if int(target_id) in expiries:
            expiries[int(target_id)] += 1
    fired_once = [r.pk for r in to_expire if expiries[r.pk] == 1]
    decided_then_expired = [r.pk for r in to_decide if expiries[r.pk] != 0]
    timers = list(Timer.objects.filter(run_id__in=ids, kind="approval_due").values_list("step_run__run_id", "fired_at"))
    timers_per_gate = {run_id: sum(1 for r, _ in timers if r == run_id) for run_id in ids}
    states = dict(ApprovalRequest.objects.filter(run_id__in=ids).values_list("run_id", "state"))
    branch_ok = all(
        StepRun.objects.get(run_id=r.run_id, step_key="approved" if r in to_decide else "expired").state == "succeeded"
        for r in requests
    )
    resume = [
        (step.started_at - restarted_at).total_seconds()
        for step in StepRun.objects.filter(run_id__in=[r.run_id for r in to_decide], step_key="approved")
    ]
    resumed = invariants.succeeded
    ok = (
        resumed == N
        and stored_at_once == len(to_decide)
        and all(code == 200 for code in statuses)
        and len(fired_once) == len(to_expire)
        and not decided_then_expired
        and all(count == 1 for count in timers_per_gate.values())
        and branch_ok
        and not invariants.problems
    )
    record_figure(
        f"D9 resumed {resumed}/{N} decided_while_down {stored_at_once}/{len(to_decide)} (HTTP {sorted(set(statuses))}) "
        f"escalations_fired_per_gate_1 {len(fired_once)}/{len(to_expire)} "
        f"decided_gates_expired {len(decided_then_expired)} "
        f"resume_delay_after_worker_start_p95_s {percentile(resume, 0.95):.1f} {'ok' if ok else 'miss'}"
    )
    assert all(code == 200 for code in statuses) and stored_at_once == len(to_decide)
    assert not invariants.problems, "\n".join(invariants.problems)
    assert len(fired_once) == len(to_expire), f"expiries per gate: {expiries}"
    assert not decided_then_expired, f"decided gates that expired too: {decided_then_expired}"
    assert all(count == 1 for count in timers_per_gate.values()), timers_per_gate
    assert branch_ok, f"approval states: {states}"
