"""Writes for runs and step runs: start, claim, heartbeat, complete, fail, wait, resume, cancel, restart.

Every transition is a conditional UPDATE on the state (and, for a running step, the fencing token) it
expects, inside one transaction with its audit event and any Outbox rows it calls for. Celery only hears
about a change after it committed (the outbox relay runs on commit, and the sweeper relays whatever a crash
left behind), so nothing outside the database ever acts on a change that did not happen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, Conflict, Forbidden, Unprocessable, ValidationFailed
from apps.runs import engine
from apps.runs.models import EffectRecord, Incident, Outbox, Run, StepResult, StepRun, Timer
from apps.runs.selectors import run_model_call_totals
from apps.steps.registry import step_config_errors, step_type_get
from apps.workflows.graph import step_options
from apps.workflows.input_schema import input_validate
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_can_edit, workflow_can_run, workflow_version_published_latest

EXECUTE_STEP_TASK = "runs.execute_step"
logger = logging.getLogger(__name__)


# --- dispatch ------------------------------------------------------------------------------------------


def _publish_changed(run_id: int, keys: Iterable[str]) -> None:
    from apps.runs.events import publish_run_changed

    keys = list(keys)
    transaction.on_commit(lambda: publish_run_changed(run_id, keys))


def _dispatch(step_runs: list[StepRun]) -> None:
    """Write one Outbox row per step run (same transaction) and relay them once it commits."""
    if not step_runs:
        return
    rows = Outbox.objects.bulk_create(
        Outbox(task=EXECUTE_STEP_TASK, queue=step_type_get(s.step_type).queue, args=[s.pk]) for s in step_runs
    )
    transaction.on_commit(lambda: _outbox_send_committed(rows))


def _outbox_send_committed(rows: list[Outbox]) -> None:
    """The fast path right after commit: send the rows this transaction wrote, then mark them relayed
    (asynchronous commit). No row lock is needed: the sweeper only relays rows older than
    AIOS_OUTBOX_RELAY_AFTER_SECONDS, and a rare double send is a no-op for the claiming task."""
    from django.db import connection

    from apps.runs.faults import crash_point
    from workers.celery import app

    # The gap the outbox exists for: committed, nothing sent yet. A crash here leaves the rows for the sweeper.
    crash_point("after_result_commit_before_dispatch")
    sent = []
    for row in rows:
        try:
            app.send_task(row.task, args=row.args, queue=row.queue)
        except Exception:  # the broker is down: the sweeper relays what is left
            logger.warning("could not send outbox row %s; the sweeper will", row.pk, exc_info=True)
            break
        sent.append(row.pk)
    if sent:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            Outbox.objects.filter(pk__in=sent).update(relayed_at=timezone.now())
    crash_point("after_dispatch")


def outbox_relay(*, older_than_seconds: float = 0, limit: int = 500) -> int:
    """The sweeper's relay: send unrelayed Outbox rows older than `older_than_seconds` and mark them
    relayed; returns how many were sent.

    Rows are locked with SKIP LOCKED so two sweeps never send the same row at once.
    A row whose send fails stays unrelayed for the next sweep. Marking is committed asynchronously
    (`synchronous_commit = off`): losing that mark in a crash only means one harmless duplicate send.
    """
    from workers.celery import app

    sent = 0
    with transaction.atomic():
        rows = Outbox.objects.select_for_update(skip_locked=True).filter(relayed_at__isnull=True)
        if older_than_seconds:
            rows = rows.filter(created_at__lt=timezone.now() - timedelta(seconds=older_than_seconds))
        done = []
        for row in rows.order_by("pk")[:limit]:
            try:
                app.send_task(row.task, args=row.args, queue=row.queue)
            except Exception:  # the broker is down: leave the row for the sweeper
                Outbox.objects.filter(pk=row.pk).update(attempts=F("attempts") + 1)
                break
            done.append(row.pk)
        if done:
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
            Outbox.objects.filter(pk__in=done).update(relayed_at=timezone.now())
            sent = len(done)
    return sent


# --- starting runs ---------------------------------------------------------------------------------------


@transaction.atomic
def run_start(
    *,
    actor: User,
    workflow: Workflow,
    inputs: Any,
    idempotency_key: str = "",
    trigger: str = "manual",
) -> tuple[Run, bool]:
    """Start a run of the workflow's latest published version; returns (run, created).

    With an `idempotency_key`, a repeated request by the same user returns the first run instead of
    starting another. Refuses with field errors when `inputs` do not fit the version's input schema.
    """
    if not workflow_can_run(actor, workflow):
        raise Forbidden("You may view this workflow but not run it.")
    request_hash = _request_hash(workflow, inputs) if idempotency_key else ""
    if idempotency_key:
        existing = Run.objects.filter(initiator=actor, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _replay(existing, request_hash), False
    if workflow.archived_at is not None:
        raise Conflict(f'"{workflow.name}" is archived: restore it in its settings to start runs again.')
    version = workflow_version_published_latest(workflow)
    if version is None:
        raise Conflict(f'"{workflow.name}" has no published version yet.')
    cleaned, errors = input_validate(version.input_schema, inputs)
    if errors:
        raise ValidationFailed("The run input is not valid.", fields=errors)
    try:
        with transaction.atomic():
            run = _run_create(
                version=version,
                inputs=cleaned,
                actor=actor,
                trigger=trigger,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
            )
    except IntegrityError:
        # A concurrent request with the same key won the insert; answer with its run.
        return _replay(Run.objects.get(initiator=actor, idempotency_key=idempotency_key), request_hash), False
    _advance(run)
    audit_record(
        actor=actor,
        verb="run.started",
        target=run,
        data={"workflow": workflow.slug, "version": version.number, "trigger": trigger},
    )
    return run, True


def _request_hash(workflow: Workflow, inputs: Any) -> str:
    canonical = json.dumps({"workflow": workflow.pk, "inputs": inputs}, sort_keys=True, cls=DjangoJSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(existing: Run, request_hash: str) -> Run:
    """The run an idempotency key already started, if this request is the same one again."""
    if existing.request_hash != request_hash:
        raise Unprocessable(
            "This Idempotency-Key was already used for a different request (another workflow or other inputs). "
            "Use a new key for a new run."
        )
    return existing


def _run_create(
    *,
    version: WorkflowVersion,
    inputs: dict[str, Any],
    actor: User | None,
    trigger: str,
    idempotency_key: str = "",
    request_hash: str = "",
    restarted_from: Run | None = None,
    restart_step_key: str = "",
    parent_step_run: StepRun | None = None,
    item_index: int | None = None,
    graph: dict[str, Any] | None = None,
    mode: str = Run.Mode.LIVE,
    test_settings: dict[str, Any] | None = None,
) -> Run:
    """The Run row and one pending StepRun per step (no audit, no dispatch: the callers do those). A test run
    passes the draft's `graph` to execute (kept on the run, so later edits of the draft never reach it)."""
    # The one gate between drafts and the outside world: only a test run executes anything but a published,
    # frozen version, and a test run never executes without its own snapshot and settings.
    if mode == Run.Mode.TEST:
        if graph is None:
            raise ApplicationError("A test run needs the draft's graph.")
    elif not version.is_published or graph is not None:
        raise ApplicationError(f"Version {version.number} is not published: only a test run may execute a draft.")
    now = timezone.now()
    run = Run.objects.create(
        workflow=version.workflow,
        version=version,
        inputs=inputs,
        initiator=actor,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        trigger=trigger,
        status=Run.Status.RUNNING,
        started_at=now,
        restarted_from=restarted_from,
        restart_step_key=restart_step_key,
        parent_step_run=parent_step_run,
        item_index=item_index,
        graph_snapshot=graph,
        mode=mode,
        test_settings=test_settings or {},
    )
    StepRun.objects.bulk_create(
        StepRun(run=run, step_key=step["key"], step_type=step["type"], name=step.get("name") or step["key"], position=i)
        for i, step in enumerate(run.steps)
    )
    timeout = run.graph.get("timeout_seconds")
    if timeout:
        Timer.objects.create(kind=Timer.Kind.RUN_TIMEOUT, run=run, fire_at=now + timedelta(seconds=float(timeout)))
    return run


