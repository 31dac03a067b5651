"""Executing claimed steps: map a step's inputs, call its step type, record the outcome; then, with eager
dispatch, the successor this worker claimed in the same transaction, and so on within the chain's budget.

The process's lease renewer (apps.runs.leases) keeps the lease of the step being executed alive; if a renewal
finds the step taken over (lease expired and re-claimed, cancelled, timed out), the result that eventually
comes back is refused by the fencing token, never recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone
from pydantic import ValidationError

from apps.core.database import db_call
from apps.core.telemetry import tracing
from apps.runs import hooks
from apps.runs.agent import agent_history, agent_tools_start
from apps.runs.children import WAIT_STARTERS
from apps.runs.effects import StepLost, effect_intent_record, effect_key, effect_outcome_record
from apps.runs.events import TokenStream
from apps.runs.faults import crash_point
from apps.runs.leases import renewer
from apps.runs.lifecycle import (
    EagerClaim,
    jsonable,
    output_digest,
    step_run_claim,
    step_run_fail,
    step_run_incident_open,
    step_run_succeed,
    step_run_wait,
)
from apps.runs.models import Run, StepRun
from apps.runs.plans import step_plan
from apps.steps.agent_keys import AGENT_WAIT, TOOL_CALL_MARK
from apps.steps.base import AgentHistory, StepContext, StepError, StepOutcome, StepType
from apps.steps.expressions import ExpressionError, cel_evaluate, template_render
from apps.steps.guardrails import held_output_reviewed, held_review_proposal
from apps.steps.llm import NOT_ASKED
from apps.steps.registry import step_config_parse, step_type_get
from apps.workflows.graph import StepOptions, TemplateMapping

logger = logging.getLogger(__name__)

# How often the watchdog of a step on the asynchronous executor looks at its time limit and its lease.
WATCHDOG_INTERVAL_SECONDS = 0.5


def worker_identity() -> str:
    """host:pid:thread, recorded as the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@dataclass
class Chain:
    """One Celery task's run of steps: the first it claimed, then the successors it claimed eagerly.

    The budget keeps one run from holding a pool child: after AIOS_EAGER_MAX_STEPS steps or
    AIOS_EAGER_MAX_SECONDS, the next step goes through the broker like any other. Outputs the chain recorded
    are kept, so a step that reads an earlier one's output does not load it back."""

    queue: str
    worker: str
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    run_id: int | None = None
    outputs: dict[str, Any] = field(default_factory=dict)

    def offer(self) -> EagerClaim | None:
        """An eager claim for the next step, or None when eager dispatch is off or the budget is spent."""
        if not settings.AIOS_EAGER_DISPATCH:
            return None
        if self.steps >= settings.AIOS_EAGER_MAX_STEPS:
            return None
        if time.monotonic() - self.started >= settings.AIOS_EAGER_MAX_SECONDS:
            return None
        return EagerClaim(queue=self.queue, worker=self.worker)

    def remember(self, step_run: StepRun, output: Any) -> None:
        if self.run_id != step_run.run_id:
            self.run_id, self.outputs = step_run.run_id, {}
        self.outputs[step_run.step_key] = jsonable(output)


def _map_inputs(options: StepOptions, variables: dict[str, Any], step_key: str) -> dict[str, Any]:
    params = {}
    for name, mapping in options.inputs.items():
        try:
            if isinstance(mapping, TemplateMapping):
                params[name] = template_render(mapping.template, variables)
            else:
                params[name] = cel_evaluate(mapping, variables)
        except ExpressionError as error:
            shown = mapping.template if isinstance(mapping, TemplateMapping) else mapping
            raise StepError(f'Step "{step_key}", input "{name}": `{shown}` failed: {error}') from None
    return params


def step_run_execute(*, step_run_id: int) -> None:
    """Claim the step and run it to a recorded outcome, then run whatever successor its result transaction
    claimed for this worker, within the chain's budget. Safe to call twice: the second claim fails."""
    worker = worker_identity()
    step_run = step_run_claim(step_run_id=step_run_id, worker=worker)
    if step_run is None:
        return
    chain = Chain(queue=step_type_get(step_run.step_type).queue, worker=worker)
    while step_run is not None:
        chain.steps += 1
        try:
            following = _step_run_execute_claimed(step_run, chain)
        finally:
            renewer.unregister(step_run)
        step_run = following


