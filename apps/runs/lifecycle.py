"""One run's life in the engine: create, advance, finish; and one step's: claim, succeed, fail, wait, resume.

Every transition is a conditional UPDATE on the state (and, for a running step, the fencing token) it
expects, inside one transaction with its audit event and any Outbox rows it calls for. Celery only hears
about a change after it committed, so nothing outside the database ever acts on a change that did not happen.

The lock-order rule. Every transaction of the engine, and of every service that changes a run, follows it:

1. A transaction locks at most one run.
2. It locks that run's row (`run_lock`) before any row that belongs to the run: its step runs, incidents,
   approval requests, timers. Rows taken with SKIP LOCKED (due timers, outbox rows, expired leases) are
   exempt: a SKIP LOCKED never waits, so it cannot close a cycle. The statements that touch rows of many
   runs at once (a batch of claims, the lease renewer, the retention purge's finished runs) take them that way.
3. Work that concerns another run (a finished child telling its parent, a parent cancelling its children,
   a foreach failing fast) is an Outbox row (`runs.child_finished`, `runs.cancel`), handled later in a
   transaction of its own that follows rules 1 and 2.

So two transactions that touch the same run always meet first at its row lock, where one waits for the
other: no deadlock, and no worker whose result commit is aborted. The run lock also orders the run's audit
stream (apps.audit), which is why no other lock is needed to append to it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError
from apps.inference.models import InferenceCall
from apps.runs import engine, hooks
from apps.runs.effects import effect_outcome_record
from apps.runs.events import publish_run_changed
from apps.runs.models import Incident, Run, StepResult, StepRun, Timer
from apps.runs.outbox import CHILD_FINISHED_TASK, outbox_dispatch, outbox_task
from apps.runs.plans import run_plan, step_plan, version_get
from apps.runs.trigger_events import run_finished_notify
from apps.steps.agent_keys import AGENT_WAIT, TOOL_CALL_MARK
from apps.steps.guardrails import held_output_reviewed
from apps.steps.registry import step_type_get
from apps.workflows.models import WorkflowVersion


def publish_on_commit(run_id: int, keys: Iterable[str]) -> None:
    """Tell the run's viewers which steps changed, once (and only if) this transaction commits."""
    keys = list(keys)
    transaction.on_commit(lambda: publish_run_changed(run_id, keys))


def run_lock(run_id: int) -> Run:
    """The run, locked against concurrent engine decisions (rule 2 above: take this first).

    Only the run row is locked, and as NO KEY UPDATE: locking its version and workflow rows too, or blocking
    the key-share locks that inserts referencing the run take, deadlocked concurrent runs (bench/README.md,
    "What bounds them", item 1). Its version comes from the process's cache of published versions."""
    # Written out: the engine takes this lock in every transaction, and the ORM's query building cost more
    # than the statement.
    found = list(Run.objects.raw(_RUN_LOCK_SQL, [run_id]))
    if not found:
        raise Run.DoesNotExist(f"run {run_id} does not exist")
    run = found[0]
    run.version = version_get(run.version_id, run.version_checksum)  # type: ignore[attr-defined]
    return run


def run_try_lock(run_id: int) -> bool:
    """Lock the run as `run_lock` does, unless another transaction holds it: False then, at once. For work that
    may pick another run instead of queueing behind this one (the inbox's "Next item")."""
    with connection.cursor() as cursor:
        cursor.execute(_RUN_TRY_LOCK_SQL, [run_id])
        return cursor.fetchone() is not None


_RUN_TRY_LOCK_SQL = "SELECT id FROM runs_run WHERE id = %s FOR NO KEY UPDATE SKIP LOCKED"

_RUN_LOCK_SQL = (
    "SELECT r.*, v.checksum AS version_checksum FROM runs_run r "
    "JOIN workflows_workflowversion v ON v.id = r.version_id WHERE r.id = %s FOR NO KEY UPDATE OF r"
)


@dataclass
class EagerClaim:
    """An offer, from the worker committing a step's result, to run one successor itself (eager dispatch).

    `run_advance` claims at most one started step on `queue` for `worker` in the same transaction (pending
    straight to running, a short lease, a new fencing token) and leaves it in `claimed`; every other started
    step goes through the outbox as usual."""

    queue: str
    worker: str
    claimed: StepRun | None = None