# --- the engine's decisions ------------------------------------------------------------------------------


def _advance(run: Run, *, changed: Iterable[str] = ()) -> None:
    """Apply the engine's decision to the run. Callers hold the run row lock (or just created it)."""
    # Only what the decision needs: outputs and streamed text can be large and are read at the end only.
    rows = list(
        StepRun.objects.filter(run=run).only("pk", "run_id", "step_key", "step_type", "state", "branch", "error")
    )
    records = {row.step_key: engine.StepRecord(row.state, row.branch or None) for row in rows}
    decision = engine.decide(run.graph, records)
    by_key = {row.step_key: row for row in rows}
    now = timezone.now()
    for key in decision.skip:
        skipped = by_key[key]
        if StepRun.objects.filter(pk=skipped.pk, state=StepRun.State.PENDING).update(
            state=StepRun.State.SKIPPED, finished_at=now
        ):
            StepResult.objects.create(
                run=run, step_key=key, step_run=skipped, outcome="skipped", attempt=0, fencing_token=0
            )
    to_queue = [by_key[key] for key in decision.start]
    queued = [
        step
        for step in to_queue
        if StepRun.objects.filter(pk=step.pk, state=StepRun.State.PENDING).update(
            state=StepRun.State.QUEUED, queued_at=now
        )
    ]
    _dispatch(queued)
    if decision.run_status is not None and run.status not in Run.FINISHED:
        _run_finish(run, decision, rows)
    _publish_changed(run.pk, [*changed, *decision.start, *decision.skip])