@dataclass
class Attempt:
    """One execution of a claimed step: its token stream, and what it produced besides its outcome (the params
    its inputs mapped to, written with its result, failure or wait rather than in a transaction of their own)."""

    stream: TokenStream
    params: dict[str, Any] | None = None
    calls: list[Any] = field(default_factory=list)  # its model calls' records, stored with its outcome
    # The idempotency key its effect-ledger row holds (a side-effecting step that calls out); else computed.
    effect_key: str | None = None
    # An agent step's loop so far; the turns it adds are written with its outcome.
    agent: AgentHistory | None = None

    def transcript(self) -> list[dict[str, Any]] | None:
        """The agent's turns to record with this execution's outcome (None: nothing to record)."""
        if self.agent is None or not self.agent.new_turns:
            return None
        return self.agent.all_turns


@dataclass
class Prepared:
    """A step ready to run: its type, parsed config and context; `deadline` is when its time limit (the step's
    `timeout_seconds`, counted from its claim) runs out, None without one."""

    step_type: type[StepType]
    config: Any
    context: StepContext
    time_limit: float | None = None
    deadline: datetime | None = None


def _step_run_execute_claimed(step_run: StepRun, chain: Chain) -> StepRun | None:
    """Run one claimed step to a recorded outcome; returns the successor claimed for this worker, if any."""
    with _telemetry_scope(step_run):
        attempt = _step_run_begin(step_run)
        if attempt is None:
            return None
        try:
            prepared = _step_run_prepare(step_run, chain, attempt)
            outcome = prepared if isinstance(prepared, StepOutcome) else _step_run_call(prepared)
        except Exception as error:
            return _step_run_finish(step_run, chain, attempt, error=error)
        return _step_run_finish(step_run, chain, attempt, outcome=outcome)


def _telemetry_scope(step_run: StepRun) -> contextlib.AbstractContextManager[None]:
    """The step's log context (run and step ids on every line) and, with tracing on, its span in the run's
    trace (the run's recorded traceparent, whichever process or delivery brought the step here)."""
    return tracing.step_scope(
        run_id=step_run.run_id,
        step_key=step_run.step_key,
        traceparent=step_run.run.traceparent,
        attributes={"aios.step_type": step_run.step_type, "aios.attempt": step_run.attempt},
    )


async def step_run_execute_async(step_run: StepRun, chain: Chain) -> StepRun | None:
    """The same as `_step_run_execute_claimed`, as a coroutine for the asynchronous step executor: the step's
    own work is awaited on the loop when its type has `aexecute`, and every database phase runs through
    `db_call`. Returns the successor claimed for this worker, if any."""
    with _telemetry_scope(step_run):
        attempt = await db_call(_step_run_begin, step_run)
        if attempt is None:
            return None
        try:
            prepared = await db_call(_step_run_prepare, step_run, chain, attempt)
            if isinstance(prepared, StepOutcome):
                outcome = prepared
            elif prepared.step_type.runs_async():
                outcome = await _watched(
                    prepared.step_type().aexecute(prepared.config, prepared.context), step_run, prepared
                )
                if prepared.step_type.side_effects:
                    crash_point("after_external_call")
            else:
                outcome = await db_call(_step_run_call, prepared)
        except Exception as error:
            return await db_call(_step_run_finish, step_run, chain, attempt, error=error)
        return await db_call(_step_run_finish, step_run, chain, attempt, outcome=outcome)


def _at_most_once(slug: str, definition: dict[str, Any]) -> bool:
    """Whether the step's delivery is at most once: its config's `delivery`, or, when the graph leaves it out,
    the step type's default (email.send defaults to at most once: a mail server cannot deduplicate)."""
    config = definition.get("config") or {}
    if "delivery" in config:
        return bool(config["delivery"] == "at_most_once")
    field = step_type_get(slug).Config.model_fields.get("delivery")
    return field is not None and field.default == "at_most_once"