def output_digest(value: Any) -> str:
    """SHA-256 of a result's canonical JSON: binds what a step or a person decided into the audit stream
    without copying data (which may be large or personal) into it."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- a run's life --------------------------------------------------------------------------------------------


def run_create(
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


class _StepRow(NamedTuple):
    """What the decision needs of one step run, read without building model instances (the whole run's steps
    are read at every decision)."""

    pk: int
    step_key: str
    step_type: str
    state: str
    branch: str
    error: str
    attempt: int
    fencing_token: int

    def step_run(self, run: Run) -> StepRun:
        step_run = StepRun(
            id=self.pk,
            run=run,
            step_key=self.step_key,
            step_type=self.step_type,
            state=self.state,
            attempt=self.attempt,
            fencing_token=self.fencing_token,
        )
        step_run._state.adding = False
        return step_run


def run_advance(run: Run, *, changed: Iterable[str] = (), eager: EagerClaim | None = None) -> None:
    """Apply the engine's decision to the run. Callers hold the run row lock (or just created the run)."""
    # Only what the decision needs: outputs and streamed text can be large and are read at the end only.
    # An agent's tool calls are not graph steps: their outcome is their agent's to read, not the decision's.
    rows = [
        _StepRow(*values)
        for values in StepRun.objects.filter(run=run, parent__isnull=True).values_list(*_StepRow._fields)
    ]
    records = {row.step_key: engine.StepRecord(row.state, row.branch or None) for row in rows}
    decision = engine.decide(run_plan(run).graph, records)
    by_key = {row.step_key: row for row in rows}
    now = timezone.now()
    for key in decision.skip:
        skipped = by_key[key]
        if StepRun.objects.filter(pk=skipped.pk, state=StepRun.State.PENDING).update(
            state=StepRun.State.SKIPPED, finished_at=now
        ):
            StepResult.objects.create(
                run=run, step_key=key, step_run_id=skipped.pk, outcome="skipped", attempt=0, fencing_token=0
            )
    to_queue = [by_key[key].step_run(run) for key in decision.start]
    if eager is not None and eager.claimed is None:
        successor = next((s for s in to_queue if step_type_get(s.step_type).queue == eager.queue), None)
        if successor is not None and _claim_eagerly(run, successor, eager, now):
            to_queue.remove(successor)
    queued = [
        step
        for step in to_queue
        if StepRun.objects.filter(pk=step.pk, state=StepRun.State.PENDING).update(
            state=StepRun.State.QUEUED, queued_at=now
        )
    ]
    outbox_dispatch(queued)
    woken = agents_wake(run, [key for key in changed if TOOL_CALL_MARK in key])
    if decision.run_status is not None and run.status not in Run.FINISHED:
        _run_finish(run, decision, rows)
    publish_on_commit(run.pk, [*changed, *decision.start, *decision.skip, *woken])


def agents_wake(run: Run, tool_call_keys: Sequence[str]) -> list[str]:
    """Send back to work each agent step whose tool calls have all finished, now that those of `tool_call_keys`
    changed: it is queued again and its next execution reads every call's outcome. The run lock is held, so no
    call can finish between the check and the wake. Returns the keys of the agents woken."""
    if not tool_call_keys:
        return []
    parents = set(
        StepRun.objects.filter(run=run, step_key__in=tool_call_keys, parent__isnull=False).values_list(
            "parent_id", flat=True
        )
    )
    woken = []
    for parent_id in sorted(parents):
        if StepRun.objects.filter(parent_id=parent_id).exclude(state__in=StepRun.FINISHED).exists():
            continue
        agent = StepRun.objects.filter(pk=parent_id, state=StepRun.State.WAITING, waiting_for=AGENT_WAIT)
        # Each turn is a new execution: its retry budget and restart cap count from zero, not across the loop
        # (each turn's model calls are recorded under a key of their own, so replay still finds them).
        if agent.update(state=StepRun.State.QUEUED, waiting_for="", queued_at=timezone.now(), attempt=0, restarts=0):
            step_run = StepRun.objects.get(pk=parent_id)
            outbox_dispatch([step_run])
            woken.append(step_run.step_key)
    return woken