def _run_finish(run: Run, decision: engine.Decision, rows: list[StepRun]) -> None:
    outputs = dict(StepRun.objects.filter(run=run, state=StepRun.State.SUCCEEDED).values_list("step_key", "output"))
    error = ""
    if decision.failed_step:
        failed = next(row for row in rows if row.step_key == decision.failed_step)
        error = f'Step "{failed.step_key}" failed: {failed.error}'
        _steps_cancel(run, reason="the run failed")
    output = engine.run_output(run.graph, outputs) if decision.run_status == "succeeded" else None
    Run.objects.filter(pk=run.pk).update(
        status=decision.run_status, finished_at=timezone.now(), output=output, error=error
    )
    _model_totals_refresh(run)
    run.status = decision.run_status  # type: ignore[assignment]
    audit_record(
        actor=None, verb=f"run.{decision.run_status}", target=run, data={"error": error[:2000]} if error else {}
    )
    if run.parent_step_run_id:
        _child_run_finished(run, str(decision.run_status), output, error)


def _steps_cancel(run: Run, *, reason: str) -> list[str]:
    """Cancel every unfinished step; bumping the fencing token refuses a running worker's late result."""
    keys = list(StepRun.objects.filter(run=run).exclude(state__in=StepRun.FINISHED).values_list("step_key", flat=True))
    StepRun.objects.filter(run=run).exclude(state__in=StepRun.FINISHED).update(
        state=StepRun.State.CANCELLED,
        fencing_token=F("fencing_token") + 1,
        lease_expires_at=None,
        waiting_for="",
        finished_at=timezone.now(),
        error=reason,
    )
    Incident.objects.filter(run=run, resolved_at__isnull=True).update(resolved_at=timezone.now(), resolution="abort")
    return keys


def _child_run_finished(child: Run, status: str, output: Any, error: str) -> None:
    """Tell the parent's `flow.subworkflow` or `flow.foreach` step that one of its child runs finished."""
    assert child.parent_step_run_id is not None
    parent_step = StepRun.objects.select_related("run__version").get(pk=child.parent_step_run_id)
    if parent_step.step_type == "flow.foreach":
        from apps.runs.children import foreach_child_finished

        foreach_child_finished(parent_step)
    elif status == "succeeded":
        step_run_resume(step_run=parent_step, output={"output": output, "run_id": child.pk})
    else:
        step_run_resume(step_run=parent_step, error=f"The sub-workflow run #{child.pk} {status}: {error}")


def _lock_run(run_id: int) -> Run:
    """The run, locked against concurrent engine decisions. Only the run row is locked (`of=self`), and
    as NO KEY UPDATE: locking the joined version and workflow rows too, or blocking the key-share locks
    that inserts referencing the run take, deadlocked concurrent runs against the audit chain's lock."""
    return Run.objects.select_for_update(of=("self",), no_key=True).select_related("version", "workflow").get(pk=run_id)


# --- one step's life -------------------------------------------------------------------------------------


def step_run_claim(*, step_run_id: int, worker: str) -> StepRun | None:
    """Take ownership of a queued step: running, a lease, a new fencing token. None if it is not queued
    (a duplicate delivery, a cancelled run), in which case the caller stops."""
    now = timezone.now()
    updated = StepRun.objects.filter(pk=step_run_id, state=StepRun.State.QUEUED).update(
        state=StepRun.State.RUNNING,
        attempt=F("attempt") + 1,
        fencing_token=F("fencing_token") + 1,
        lease_owner=worker[:200],
        lease_expires_at=now + timedelta(seconds=settings.AIOS_STEP_LEASE_SECONDS),
        started_at=now,
        streamed_text="",  # a new attempt streams afresh
    )
    if not updated:
        return None
    step_run = StepRun.objects.select_related("run", "run__version", "run__workflow").get(pk=step_run_id)
    options = step_options(_definition(step_run))
    if options.timeout_seconds:
        Timer.objects.create(
            kind=Timer.Kind.STEP_TIMEOUT,
            run=step_run.run,
            step_run=step_run,
            fencing_token=step_run.fencing_token,
            fire_at=now + timedelta(seconds=options.timeout_seconds),
        )
    _publish_changed(step_run.run_id, [step_run.step_key])
    return step_run