def _step_run_begin(step_run: StepRun) -> Attempt | None:
    """Before a claimed step runs: the effect ledger's intent for a side-effecting step (or an incident when an
    earlier attempt's outcome is unknown and the step cannot be repeated). None when it must not run."""
    crash_point("after_claim")
    run = step_run.run
    definition = step_plan(run, step_run).definition
    at_most_once = _at_most_once(step_run.step_type, definition)
    calls_out = not (run.is_test and test_stands_in(run, step_run.step_key, step_run.step_type))
    key = None
    if step_type_get(step_run.step_type).side_effects and _original_run_id(run) is None and calls_out:
        try:
            previous, key = effect_intent_record(step_run=step_run)
        except StepLost:
            logger.info("step run %s was taken over before its outside call; not calling", step_run.pk)
            return None
        if previous in ("intent", "applied") and at_most_once:
            # An earlier attempt may have changed the outside world and this system cannot deduplicate:
            # a person decides (retry, skip with an output, or abort) instead of a blind retry.
            step_run_incident_open(
                step_run=step_run,
                reason="An earlier attempt of this at-most-once step stopped after it may have reached the "
                "outside system; its outcome is unknown. Check the other system, then retry, skip or abort.",
            )
            return None
    # Renewed from here on, not while the intent above waits for the effect ledger: an executor stuck there
    # past its lease must lose the step to the sweeper, not make the call its successor is making.
    renewer.register(step_run)
    return Attempt(stream=TokenStream(step_run), effect_key=key)


def _replayed_review(step_run: StepRun, outcome: StepOutcome) -> StepOutcome:
    """A replay re-runs an LLM step whose flagged result a person reviewed in the run it replays: it takes that
    person's decision rather than asking again, so it reproduces the run (the approved result with its
    corrections, or the rejection). A what-if run and a test compare what the model says: they keep its reply."""
    run = step_run.run
    if not run.replay_of_id:
        return outcome
    original = (
        StepRun.objects.filter(run_id=recording_run_id(run.replay_of_id, step_run.step_key), step_key=step_run.step_key)
        .only("state", "output", "error")
        .first()
    )
    if original is None:
        return outcome
    review = (original.output or {}).get("review") if original.state == StepRun.State.SUCCEEDED else None
    if isinstance(review, dict):
        decision = {**review, "data": held_review_proposal(original.output or {})}
        usage = {**outcome.usage, "injection_review": f"as reviewed in run #{run.replay_of_id}"}
        return StepOutcome(output=held_output_reviewed(outcome.output, decision), usage=usage)
    if original.state == StepRun.State.FAILED and original.error.startswith(("Rejected by", "Not approved")):
        raise StepError(f"{original.error} (in run #{run.replay_of_id}, which this run replays)")
    return outcome


def _step_run_finish(
    step_run: StepRun,
    chain: Chain,
    attempt: Attempt,
    *,
    outcome: StepOutcome | None = None,
    error: Exception | None = None,
) -> StepRun | None:
    """Record what became of the step: its result (claiming a successor for this worker when the chain may go
    on), its failure, or its wait. Returns the successor claimed eagerly, if any."""
    if isinstance(error, OperationalError | InterfaceError):
        # The database failed under the step (a restart, a lost connection): that is no fault of the step's, so
        # nothing is recorded against it; this worker lets it go, and its lease lapses to the sweeper, which
        # runs it again.
        raise error
    stream = attempt.stream
    stream.flush()
    if error is None and outcome is not None and outcome.usage.get("injection_review") == NOT_ASKED:
        try:
            outcome = _replayed_review(step_run, outcome)
        except StepError as refused:
            error = refused
    if error is not None:
        _step_run_record_error(step_run, attempt, error)
        return None
    assert outcome is not None
    if outcome.wait is not None:
        _park(step_run, outcome, attempt)
        return None
    crash_point("before_result_commit")
    eager = chain.offer()
    recorded = _recorded(
        lambda: step_run_succeed(
            step_run=step_run,
            output=outcome.output,
            usage=outcome.usage,
            streamed_text=stream.text,
            params=attempt.params,
            calls=attempt.calls,
            eager=eager,
            transcript=attempt.transcript(),
        ),
        eager,
    )
    if not recorded or eager is None or eager.claimed is None:
        # Without an eager successor, the crash points after the commit are where the outbox sends its rows
        # (apps.runs.outbox._outbox_send_committed).
        return None
    chain.remember(step_run, outcome.output)
    if not step_type_get(eager.claimed.step_type).side_effects:
        # Renewed at once: its short first lease must not lapse while it waits for a database thread. (A step
        # that calls out is renewed only once its intent is recorded, as when it is claimed from the broker.)
        renewer.register(eager.claimed)
    # The eager hand-off: committed, the successor is this worker's and no message was sent. A crash here
    # leaves it running on its short lease, for the sweeper to take back.
    crash_point("after_result_commit_before_dispatch")
    crash_point("after_dispatch")
    return eager.claimed


