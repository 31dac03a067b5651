"""The repair loop: relay what the outbox still holds, take back expired leases, re-send lost messages, fire
due timers. Run every few seconds by the beat schedule (apps.runs.tasks.sweep_task); safe to run concurrently
and repeatedly. Each transaction here follows the lock-order rule of apps/runs/lifecycle.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.audit.services import audit_record
from apps.core.telemetry import store
from apps.runs import hooks
from apps.runs.lifecycle import (
    incident_open,
    publish_on_commit,
    run_lock,
    step_run_fail,
    step_run_resume,
    steps_cancel,
)
from apps.runs.models import Run, StepRun, Timer
from apps.runs.outbox import CHILD_FINISHED_TASK, outbox_dispatch, outbox_relay, outbox_task
from apps.runs.plans import step_plan
from apps.runs.trigger_events import run_finished_notify
from apps.runs.triggers import schedules_fire_due, webhook_receipts_prune, webhook_refusals_summarize

logger = logging.getLogger(__name__)


def sweep(*, now: Any = None, renew: Callable[[], bool] = lambda: True) -> dict[str, int]:
    """One pass of the repair loop; returns what it did.

    1. relay outbox rows a crash or a broker outage left unsent;
    2. take back steps whose lease expired (their worker died or stalled), up to the restart cap, after
       which the step becomes an incident a person resolves;
    3. re-send steps queued so long ago that their message was probably lost (Redis without persistence);
    4. fire due timers;
    5. fire due schedule triggers;
    6. forget webhook requests whose timestamp has left the replay window;
    7. record how many refused webhook requests went unrecorded in each minute past the limit that has ended.

    `renew` is called between phases (the sweep task renews its lease there); when it answers False another
    sweeper may have taken over, and this pass stops, its report saying `lease_lost`.
    """
    started = time.time()
    now = now or timezone.now()
    phases: list[Callable[[], dict[str, int]]] = [
        lambda: {"relayed": outbox_relay(older_than_seconds=settings.AIOS_OUTBOX_RELAY_AFTER_SECONDS)},
        lambda: dict(zip(("lease_expired", "incidents"), leases_reclaim(now), strict=True)),
        lambda: {"requeued": queued_resend_stale(now)},
        lambda: {"timers": timers_fire_due(now)},
        # --- triggers: schedules due now (apps/runs/triggers.py) ---
        lambda: {"schedules": schedules_fire_due(now)},
        lambda: {"webhook_receipts_pruned": webhook_receipts_prune(now)},
        lambda: {"webhook_refusals_summarized": webhook_refusals_summarize(now)},
    ]
    report: dict[str, int] = {}
    for index, phase in enumerate(phases):
        if index and not renew():
            report["lease_lost"] = 1
            return report
        report.update(phase())
    for name, hook in hooks.after_sweep.items():
        if not renew():
            report["lease_lost"] = 1
            return report
        try:
            report[name] = hook()
        except Exception:
            logger.exception("the sweep's %s hook failed; the sweep goes on", name)
    # For /metrics: when the sweep ran, how long it took, and the lease takeovers it made (a failed sweep records
    # nothing, so "seconds since the last sweep" grows and says so).
    store.sweep_record(
        started=started,
        finished=time.time(),
        lease_takeovers=report["lease_expired"],
        incidents=report["incidents"],
    )
    return report


def leases_reclaim(now: Any) -> tuple[int, int]:
    """Take back running steps whose lease expired; (re-queued, incidents opened)."""
    taken = incidents = 0
    expired = StepRun.objects.filter(state=StepRun.State.RUNNING, lease_expires_at__lt=now).values_list("pk", "run_id")[
        :200
    ]
    for step_run_id, run_id in expired:
        with transaction.atomic():
            run = run_lock(run_id)
            step_run = (
                StepRun.objects.select_for_update(skip_locked=True)
                .filter(pk=step_run_id, state=StepRun.State.RUNNING, lease_expires_at__lt=now)
                .first()
            )
            if step_run is None:
                continue
            previous_owner = step_run.lease_owner
            if step_run.restarts >= settings.AIOS_STEP_RESTART_CAP:
                StepRun.objects.filter(pk=step_run.pk).update(
                    state=StepRun.State.WAITING,
                    waiting_for="incident",
                    fencing_token=F("fencing_token") + 1,
                    lease_expires_at=None,
                )
                incident_open(
                    run,
                    step_run,
                    f"The step's worker stopped responding {step_run.restarts + 1} times "
                    f"(last: {previous_owner or 'unknown'}); it was not retried again automatically.",
                )
                incidents += 1
            else:
                StepRun.objects.filter(pk=step_run.pk).update(
                    state=StepRun.State.QUEUED,
                    queued_at=now,
                    restarts=F("restarts") + 1,
                    fencing_token=F("fencing_token") + 1,
                    lease_expires_at=None,
                    lease_owner="",
                )
                audit_record(
                    actor=None,
                    verb="step.lease_expired",
                    target=run,
                    data={"step": step_run.step_key, "owner": previous_owner, "restarts": step_run.restarts + 1},
                )
                outbox_dispatch([step_run])
                publish_on_commit(run.pk, [step_run.step_key])
                taken += 1
    return taken, incidents


def queued_resend_stale(now: Any) -> int:
    """Send again the steps queued so long ago that their broker message was probably lost."""
    cutoff = now - timedelta(seconds=settings.AIOS_REQUEUE_AFTER_SECONDS)
    with transaction.atomic():
        stale = list(
            StepRun.objects.select_for_update(skip_locked=True)
            .filter(state=StepRun.State.QUEUED, queued_at__lt=cutoff)
            .only("pk", "step_type")[:500]
        )
        if stale:
            StepRun.objects.filter(pk__in=[s.pk for s in stale], state=StepRun.State.QUEUED).update(queued_at=now)
            outbox_dispatch(stale)
    return len(stale)


def timers_fire_due(now: Any) -> int:
    """Fire every timer due at `now`, each exactly once; returns how many fired."""
    fired = 0
    while True:
        with transaction.atomic():
            timer = (
                Timer.objects.select_for_update(skip_locked=True)
                .filter(fired_at__isnull=True, fire_at__lte=now)
                .order_by("fire_at")
                .first()
            )
            if timer is None:
                return fired
            Timer.objects.filter(pk=timer.pk).update(fired_at=now)
            _timer_fire(timer)
            fired += 1


def _timer_fire(timer: Timer) -> None:
    """Act on one due timer; a timer whose step moved on (another token, another state) does nothing."""
    run = run_lock(timer.run_id)
    if run.is_finished:
        return
    if timer.kind == Timer.Kind.RUN_TIMEOUT:
        keys = steps_cancel(run, reason="the run timed out")
        Run.objects.filter(pk=run.pk).update(
            status=Run.Status.FAILED, finished_at=timezone.now(), error="The run exceeded its time limit."
        )
        audit_record(actor=None, verb="run.failed", target=run, data={"error": "timeout"})
        publish_on_commit(run.pk, keys)
        if run.parent_step_run_id:
            outbox_task(CHILD_FINISHED_TASK, [run.pk])  # its parent is another run: rule 3 of the lock order
        run_finished_notify(run)  # --- triggers: workflows that start when this one fails ---
        return
    assert timer.step_run_id is not None
    step_run = StepRun.objects.select_related("run__version").get(pk=timer.step_run_id)
    if step_run.fencing_token != timer.fencing_token:
        return
    if timer.kind == Timer.Kind.RETRY and step_run.state == StepRun.State.WAITING and step_run.waiting_for == "retry":
        StepRun.objects.filter(pk=step_run.pk).update(
            state=StepRun.State.QUEUED, waiting_for="", queued_at=timezone.now()
        )
        outbox_dispatch([step_run])
        publish_on_commit(run.pk, [step_run.step_key])
    elif timer.kind == Timer.Kind.DELAY and step_run.state == StepRun.State.WAITING:
        step_run_resume(step_run=step_run, output={"waited_until": timer.fire_at.isoformat()})
    elif timer.kind == Timer.Kind.STEP_TIMEOUT and step_run.state == StepRun.State.RUNNING:
        # Bump the token first: the worker may still finish, and its result must be refused.
        StepRun.objects.filter(pk=step_run.pk).update(fencing_token=F("fencing_token") + 1)
        step_run.fencing_token += 1
        limit = step_plan(run, step_run).options.timeout_seconds or 0
        step_run_fail(step_run=step_run, error=f"The step took longer than its {limit:g} s time limit.", retryable=True)
    elif timer.kind == Timer.Kind.APPROVAL_DUE and step_run.state == StepRun.State.WAITING:
        hooks.approval_due(step_run)