def _claim_eagerly(run: Run, step_run: StepRun, eager: EagerClaim, now: Any) -> bool:
    """Claim a pending step for the worker committing this transaction: as durable as the result it commits
    with, so there is no separate claim commit and no message; if the worker dies after the commit, the short
    lease lapses and the sweeper takes the step back."""
    if not StepRun.objects.filter(pk=step_run.pk, state=StepRun.State.PENDING).update(
        state=StepRun.State.RUNNING,
        attempt=F("attempt") + 1,
        fencing_token=F("fencing_token") + 1,
        lease_owner=eager.worker[:200],
        lease_expires_at=now + timedelta(seconds=settings.AIOS_EAGER_LEASE_SECONDS),
        queued_at=now,
        started_at=now,
        streamed_text="",
    ):
        return False
    # The run lock is held and the step was pending, so nothing else changed these since they were read.
    step_run.state = StepRun.State.RUNNING
    step_run.attempt += 1
    step_run.fencing_token += 1
    step_run.lease_owner = eager.worker[:200]
    step_run.started_at = now
    step_run.run = run
    _step_timeout_arm(run, step_run, now)
    eager.claimed = step_run
    return True


def _step_timeout_arm(run: Run, step_run: StepRun, now: Any) -> None:
    """A claimed step with a time limit gets its timer, bound to this attempt's fencing token."""
    timeout = step_plan(run, step_run).options.timeout_seconds
    if timeout:
        Timer.objects.create(
            kind=Timer.Kind.STEP_TIMEOUT,
            run=run,
            step_run=step_run,
            fencing_token=step_run.fencing_token,
            fire_at=now + timedelta(seconds=timeout),
        )


def _run_finish(run: Run, decision: engine.Decision, rows: list[_StepRow]) -> None:
    outputs = dict(StepRun.objects.filter(run=run, state=StepRun.State.SUCCEEDED).values_list("step_key", "output"))
    error = ""
    if decision.failed_step:
        failed = next(row for row in rows if row.step_key == decision.failed_step)
        error = f'Step "{failed.step_key}" failed: {failed.error}'
        steps_cancel(run, reason="the run failed")
    output = engine.run_output(run.graph, outputs) if decision.run_status == "succeeded" else None
    Run.objects.filter(pk=run.pk).update(
        status=decision.run_status, finished_at=timezone.now(), output=output, error=error
    )
    run.status = decision.run_status  # type: ignore[assignment]
    data: dict[str, Any] = {"error": error[:2000]} if error else {"output_sha256": output_digest(output)}
    audit_record(actor=None, verb=f"run.{decision.run_status}", target=run, data=data)
    if run.parent_step_run_id:
        # The parent is another run (rule 3): it hears about this in a transaction of its own.
        outbox_task(CHILD_FINISHED_TASK, [run.pk])
    # --- triggers: workflows that start when this one finishes (an outbox row, rule 3) ---
    run_finished_notify(run)


def steps_cancel(run: Run, *, reason: str) -> list[str]:
    """Cancel every unfinished step; bumping the fencing token refuses a running worker's late result. A result
    held for a person's review goes with it: no one approved it."""
    keys = list(StepRun.objects.filter(run=run).exclude(state__in=StepRun.FINISHED).values_list("step_key", flat=True))
    StepRun.objects.filter(run=run).exclude(state__in=StepRun.FINISHED).update(
        state=StepRun.State.CANCELLED,
        output=None,
        fencing_token=F("fencing_token") + 1,
        lease_expires_at=None,
        waiting_for="",
        finished_at=timezone.now(),
        error=reason,
    )
    Incident.objects.filter(run=run, resolved_at__isnull=True).update(resolved_at=timezone.now(), resolution="abort")
    hooks.run_cancelled(run)
    return keys