def _step_run_record_error(step_run: StepRun, attempt: Attempt, error: Exception) -> None:
    stream = attempt.stream
    if isinstance(error, StepError):
        crash_point("before_result_commit")
        definition = step_plan(step_run.run, step_run).definition
        if error.uncertain and _at_most_once(step_run.step_type, definition):
            step_run_incident_open(step_run=step_run, reason=f"The outcome is unknown: {error.message}")
            return
        if step_type_get(step_run.step_type).side_effects and not error.uncertain:
            effect_outcome_record(step_run=step_run, applied=False, outcome=error.message)
        message, retryable = error.message, error.retryable
    elif isinstance(error, ValidationError):
        message, retryable = f"The step's configuration is invalid: {error}", False
    else:
        # A bug in a step type must fail the step, visibly, not kill the worker or leave the run hanging.
        # The details go to the log; the run page and the audit chain get no raw exception text, which could
        # carry a URL with credentials or data from elsewhere.
        logger.error("step %s of run %s crashed", step_run.step_key, step_run.run_id, exc_info=error)
        message = f"The step stopped with an internal error ({type(error).__name__}); the worker log has details."
        retryable = False
    _recorded(
        lambda: step_run_fail(
            step_run=step_run,
            error=message,
            retryable=retryable,
            streamed_text=stream.text,
            params=attempt.params,
            calls=attempt.calls,
            transcript=attempt.transcript(),
        )
    )


def _recorded(record: Callable[[], bool], eager: EagerClaim | None = None) -> bool:
    """Commit what became of a step, through a lost connection: after a long step (a database restart while it
    waited for a model) or an ambiguous commit, try again on a fresh connection for up to half a lease (the
    renewer keeps the lease meanwhile). Repeating is safe: the transaction is fenced by the step's token, so
    one that did commit makes the repeat a no-op. An eager successor it claimed says whether it committed."""
    deadline = time.monotonic() + settings.AIOS_STEP_LEASE_SECONDS / 2
    pause = 0.2
    while True:
        try:
            return record()
        except (OperationalError, InterfaceError):
            connection.close()
            if eager is not None and eager.claimed is not None:
                with contextlib.suppress(DatabaseError):
                    if _still_ours(eager.claimed):
                        logger.info("a result committed although its COMMIT was not answered; going on")
                        return True
                eager.claimed = None
            if time.monotonic() > deadline:
                raise
            logger.warning("could not record a step's outcome; retrying on a new connection", exc_info=True)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _still_ours(step_run: StepRun) -> bool:
    return StepRun.objects.filter(
        pk=step_run.pk,
        state=StepRun.State.RUNNING,
        fencing_token=step_run.fencing_token,
        lease_owner=step_run.lease_owner,
    ).exists()


def _outputs(step_run: StepRun, chain: Chain) -> dict[str, dict[str, Any]]:
    """The earlier outputs the step's expressions read: from the chain where it recorded them, the rest from the
    database (every succeeded step's when the step's reads cannot be told from its text)."""
    reads = step_plan(step_run.run, step_run).reads
    known = chain.outputs if chain.run_id == step_run.run_id else {}
    if reads is None:
        wanted = StepRun.objects.filter(run_id=step_run.run_id, state=StepRun.State.SUCCEEDED, parent__isnull=True)
    else:
        missing = reads - known.keys()
        if not missing:
            return {key: known[key] or {} for key in reads}
        wanted = StepRun.objects.filter(run_id=step_run.run_id, state=StepRun.State.SUCCEEDED, step_key__in=missing)
    outputs = {key: known[key] or {} for key in (reads or ()) if key in known}
    outputs.update({key: out or {} for key, out in wanted.values_list("step_key", "output")})
    return outputs


def _flags(step_run: StepRun, definition: dict[str, Any]) -> dict[str, list[str]]:
    """The injection flags of every earlier succeeded step of the run, by key ([] for one without), for a step
    whose definition mentions `flags`; {} (and no query) for every other step, so the engine's query count
    does not grow for workflows that never route on flags."""
    if "flags" not in json.dumps(definition.get("config") or {}):
        return {}
    rows = StepRun.objects.filter(run_id=step_run.run_id, state=StepRun.State.SUCCEEDED, parent__isnull=True)
    return {
        key: [str(flag) for flag in ((usage or {}).get("injection_flags") or [])]
        for key, usage in rows.exclude(pk=step_run.pk).values_list("step_key", "usage")
    }


