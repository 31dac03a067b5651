"""An item's escalation chain fires in order even when its run is busy as a sweep reaches it: another
transaction (a concurrent sweep firing the earlier step, one that dies doing so, or the engine) holds the run
while the sweep passes the earlier step, and lets go before the sweep reaches the later one."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.accounts.services import user_create
from apps.approvals.models import ApprovalQueue, EscalationTimer
from apps.approvals.services import escalations_fire
from apps.audit.models import AuditEvent
from apps.runs.lifecycle import run_lock
from apps.runs.services import run_start
from tests.approvals.items import PASSWORD, claim_workflow, parked_items

# Timers of another item that the sweep fires between the busy item's two steps: time enough for the run to be
# let go of before the sweep reaches the later step.
BETWEEN = 30


@pytest.mark.django_db(transaction=True)
def test_a_later_step_never_overtakes_an_earlier_one_passed_over_while_the_run_was_busy(analyst, team, reviewer):
    seniors = Group.objects.create(name="claims-seniors")
    sam = user_create(username="sam", password=PASSWORD, roles=["reviewer"], first_name="Sam")
    sam.groups.add(seniors)
    queue = ApprovalQueue.objects.get(key="team:claims")
    assign_perm("approvals.work_approvalqueue", seniors, queue)
    ApprovalQueue.objects.filter(pk=queue.pk).update(
        sla_hours=1,
        escalation=[{"at": 0.5, "action": "remind"}, {"at": 1.0, "action": "reassign"}],
        escalation_group=seniors,
    )
    workflow = claim_workflow(analyst, team)
    runs = [run_start(actor=analyst, workflow=workflow, inputs={"amount": 1.0, "name": name})[0] for name in "AB"]
    busy, other = parked_items(runs)
    now = timezone.now()
    EscalationTimer.objects.filter(request=busy, step=0).update(fire_at=now - timedelta(seconds=60))
    EscalationTimer.objects.filter(request=busy, step=1).update(fire_at=now - timedelta(seconds=1))
    EscalationTimer.objects.filter(request=other).delete()
    EscalationTimer.objects.bulk_create(
        EscalationTimer(request=other, step=index, action="remind", fire_at=now - timedelta(seconds=50 - index))
        for index in range(BETWEEN)
    )
    first_between = EscalationTimer.objects.get(request=other, step=0).pk

    locked, problems = threading.Event(), []

    def hold_the_run_until_the_sweep_moves_on() -> None:
        try:
            with transaction.atomic():
                run_lock(busy.run_id)
                locked.set()
                deadline = timezone.now() + timedelta(seconds=30)
                while not EscalationTimer.objects.filter(pk=first_between, fired_at__isnull=False).exists():
                    if timezone.now() > deadline:
                        problems.append("the sweep never fired the other item's first step")
                        return
                    time.sleep(0.002)
        finally:
            locked.set()
            connection.close()

    holder = threading.Thread(target=hold_the_run_until_the_sweep_moves_on)
    holder.start()
    assert locked.wait(30)
    fired_first = escalations_fire()
    holder.join(30)
    assert not problems, problems

    fired = dict(EscalationTimer.objects.filter(request=busy).values_list("step", "fired_at"))
    assert not (fired[1] is not None and fired[0] is None), "the reassignment fired before the reminder"
    assert fired_first == BETWEEN

    assert escalations_fire() == 2
    verbs = list(
        AuditEvent.objects.filter(target_id=str(busy.pk), verb__in=["approval.reminded", "approval.escalated"])
        .order_by("stream_seq")
        .values_list("verb", flat=True)
    )
    assert verbs == ["approval.reminded", "approval.escalated"]