def model_calls_store(run: Run, calls: Sequence[Any]) -> None:
    """Store a step's model calls (the InferenceCall records its gateway made) with its outcome, and add them to
    the run's token and cost totals: every call, failed attempts included, since they were paid for.

    Called by the transaction that records the outcome, once its fencing token proved current, so each call is
    stored and counted exactly once: an earlier try of the same transaction that was rolled back (a lost
    connection) may have given them ids, which are cleared; a repeat after a commit whose answer was lost finds
    the token no longer current and stores nothing. A stale attempt's calls are not stored."""
    if not calls:
        return
    for call in calls:
        call.pk = None
        call._state.adding = True
    InferenceCall.objects.bulk_create(list(calls))
    Run.objects.filter(pk=run.pk).update(
        total_prompt_tokens=F("total_prompt_tokens") + sum(call.prompt_tokens for call in calls),
        total_generated_tokens=F("total_generated_tokens") + sum(call.generated_tokens for call in calls),
        total_cost=F("total_cost") + sum((call.cost for call in calls), Decimal(0)),
    )


# --- a step's life ------------------------------------------------------------------------------------------


def step_run_claim(*, step_run_id: int, worker: str) -> StepRun | None:
    """Take ownership of a queued step: running, a lease, a new fencing token. None if it is not queued
    (a duplicate delivery, a cancelled run) or another claimer holds it, in which case the caller stops."""
    claimed = step_runs_claim(step_run_ids=[step_run_id], worker=worker)
    return claimed[0] if claimed else None


def step_runs_claim(*, step_run_ids: list[int], worker: str) -> list[StepRun]:
    """Claim many queued steps in one statement (`step_run_claim` is a batch of one): the asynchronous executor claims
    together the doorbells that arrive within a few milliseconds. Returns the steps claimed (those no longer
    queued, a duplicate delivery or a cancelled run, are left out), each with its run."""
    if not step_run_ids:
        return []
    with transaction.atomic():
        return _step_runs_claim(step_run_ids, worker)


def _step_runs_claim(step_run_ids: list[int], worker: str) -> list[StepRun]:
    now = timezone.now()
    with connection.cursor() as cursor:
        # Rows of several runs in one statement: taken in id order and with SKIP LOCKED, so it never waits on a
        # run's transaction (which holds its run first, then its rows) and never meets another batch in
        # opposite order. A row skipped is being changed by someone else: it stays theirs.
        cursor.execute(
            "UPDATE runs_steprun SET state = %s, attempt = attempt + 1, fencing_token = fencing_token + 1, "
            "lease_owner = %s, lease_expires_at = %s, started_at = %s, streamed_text = '' "
            "WHERE id IN (SELECT id FROM runs_steprun WHERE id = ANY(%s) AND state = %s "
            "ORDER BY id FOR UPDATE SKIP LOCKED) RETURNING id",
            [
                StepRun.State.RUNNING,
                worker[:200],
                now + timedelta(seconds=settings.AIOS_STEP_LEASE_SECONDS),
                now,
                list(step_run_ids),
                StepRun.State.QUEUED,
            ],
        )
        claimed = [row[0] for row in cursor.fetchall()]
    if not claimed:
        return []
    steps: list[StepRun] = list(
        StepRun.objects.filter(pk__in=claimed)
        .select_related("run")
        .annotate(version_checksum=F("run__version__checksum"))
        .order_by("pk")
    )
    for step_run in steps:
        step_run.run.version = version_get(step_run.run.version_id, step_run.version_checksum)  # type: ignore[attr-defined]
        _step_timeout_arm(step_run.run, step_run, now)
        publish_on_commit(step_run.run_id, [step_run.step_key])
    return steps


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    # The step's mapped inputs go into the transaction that records what became of the step, not one of
    # their own; a step without inputs keeps the column as it was.
    return {} if params is None else {"input": jsonable(params)}