def _step_run_prepare(step_run: StepRun, chain: Chain, attempt: Attempt) -> Prepared | StepOutcome:
    """The step's type, config and context (its inputs mapped), or the outcome that stands in for running it (a
    test run's pinned or simulated output, a replay's recorded one)."""
    run = step_run.run
    plan = step_plan(run, step_run)
    options = plan.options
    step_type = step_type_get(step_run.step_type)
    config = step_config_parse(step_run.step_type, options.config)
    context = StepContext(
        run_id=run.pk,
        step_key=step_run.step_key,
        input=run.inputs,
        steps=_outputs(step_run, chain),
        flags=_flags(step_run, plan.definition),
        idempotency_key=attempt.effect_key or effect_key(run, step_run.step_key),
        emit_tokens=attempt.stream.add,
        attempt=step_run.attempt,
        step_run_id=step_run.pk,
        workflow_id=run.workflow_id,
        replay_of=recording_run_id(run.replay_of_id, step_run.step_key) if run.replay_of_id else None,
        budget=run.graph.get("budget") or {},
        initiator_id=run.initiator_id,
        asks_people=not (run.is_test or _original_run_id(run) is not None),
    )
    attempt.calls = context.model_calls
    if step_run.is_tool_call:
        # An agent's tool call: its params are the model's arguments, stored when the call was made.
        context.params = dict(step_run.input or {})
    else:
        context.params = _map_inputs(options, context.expression_variables(), step_run.step_key)
        attempt.params = context.params or None
    if step_type.runs_agent_loop:
        context.agent = attempt.agent = agent_history(step_run, config)
    crash_point("mid_step")
    if run.is_test and test_stands_in(run, step_run.step_key, step_run.step_type):
        return _test_outcome(run, step_run.step_key, step_type, config, context)
    original = _original_run_id(run)
    if original is not None and step_run.is_tool_call:
        recorded = _recorded_tool_call(run, original, step_run, step_type)
        if recorded is not None:
            return recorded
    elif original is not None and (step_type.side_effects or step_type.replay_reuses_output):
        # Replays and what-if runs never touch the outside world or ask people again: the original run's
        # result stands in (a what-if compares model outputs; it must not re-post an invoice).
        return _recorded_outcome(original, step_run.step_key)
    limit = options.timeout_seconds
    deadline = (step_run.started_at or timezone.now()) + timedelta(seconds=limit) if limit else None
    return Prepared(step_type, config, context, time_limit=limit, deadline=deadline)