def step_run_heartbeat(*, step_run: StepRun) -> bool:
    """Extend the lease of a step this worker still owns; False means it lost the step (stop working)."""
    return bool(
        StepRun.objects.filter(
            pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
        ).update(lease_expires_at=timezone.now() + timedelta(seconds=settings.AIOS_STEP_LEASE_SECONDS))
    )


def _definition(step_run: StepRun) -> dict[str, Any]:
    return next(step for step in step_run.run.steps if step["key"] == step_run.step_key)


def _jsonable(value: Any) -> Any:
    # Round-trip through JSON so what is stored is exactly what later steps will read.
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


@transaction.atomic
def step_run_succeed(
    *, step_run: StepRun, output: dict[str, Any], usage: dict[str, Any] | None = None, streamed_text: str = ""
) -> bool:
    """Record a step's result if its fencing token is still current, then advance the run.

    Returns False (and changes nothing) when the token is stale: the step was taken over or cancelled.
    """
    run = _lock_run(step_run.run_id)
    output, usage = _jsonable(output), _jsonable(usage or {})
    branch = str(output.get("branch", "")) if isinstance(output, dict) else ""
    updated = StepRun.objects.filter(
        pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
    ).update(
        state=StepRun.State.SUCCEEDED,
        output=output,
        usage=usage,
        branch=branch[:64],
        streamed_text=streamed_text,
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    if not updated:
        return False
    if step_type_get(step_run.step_type).side_effects:
        effect_outcome_record(step_run=step_run, applied=True)
    _record_success(run, step_run, output, usage)
    _audit_success(run, step_run, usage)
    _advance(run, changed=[step_run.step_key])
    return True


def effect_key(run_id: int, step_key: str) -> str:
    """The idempotency key of a step's side effect: stable across attempts, unique per run and step."""
    return hashlib.sha256(f"aios:{run_id}:{step_key}".encode()).hexdigest()


class StepLost(Exception):
    """The step is no longer this executor's (taken over, cancelled or timed out): stop without acting."""


def effect_intent_record(*, step_run: StepRun) -> str | None:
    """Commit the intent to call the outside world, before the call; returns the state an earlier attempt
    left ("intent": it died mid-call, outcome unknown; "applied"; "failed") or None for the first try.

    Raises StepLost when, by the time the ledger row is ours, the step no longer is: an executor that
    waited here past its lease must not make the call its successor is making.
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
    """Record what the call did (called inside the result's transaction when it succeeded)."""
    EffectRecord.objects.filter(idempotency_key=effect_key(step_run.run_id, step_run.step_key)).update(
        state=EffectRecord.State.APPLIED if applied else EffectRecord.State.FAILED, outcome=outcome[:2000]
    )


@transaction.atomic
def step_run_incident(*, step_run: StepRun, reason: str) -> bool:
    """Hand a running step to a person: it waits on an open incident; late results are refused."""
    run = _lock_run(step_run.run_id)
    updated = StepRun.objects.filter(
        pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
    ).update(
        state=StepRun.State.WAITING, waiting_for="incident", fencing_token=F("fencing_token") + 1, lease_expires_at=None
    )
    if not updated:
        return False
    Incident.objects.create(run=run, step_run=step_run, reason=reason)
    audit_record(
        actor=None, verb="step.incident_opened", target=run, data={"step": step_run.step_key, "reason": reason}
    )
    _publish_changed(run.pk, [step_run.step_key])
    return True


def _record_result(run: Run, step_run: StepRun, *, outcome: str, output: Any = None, error: str = "") -> None:
    """The step's one StepResult (unique per run and step: a second completion cannot commit)."""
    StepResult.objects.create(
        run=run,
        step_key=step_run.step_key,
        step_run=step_run,
        outcome=outcome,
        output=output,
        error=error,
        attempt=step_run.attempt,
        fencing_token=step_run.fencing_token,
    )


def _record_success(run: Run, step_run: StepRun, output: Any, usage: dict[str, Any]) -> None:
    _record_result(run, step_run, outcome="succeeded", output=output)
    if usage.get("calls"):
        _model_totals_refresh(run)


def _model_totals_refresh(run: Run) -> None:
    """Set the run's token and cost totals from its InferenceCall rows: every call, failed attempts and
    failed steps included (they were paid for), the figures the run page and the budget use. Called when
    a step ends or fails an attempt and when the run ends (finished, failed, cancelled, timed out); set,
    not incremented, so a late duplicate cannot count twice. A call recorded after its run ended (a
    stale worker's) shows on the run page but not in these stored totals."""
    totals = run_model_call_totals(run)
    if not totals["calls"]:
        return  # call records are never deleted: a run without any keeps its zeros, and no write is needed
    Run.objects.filter(pk=run.pk).update(
        total_prompt_tokens=totals["prompt_tokens"],
        total_generated_tokens=totals["generated_tokens"],
        total_cost=totals["cost"],
    )


def _audit_success(run: Run, step_run: StepRun, usage: dict[str, Any], actor: User | None = None) -> None:
    audit_record(
        actor=actor,
        verb="step.succeeded",
        target=run,
        data={"step": step_run.step_key, "attempt": step_run.attempt, "usage": usage},
    )


@transaction.atomic
def step_run_fail(*, step_run: StepRun, error: str, retryable: bool = False, streamed_text: str | None = None) -> bool:
    """Record a failed attempt if the fencing token is current: schedule a retry when the step's policy
    allows one, else fail the step (and the run, unless an error branch handles it)."""
    run = _lock_run(step_run.run_id)
    policy = step_options(_definition(step_run)).retry
    fresh = StepRun.objects.get(pk=step_run.pk)
    if fresh.state != StepRun.State.RUNNING or fresh.fencing_token != step_run.fencing_token:
        return False
    will_retry = fresh.attempt < policy.max_attempts and (retryable or policy.retry_on == "any")
    now = timezone.now()
    # None (a timeout decided elsewhere): keep what the attempt streamed so far.
    text = {} if streamed_text is None else {"streamed_text": streamed_text}
    _model_totals_refresh(run)
    if will_retry:
        delay = policy.delay_for(fresh.attempt, random.random())  # noqa: S311 - jitter, not security
        StepRun.objects.filter(pk=step_run.pk).update(
            state=StepRun.State.WAITING,
            waiting_for="retry",
            error=error,
            lease_expires_at=None,
            **text,
        )
        Timer.objects.create(
            kind=Timer.Kind.RETRY,
            run=run,
            step_run=step_run,
            fencing_token=fresh.fencing_token,
            fire_at=now + timedelta(seconds=delay),
        )
        audit_record(
            actor=None,
            verb="step.retry_scheduled",
            target=run,
            data={
                "step": step_run.step_key,
                "attempt": fresh.attempt,
                "delay_seconds": round(delay, 3),
                "error": error[:2000],
            },
        )
        _publish_changed(run.pk, [step_run.step_key])
        return True
    StepRun.objects.filter(pk=step_run.pk).update(
        state=StepRun.State.FAILED, error=error, finished_at=now, lease_expires_at=None, **text
    )
    _record_result(run, fresh, outcome="failed", error=error)
    audit_record(
        actor=None,
        verb="step.failed",
        target=run,
        data={"step": step_run.step_key, "attempt": fresh.attempt, "error": error[:2000]},
    )
    _advance(run, changed=[step_run.step_key])
    return True


@transaction.atomic
def step_run_wait(
    *, step_run: StepRun, for_what: str, fire_at: Any = None, details: dict[str, Any] | None = None
) -> bool:
    """Park a running step (this worker owned it) until a timer or another service resumes it."""
    run = _lock_run(step_run.run_id)
    updated = StepRun.objects.filter(
        pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
    ).update(state=StepRun.State.WAITING, waiting_for=for_what[:16], lease_expires_at=None)
    if not updated:
        return False
    if fire_at is not None:
        kind = Timer.Kind.DELAY if for_what == "timer" else Timer.Kind.APPROVAL_DUE
        Timer.objects.create(
            kind=kind, run=run, step_run=step_run, fencing_token=step_run.fencing_token, fire_at=fire_at
        )
    audit_record(
        actor=None,
        verb="step.waiting",
        target=run,
        data={"step": step_run.step_key, "for": for_what, **(details or {})},
    )
    _publish_changed(run.pk, [step_run.step_key])
    return True


@transaction.atomic
def step_run_resume(
    *, step_run: StepRun, output: dict[str, Any] | None = None, error: str = "", actor: User | None = None
) -> bool:
    """Finish a waiting step with `output` (or fail it with `error`); False if it was no longer waiting."""
    run = _lock_run(step_run.run_id)
    now = timezone.now()
    state = StepRun.State.FAILED if error else StepRun.State.SUCCEEDED
    output = _jsonable(output or {})
    updated = StepRun.objects.filter(pk=step_run.pk, state=StepRun.State.WAITING).update(
        state=state,
        output=None if error else output,
        branch=str(output.get("branch", ""))[:64] if not error else "",
        error=error,
        waiting_for="",
        finished_at=now,
    )
    if not updated:
        return False
    fresh = StepRun.objects.get(pk=step_run.pk)
    if error:
        _record_result(run, fresh, outcome="failed", error=error)
        audit_record(actor=actor, verb="step.failed", target=run, data={"step": fresh.step_key, "error": error[:2000]})
    else:
        _record_success(run, fresh, output, {})
        _audit_success(run, fresh, {}, actor)
    _advance(run, changed=[fresh.step_key])
    return True


# --- operating runs --------------------------------------------------------------------------------------


@transaction.atomic
def run_cancel(*, run: Run, actor: User | None, reason: str = "") -> Run:
    """Cancel a run that has not finished: every unfinished step is cancelled and late results refused."""
    locked = _lock_run(run.pk)
    if locked.is_finished:
        raise Conflict(f"Run #{run.pk} already {locked.status}; only an unfinished run can be cancelled.")
    keys = _steps_cancel(locked, reason=reason or "cancelled")
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.CANCELLED, finished_at=timezone.now(), error=reason or "Cancelled."
    )
    _model_totals_refresh(locked)
    audit_record(actor=actor, verb="run.cancelled", target=locked, data={"reason": reason[:500]})
    _publish_changed(run.pk, keys)
    for child in Run.objects.filter(parent_step_run__run=locked).exclude(status__in=Run.FINISHED):
        run_cancel(run=child, actor=actor, reason=f"its parent run #{run.pk} was cancelled")
    locked.refresh_from_db()
    return locked


@transaction.atomic
def run_restart(*, run: Run, step_key: str, actor: User, overrides: dict[str, dict[str, Any]] | None = None) -> Run:
    """Start a new run of the same version and inputs, linked to `run`, that reuses the recorded outputs
    of every step that does not depend on `step_key` and executes `step_key` and what follows it.

    With `overrides` ({step key: {config field: value}}) it is a what-if run: those steps execute with
    the given config values (another prompt, another model) over the pinned version's; refused with
    field errors when a merged config is not valid.
    """
    original = _lock_run(run.pk)
    if not original.is_finished:
        raise Conflict(f"Run #{run.pk} is still {original.status}; restart it once it has finished (or cancel it).")
    if original.is_test:
        raise Conflict("A test run is not restarted: test the draft again instead.")
    if step_key not in {step["key"] for step in original.version.steps}:
        raise ApplicationError(f'Run #{run.pk} has no step "{step_key}".')
    if not workflow_can_run(actor, original.workflow):
        raise Forbidden("You may view this run but not run its workflow.")
    if overrides and not workflow_can_edit(actor, original.workflow):
        raise Forbidden("Trying other step settings needs the right to change this workflow.")
    old_steps = {s.step_key: s for s in StepRun.objects.filter(run=original)}
    succeeded = [key for key, step in old_steps.items() if step.state == StepRun.State.SUCCEEDED]
    reused = engine.reusable_before(original.version.graph, step_key, succeeded)
    overrides = _overrides_validate(original, overrides or {}, reused=set(reused))
    new = _run_create(
        version=original.version,
        inputs=original.inputs,
        actor=actor,
        trigger="what_if" if overrides else "restart",
        restarted_from=original,
        restart_step_key=step_key,
    )
    if overrides:
        Run.objects.filter(pk=new.pk).update(mode=Run.Mode.WHAT_IF, overrides=overrides)
        new.mode, new.overrides = Run.Mode.WHAT_IF, overrides
    now = timezone.now()
    for step in StepRun.objects.filter(run=new, step_key__in=reused):
        old = old_steps[step.step_key]
        StepRun.objects.filter(pk=step.pk).update(
            state=StepRun.State.SUCCEEDED,
            output=old.output,
            usage=old.usage,
            branch=old.branch,
            streamed_text=old.streamed_text,
            reused_from=old,
            started_at=now,
            finished_at=now,
        )
        StepResult.objects.create(
            run=new,
            step_key=step.step_key,
            step_run=step,
            outcome="succeeded",
            output=old.output,
            attempt=0,
            fencing_token=0,
        )
    audit_record(
        actor=actor,
        verb="run.what_if_started" if overrides else "run.restarted",
        target=new,
        data={
            "from_run": original.pk,
            "from_step": step_key,
            "reused_steps": sorted(reused),
            **({"overrides": overrides} if overrides else {}),
        },
    )
    _advance(new)
    return new


# What a what-if run may change: how a model is asked, never where data goes or who decides.
WHAT_IF_FIELDS = frozenset({"prompt", "system", "model", "temperature", "seed", "max_new_tokens"})


def _overrides_validate(run: Run, overrides: Any, *, reused: set[str]) -> dict[str, dict[str, Any]]:
    """What-if overrides, checked: LLM steps that run again, only the WHAT_IF_FIELDS, merged configs valid."""
    if not isinstance(overrides, dict):
        raise ValidationFailed("Overrides must be an object of step keys.", fields={"overrides": ["not an object"]})
    steps = {step["key"]: step for step in run.version.steps}
    errors: dict[str, list[str]] = {}
    for key, values in overrides.items():
        if key not in steps:
            errors[key] = [f'Run #{run.pk} has no step "{key}".']
        elif not str(steps[key]["type"]).startswith("llm."):
            errors[key] = ["Only model steps (llm.*) can be changed in a what-if run."]
        elif key in reused:
            errors[key] = ["This step runs before the restart point, so its recorded output is reused unchanged."]
        elif not isinstance(values, dict) or not values:
            errors[key] = ["Give an object of config fields to change."]
        elif set(values) - WHAT_IF_FIELDS:
            unknown = ", ".join(sorted(set(values) - WHAT_IF_FIELDS))
            errors[key] = [f"A what-if run may change {', '.join(sorted(WHAT_IF_FIELDS))}; not {unknown}."]
        else:
            merged = {**steps[key].get("config", {}), **values}
            problems = step_config_errors(steps[key]["type"], merged)
            if problems:
                errors[key] = problems
    if errors:
        raise ValidationFailed("The what-if changes are not valid.", fields=errors)
    return {key: dict(values) for key, values in overrides.items()}


@transaction.atomic
def run_replay(*, run: Run, actor: User) -> Run:
    """Re-execute a finished run from its recordings: a new run of the same version and inputs whose
    model calls are answered by `run`'s recorded calls and whose side-effecting steps reuse `run`'s
    results, so nothing reaches a model server or the outside world. Its outputs must equal the
    original's byte for byte; any difference means the run was not reproducible."""
    original = _lock_run(run.pk)
    if original.is_test:
        raise Conflict("A test run is not replayed: test the draft again instead.")
    if not original.is_finished:
        raise Conflict(f"Run #{run.pk} is still {original.status}; replay it once it has finished.")
    if not workflow_can_run(actor, original.workflow):
        raise Forbidden("You may view this run but not run its workflow.")
    new = _run_create(version=original.version, inputs=original.inputs, actor=actor, trigger="replay")
    source = original.replay_of_id or original.pk  # a replay of a replay reads the first recording
    # A what-if run's changed settings are part of what it did: its replay asks the same questions.
    Run.objects.filter(pk=new.pk).update(mode=Run.Mode.REPLAY, replay_of_id=source, overrides=original.overrides)
    new.mode, new.replay_of_id, new.overrides = Run.Mode.REPLAY, source, original.overrides
    audit_record(actor=actor, verb="run.replay_started", target=new, data={"replay_of": source})
    _advance(new)
    return new


# --- the sweeper and timers ------------------------------------------------------------------------------


def sweep(*, now: Any = None) -> dict[str, int]:
    """One pass of the repair loop; returns what it did. Safe to run concurrently and repeatedly.

    1. relay outbox rows a crash or a broker outage left unsent;
    2. take back steps whose lease expired (their worker died or stalled), up to the restart cap, after
       which the step becomes an incident a person resolves;
    3. re-send steps queued so long ago that their message was probably lost (Redis without persistence);
    4. fire due timers.
    """
    now = now or timezone.now()
    report = {"relayed": outbox_relay(older_than_seconds=settings.AIOS_OUTBOX_RELAY_AFTER_SECONDS)}
    report["lease_expired"], report["incidents"] = leases_reclaim(now)
    report["requeued"] = queued_resend_stale(now)
    report["timers"] = timers_fire_due(now)
    return report


def leases_reclaim(now: Any) -> tuple[int, int]:
    """Take back running steps whose lease expired; (re-queued, incidents opened)."""
    taken = incidents = 0
    expired = StepRun.objects.filter(state=StepRun.State.RUNNING, lease_expires_at__lt=now).values_list("pk", "run_id")[
        :200
    ]
    for step_run_id, run_id in expired:
        with transaction.atomic():
            run = _lock_run(run_id)
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
                reason = (
                    f"The step's worker stopped responding {step_run.restarts + 1} times "
                    f"(last: {previous_owner or 'unknown'}); it was not retried again automatically."
                )
                Incident.objects.create(run=run, step_run=step_run, reason=reason)
                audit_record(
                    actor=None,
                    verb="step.incident_opened",
                    target=run,
                    data={"step": step_run.step_key, "reason": reason},
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
                _dispatch([step_run])
                taken += 1
            _publish_changed(run.pk, [step_run.step_key])
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
            _dispatch(stale)
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
    run = _lock_run(timer.run_id)
    if run.is_finished:
        return
    if timer.kind == Timer.Kind.RUN_TIMEOUT:
        keys = _steps_cancel(run, reason="the run timed out")
        Run.objects.filter(pk=run.pk).update(
            status=Run.Status.FAILED, finished_at=timezone.now(), error="The run exceeded its time limit."
        )
        _model_totals_refresh(run)
        audit_record(actor=None, verb="run.failed", target=run, data={"error": "timeout"})
        _publish_changed(run.pk, keys)
        return
    assert timer.step_run_id is not None
    step_run = StepRun.objects.select_related("run__version").get(pk=timer.step_run_id)
    if step_run.fencing_token != timer.fencing_token:
        return
    if timer.kind == Timer.Kind.RETRY and step_run.state == StepRun.State.WAITING and step_run.waiting_for == "retry":
        StepRun.objects.filter(pk=step_run.pk).update(
            state=StepRun.State.QUEUED, waiting_for="", queued_at=timezone.now()
        )
        _dispatch([step_run])
        _publish_changed(run.pk, [step_run.step_key])
    elif timer.kind == Timer.Kind.DELAY and step_run.state == StepRun.State.WAITING:
        step_run_resume(step_run=step_run, output={"waited_until": timer.fire_at.isoformat()})
    elif timer.kind == Timer.Kind.STEP_TIMEOUT and step_run.state == StepRun.State.RUNNING:
        # Bump the token first: the worker may still finish, and its result must be refused.
        StepRun.objects.filter(pk=step_run.pk).update(fencing_token=F("fencing_token") + 1)
        step_run.fencing_token += 1
        limit = step_options(_definition(step_run)).timeout_seconds or 0
        step_run_fail(step_run=step_run, error=f"The step took longer than its {limit:g} s time limit.", retryable=True)
    elif timer.kind == Timer.Kind.APPROVAL_DUE and step_run.state == StepRun.State.WAITING:
        from apps.runs.hooks import approval_due

        approval_due(step_run)


# --- incidents -------------------------------------------------------------------------------------------


def _incident_close(incident: Incident, *, actor: User, resolution: str) -> Incident:
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    if not locked.is_open:
        raise Conflict(f"Incident #{incident.pk} was already resolved ({locked.resolution}).")
    locked.resolution, locked.resolved_by, locked.resolved_at = resolution, actor, timezone.now()
    locked.save(update_fields=["resolution", "resolved_by", "resolved_at"])
    return locked


@transaction.atomic
def incident_retry(*, incident: Incident, actor: User) -> Incident:
    """Give the step another round of attempts (its restart count starts again)."""
    run = _lock_run(incident.run_id)
    incident = _incident_close(incident, actor=actor, resolution=Incident.Resolution.RETRY)
    StepRun.objects.filter(pk=incident.step_run_id).update(
        state=StepRun.State.QUEUED, waiting_for="", restarts=0, queued_at=timezone.now()
    )
    audit_record(actor=actor, verb="incident.retried", target=run, data={"incident": incident.pk})
    _dispatch([StepRun.objects.get(pk=incident.step_run_id)])
    _publish_changed(run.pk, [incident.step_run.step_key])
    return incident


@transaction.atomic
def incident_skip(*, incident: Incident, actor: User, output: dict[str, Any]) -> Incident:
    """Treat the step as done with an output the person supplies; the run continues from there."""
    if not isinstance(output, dict):
        raise ValidationFailed("The output must be a JSON object.", fields={"output": ["Must be a JSON object."]})
    run = _lock_run(incident.run_id)
    incident = _incident_close(incident, actor=actor, resolution=Incident.Resolution.SKIP)
    audit_record(actor=actor, verb="incident.skipped", target=run, data={"incident": incident.pk})
    step_run_resume(step_run=incident.step_run, output=output, actor=actor)
    return incident


@transaction.atomic
def incident_abort(*, incident: Incident, actor: User) -> Incident:
    """Stop the run: the step and the run are cancelled."""
    incident = _incident_close(incident, actor=actor, resolution=Incident.Resolution.ABORT)
    audit_record(actor=actor, verb="incident.aborted", target=incident.run, data={"incident": incident.pk})
    run_cancel(run=incident.run, actor=actor, reason=f"aborted from incident #{incident.pk}")
    return incident