def _tool_call_approved(run: Run, step_run: StepRun, output: dict[str, Any], actor: User | None, now: Any) -> bool:
    """A person allowed an agent's tool call: it is queued to run, with the arguments as approved (a reviewer
    may correct them)."""
    arguments = output.get("data")
    changes: dict[str, Any] = {"input": arguments} if isinstance(arguments, dict) and arguments else {}
    if not StepRun.objects.filter(pk=step_run.pk, state=StepRun.State.WAITING, waiting_for="approval").update(
        state=StepRun.State.QUEUED, waiting_for="", queued_at=now, **changes
    ):
        return False
    audit_record(
        actor=actor,
        verb="agent.tool_approved",
        target=run,
        data={
            "step": step_run.step_key,
            "decided_by": output.get("decided_by", ""),
            "edited": output.get("changed_fields", []),
        },
    )
    outbox_dispatch([StepRun.objects.get(pk=step_run.pk)])
    publish_on_commit(run.pk, [step_run.step_key])
    return True


def _transcript(transcript: list[dict[str, Any]] | None) -> dict[str, Any]:
    # An agent's turns, written with what became of the execution that took them.
    return {} if transcript is None else {"transcript": jsonable(transcript)}


def jsonable(value: Any) -> Any:
    """`value` as later steps will read it: round-tripped through JSON, so what is stored is what is read."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


@transaction.atomic
def step_run_succeed(
    *,
    step_run: StepRun,
    output: dict[str, Any],
    usage: dict[str, Any] | None = None,
    streamed_text: str = "",
    params: dict[str, Any] | None = None,
    calls: Sequence[Any] = (),
    eager: EagerClaim | None = None,
    transcript: list[dict[str, Any]] | None = None,
) -> bool:
    """Record a step's result if its fencing token is still current, then advance the run; with `eager`, claim
    a successor for this worker in the same transaction (one synchronous commit for both).

    `params` (what the step's inputs mapped to) is recorded with the result. Returns False (and changes
    nothing) when the token is stale: the step was taken over or cancelled.
    """
    run = run_lock(step_run.run_id)
    output, usage = jsonable(output), jsonable(usage or {})
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
        **_params(params),
        **_transcript(transcript),
    )
    if not updated:
        return False
    model_calls_store(run, calls)
    if step_type_get(step_run.step_type).side_effects:
        effect_outcome_record(step_run=step_run, applied=True)
    _record_success(run, step_run, output, usage)
    _audit_success(run, step_run, output, usage)
    run_advance(run, changed=[step_run.step_key], eager=eager)
    return True


def incident_open(run: Run, step_run: StepRun, reason: str) -> None:
    """Open an incident on a step the caller just parked as waiting for one (the run lock is held)."""
    Incident.objects.create(run=run, step_run=step_run, reason=reason)
    audit_record(
        actor=None, verb="step.incident_opened", target=run, data={"step": step_run.step_key, "reason": reason}
    )
    publish_on_commit(run.pk, [step_run.step_key])


@transaction.atomic
def step_run_incident_open(*, step_run: StepRun, reason: str) -> bool:
    """Hand a running step to a person: it waits on an open incident; late results are refused."""
    run = run_lock(step_run.run_id)
    updated = StepRun.objects.filter(
        pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
    ).update(
        state=StepRun.State.WAITING, waiting_for="incident", fencing_token=F("fencing_token") + 1, lease_expires_at=None
    )
    if not updated:
        return False
    incident_open(run, step_run, reason)
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


def _audit_success(run: Run, step_run: StepRun, output: Any, usage: dict[str, Any], actor: User | None = None) -> None:
    audit_record(
        actor=actor,
        verb="step.succeeded",
        target=run,
        data={
            "step": step_run.step_key,
            "attempt": step_run.attempt,
            "usage": usage,
            "output_sha256": output_digest(output),
        },
    )


@transaction.atomic
def step_run_fail(
    *,
    step_run: StepRun,
    error: str,
    retryable: bool = False,
    streamed_text: str | None = None,
    params: dict[str, Any] | None = None,
    calls: Sequence[Any] = (),
    transcript: list[dict[str, Any]] | None = None,
) -> bool:
    """Record a failed attempt if the fencing token is current: schedule a retry when the step's policy
    allows one, else fail the step (and the run, unless an error branch handles it)."""
    run = run_lock(step_run.run_id)
    policy = step_plan(run, step_run).options.retry
    fresh = StepRun.objects.get(pk=step_run.pk)
    if fresh.state != StepRun.State.RUNNING or fresh.fencing_token != step_run.fencing_token:
        return False
    model_calls_store(run, calls)
    will_retry = fresh.attempt < policy.max_attempts and (retryable or policy.retry_on == "any")
    now = timezone.now()
    # None (a timeout decided elsewhere): keep what the attempt streamed so far.
    text = (
        ({} if streamed_text is None else {"streamed_text": streamed_text}) | _params(params) | _transcript(transcript)
    )
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
        publish_on_commit(run.pk, [step_run.step_key])
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
    run_advance(run, changed=[step_run.step_key])
    return True


@transaction.atomic
def step_run_wait(
    *,
    step_run: StepRun,
    for_what: str,
    fire_at: Any = None,
    details: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    calls: Sequence[Any] = (),
    held_output: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> bool:
    """Park a running step (this worker owned it) until a timer or another service resumes it. `calls` are the
    model calls it made before parking (an agent's turn), stored with the wait. A step that holds its result for
    a person's review parks with it (`held_output`, and the `usage` that produced it): approved, that result is
    the step's output (see `step_run_resume`); until then no later step reads it, since they read succeeded steps
    only."""
    run = run_lock(step_run.run_id)
    held: dict[str, Any] = (
        {} if held_output is None else {"output": jsonable(held_output), "usage": jsonable(usage or {})}
    )
    updated = StepRun.objects.filter(
        pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
    ).update(state=StepRun.State.WAITING, waiting_for=for_what[:16], lease_expires_at=None, **_params(params), **held)
    if not updated:
        return False
    model_calls_store(run, calls)
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
    publish_on_commit(run.pk, [step_run.step_key])
    return True


def _not_approved(decision: dict[str, Any]) -> str:
    """Why a step that waited for a person's yes fails: who rejected it and why, or that no one decided in time."""
    answer = str(decision.get("decision", ""))
    if answer == "rejected":
        reason = f": {decision['reason']}" if decision.get("reason") else ""
        return f"Rejected by {decision.get('decided_by') or 'nobody'}{reason}"
    return f"Not approved ({answer or 'no decision'}): no one decided in time."


@transaction.atomic
def step_run_resume(
    *, step_run: StepRun, output: dict[str, Any] | None = None, error: str = "", actor: User | None = None
) -> bool:
    """Finish a waiting step with `output` (or fail it with `error`); False if it was no longer waiting.

    An agent's tool call that waited for a person is not finished by the decision: approved, it runs (with the
    arguments as the reviewer left them); rejected or expired, it fails with that as the tool's answer."""
    run = run_lock(step_run.run_id)
    now = timezone.now()
    output = jsonable(output or {})
    usage: dict[str, Any] = {}
    waiting = (
        StepRun.objects.filter(pk=step_run.pk, state=StepRun.State.WAITING)
        .values("waiting_for", "step_type", "output", "usage")
        .first()
    )
    if waiting is not None and waiting["waiting_for"] == "approval" and waiting["output"] is not None and not error:
        # A result held for a person's review (an LLM step's injection guardrail): approved, it is the step's
        # output with the reviewer's corrections and the usage that produced it; otherwise the step fails.
        held = waiting["output"]
        if output.get("decision") == "approved":
            output = held_output_reviewed(held, output)
            usage = waiting["usage"] or {}
        else:
            error = _not_approved(output)
    if TOOL_CALL_MARK in step_run.step_key and not error:
        waiting_for = waiting["waiting_for"] if waiting is not None else ""
        if waiting_for == "approval":
            if output.get("decision") == "approved":
                return _tool_call_approved(run, step_run, output, actor, now)
            error = _not_approved(output)
    state = StepRun.State.FAILED if error else StepRun.State.SUCCEEDED
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
    if usage:
        StepRun.objects.filter(pk=step_run.pk).update(usage=usage)
    fresh = StepRun.objects.get(pk=step_run.pk)
    if error:
        _record_result(run, fresh, outcome="failed", error=error)
        audit_record(actor=actor, verb="step.failed", target=run, data={"step": fresh.step_key, "error": error[:2000]})
    else:
        _record_success(run, fresh, output, usage)
        _audit_success(run, fresh, output, usage, actor)
    run_advance(run, changed=[fresh.step_key])
    return True
