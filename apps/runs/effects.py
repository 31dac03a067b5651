"""The effect ledger: what a side-effecting step did to the outside world, keyed by its idempotency key.

The intent commits before the outside call, the outcome with the step's result. An intent without an
outcome means an attempt died mid-call, so the effect may or may not have happened (DESIGN §6).
"""

from __future__ import annotations

import hashlib

from django.db import transaction
from django.db.models import F

from apps.runs.models import EffectRecord, StepRun


def effect_key(run_id: int, step_key: str) -> str:
    """The idempotency key of a step's side effect: stable across attempts, unique per run and step."""
    return hashlib.sha256(f"aios:{run_id}:{step_key}".encode()).hexdigest()


class StepLost(Exception):
    """The step is no longer this executor's (taken over, cancelled or timed out): stop without acting."""


def effect_intent_record(*, step_run: StepRun) -> str | None:
    """Commit the intent to call the outside world, before the call; returns the state an earlier attempt
    left ("intent": it died mid-call, outcome unknown; "applied"; "failed") or None for the first try.

    Raises StepLost when, by the time the ledger row is ours, the step no longer is: an executor that
    waited here past its lease must not make the call its successor is making. This transaction locks
    only the ledger row and never waits for the run's lock, so it cannot take part in a lock cycle.
    """
    with transaction.atomic():
        still_ours = StepRun.objects.filter(
            pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
        )
        record, created = EffectRecord.objects.select_for_update().get_or_create(
            idempotency_key=effect_key(step_run.run_id, step_run.step_key),
            defaults={"run_id": step_run.run_id, "step_key": step_run.step_key, "attempts": 1},
        )
        # Checked after the ledger row is locked: the successor that took the step over holds it while calling.
        if not still_ours.exists():
            raise StepLost(f"step run {step_run.pk} was taken over before its outside call")
        previous = None if created else record.state
        if not created:
            EffectRecord.objects.filter(pk=record.pk).update(
                state=EffectRecord.State.INTENT, attempts=F("attempts") + 1
            )
    return previous


def effect_outcome_record(*, step_run: StepRun, applied: bool, outcome: str = "") -> None:
    """Record what the call did (inside the result's transaction when it succeeded)."""
    EffectRecord.objects.filter(idempotency_key=effect_key(step_run.run_id, step_run.step_key)).update(
        state=EffectRecord.State.APPLIED if applied else EffectRecord.State.FAILED, outcome=outcome[:2000]
    )