async def _watched(work: Coroutine[Any, Any, StepOutcome], step_run: StepRun, prepared: Prepared) -> StepOutcome:
    """Await a step's work on the asynchronous executor under a watchdog. Celery's time limits do not reach a
    coroutine, and the step-timeout timer only fails the step in the database (bumping its token), leaving the
    coroutine to hold its executor slot and the model endpoint's in-flight slot until the model answers. The
    watchdog cancels the work when the step's time limit passes (a StepError saying so, recorded like the
    timer's) or when the lease renewer found the step no longer this process's (cancelled, timed out, taken
    over: the StepError's record is then refused by the fencing token), so the slots are freed at once."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            wait = WATCHDOG_INTERVAL_SECONDS
            if prepared.deadline is not None:
                remaining = (prepared.deadline - timezone.now()).total_seconds()
                if remaining <= 0:
                    raise StepError(
                        f"The step took longer than its {prepared.time_limit:g} s time limit.", retryable=True
                    )
                wait = min(wait, remaining)
            done, _ = await asyncio.wait({task}, timeout=wait)
            if task in done:
                return task.result()
            if renewer.lost(step_run):
                raise StepError("The step was stopped: it timed out, was cancelled or was taken over elsewhere.")
    finally:
        if not task.done():
            task.cancel()
            # Let the work's own clean-up run (closing the model's stream gives the in-flight slot back).
            await asyncio.wait({task}, timeout=5)


def _step_run_call(prepared: Prepared) -> StepOutcome:
    outcome = prepared.step_type().execute(prepared.config, prepared.context)
    if prepared.step_type.side_effects:
        crash_point("after_external_call")
    return outcome


def test_stands_in(run: Run, step_key: str, step_type_slug: str) -> bool:
    """In a test run, whether a step's outcome is stood in for instead of executed: pinned data replaces it,
    and a step that reaches the outside world, asks people, waits or runs other workflows is simulated unless
    the analyst allowed that step to call out."""
    settings_ = run.test_settings or {}
    if step_key in (settings_.get("pinned") or {}):
        return True
    step_type = step_type_get(step_type_slug)
    stands_in = step_type.side_effects or step_type.replay_reuses_output
    return stands_in and step_key not in (settings_.get("allow_calls") or [])


def _test_outcome(run: Run, step_key: str, step_type: Any, config: Any, context: StepContext) -> StepOutcome:
    pinned = (run.test_settings or {}).get("pinned") or {}
    if step_key in pinned:
        return StepOutcome(output=pinned[step_key], usage={"test": "pinned"})
    return StepOutcome(output=step_type().simulate(config, context), usage={"test": "simulated"})


def _original_run_id(run: Run) -> int | None:
    """For a replay or a what-if run, the run whose outside-world results and decisions it reuses."""
    return run.replay_of_id or (run.restarted_from_id if run.mode == Run.Mode.WHAT_IF else None)


def recording_run_id(run_id: int, step_key: str) -> int:
    """The run whose model calls answer `step_key` when replaying `run_id`: the run itself, or, where it
    reused the step from an earlier run (a restart, a what-if), the run that actually executed it."""
    seen = set()
    # A tool call is where its agent was executed: a restart that reused the agent has no row of the call.
    owner_key = step_key.split(TOOL_CALL_MARK, 1)[0]
    while run_id not in seen:
        seen.add(run_id)
        steps = StepRun.objects.filter(run_id=run_id, step_key=owner_key)
        reused_from = steps.values_list("reused_from__run_id", flat=True).first()
        if reused_from is None:
            return run_id
        run_id = reused_from
    return run_id


def _recorded_tool_call(run: Run, original_run_id: int, step_run: StepRun, step_type: Any) -> StepOutcome | None:
    """An agent's tool call in a replay or what-if: the original call's outcome, whatever it was (a failure,
    a refusal and a rejection are answers the model read too), when the original made the same call under
    this number. A what-if whose model asks for something else executes a call that touches nothing outside
    (None: run it) and refuses any other."""
    original = (
        StepRun.objects.filter(run_id=recording_run_id(original_run_id, step_run.step_key), step_key=step_run.step_key)
        .only("state", "output", "error", "definition", "input")
        .first()
    )
    asked = (step_run.definition or {}).get("arguments", step_run.input)
    same = (
        original is not None
        and (original.definition or {}).get("tool") == (step_run.definition or {}).get("tool")
        and output_digest((original.definition or {}).get("arguments", original.input)) == output_digest(asked)
    )
    if not same or original is None:
        if run.mode == Run.Mode.WHAT_IF and not (step_type.side_effects or step_type.replay_reuses_output):
            return None
        raise StepError(
            f'Tool call "{step_run.step_key}" asks for {(step_run.definition or {}).get("tool")} with other '
            f"arguments than run #{original_run_id} did, so there is no result to reuse (replays and what-if "
            "runs never call outside systems or ask people again)."
        )
    if original.state == StepRun.State.SUCCEEDED:
        return StepOutcome(output=original.output or {}, usage={"replayed_from_step_run": original.pk})
    raise StepError(original.error or f"The call {original.state} in run #{original_run_id}.")


def _recorded_outcome(original_run_id: int, step_key: str) -> StepOutcome:
    original = StepRun.objects.filter(
        run_id=recording_run_id(original_run_id, step_key), step_key=step_key, state=StepRun.State.SUCCEEDED
    ).first()
    if original is None:
        raise StepError(
            f'Step "{step_key}" did not succeed in run #{original_run_id}, so there is no result to reuse '
            "(replays and what-if runs never call outside systems or ask people again)."
        )
    return StepOutcome(output=original.output or {}, usage={"replayed_from_step_run": original.pk})


def _park(step_run: StepRun, outcome: StepOutcome, attempt: Attempt) -> None:
    wait = outcome.wait
    assert wait is not None
    with transaction.atomic():
        if step_run_wait(
            step_run=step_run,
            for_what=wait.for_what,
            fire_at=wait.fire_at,
            details=wait.details,
            params=attempt.params,
            calls=attempt.calls,
            held_output=wait.held_output,
            usage=outcome.usage if wait.held_output is not None else None,
        ):
            # Child runs start here; an approval is the approvals app's, reached through the hook it fills.
            starter = (
                agent_tools_start if wait.for_what == AGENT_WAIT else WAIT_STARTERS.get(wait.for_what)
            ) or hooks.on_wait.get(wait.for_what)
            if starter is not None:
                starter(step_run, wait)
