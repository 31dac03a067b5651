"""The effect ledger: what a side-effecting step did to the outside world, keyed by its idempotency key.

The intent commits before the outside call, the outcome with the step's result. An intent without an
outcome means an attempt died mid-call, so the effect may or may not have happened (DESIGN §6).
"""

from __future__ import annotations

import hashlib

from django.db import transaction
from django.db.models import F

from apps.runs.models import EffectRecord, Run, StepRun
from apps.steps.agent_keys import TOOL_CALL_MARK


def effect_key(run: Run, step_key: str) -> str:
    """The idempotency key of a step's side effect: the same on every attempt and in every process, and never
    the same for two runs, whichever installation or database they live in.

    Outside systems remember keys (an email's Message-ID, a posting's unique column, an API's Idempotency-Key)
    longer than a run number is unique: a database reset or a restore from backup hands out run #5 again, and a
    staging and a production installation sharing an ERP or a mailbox both have a run #5. So the key also holds
    the run's creation time in microseconds, which the database stores exactly (the same value read back in any
    process) and which two distinct runs share only by coincidence of the same microsecond. A per-installation id
    was not chosen: a restore brings the old id back with the old data, so a run created after the restore under a
    lost run's number would reuse that run's key.

    The key a step used is kept in its ledger row (`effect_intent_record` returns it): a run whose step first
    called out before this rule existed keeps the key that call used.
    """
    created = round(run.created_at.timestamp() * 1_000_000)
    return hashlib.sha256(f"aios:{run.pk}:{created}:{step_key}".encode()).hexdigest()


class StepLost(Exception):
    """The step is no longer this executor's (taken over, cancelled or timed out): stop without acting."""


def effect_intent_record(*, step_run: StepRun) -> tuple[str | None, str]:
    """Commit the intent to call the outside world, before the call; returns the state an earlier attempt
    left ("intent": it died mid-call, outcome unknown; "applied"; "failed") or None for the first try, and the
    idempotency key the call must use: the one the ledger row holds, so every attempt sends the first one's.

    Raises StepLost when, by the time the ledger row is ours, the step no longer is: an executor that
    waited here past its lease must not make the call its successor is making. This transaction locks
    only the ledger row and never waits for the run's lock, so it cannot take part in a lock cycle.
    """
    with transaction.atomic():
        still_ours = StepRun.objects.filter(
            pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
        )
        # Found by run and step, not by recomputing the key: a row written under an earlier rule for the key
        # still answers (and its key is the one the outside world has seen). Two first attempts insert the same
        # key, so the unique key makes the later one wait for, then find, the earlier one's row.
        record, created = EffectRecord.objects.select_for_update().get_or_create(
            run_id=step_run.run_id,
            step_key=step_run.step_key,
            defaults={"idempotency_key": effect_key(step_run.run, step_run.step_key), "attempts": 1},
        )
        # Checked after the ledger row is locked: the successor that took the step over holds it while calling.
        if not still_ours.exists():
            raise StepLost(f"step run {step_run.pk} was taken over before its outside call")
        previous = None if created else record.state
        if not created:
            EffectRecord.objects.filter(pk=record.pk).update(
                state=EffectRecord.State.INTENT, attempts=F("attempts") + 1
            )
    return previous, record.idempotency_key


def effect_outcome_record(*, step_run: StepRun, applied: bool, outcome: str = "") -> None:
    """Record what the call did (inside the result's transaction when it succeeded)."""
    EffectRecord.objects.filter(run_id=step_run.run_id, step_key=step_run.step_key).update(
        state=EffectRecord.State.APPLIED if applied else EffectRecord.State.FAILED, outcome=outcome[:2000]
    )


def effects_sent(run: Run, *, exclude: set[str]) -> list[str]:
    """The graph steps of `run` (outside `exclude`) whose side effect reached, or may have reached, the outside
    world; an agent's tool call counts as its agent's (the agent is what a restart executes again or reuses)."""
    keys = EffectRecord.objects.filter(
        run=run, state__in=(EffectRecord.State.APPLIED, EffectRecord.State.INTENT)
    ).values_list("step_key", flat=True)
    owners = {key.split(TOOL_CALL_MARK, 1)[0] for key in keys}
    return sorted(owner for owner in owners if owner not in exclude)
