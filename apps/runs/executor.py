"""Executing one claimed step: map its inputs, call its step type, record the outcome.

The worker keeps its lease alive with a heartbeat thread while the step runs; if the heartbeat finds the
step taken over (lease expired and re-claimed, cancelled, timed out), the result that eventually comes back
is refused by the fencing token, never recorded twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from pydantic import ValidationError

from apps.runs import hooks
from apps.runs.children import WAIT_STARTERS
from apps.runs.effects import StepLost, effect_intent_record, effect_key, effect_outcome_record
from apps.runs.events import TokenStream
from apps.runs.faults import crash_point
from apps.runs.lifecycle import (
    step_run_claim,
    step_run_fail,
    step_run_heartbeat,
    step_run_incident_open,
    step_run_succeed,
    step_run_wait,
)
from apps.runs.models import Run, StepRun
from apps.steps.base import StepContext, StepError, StepOutcome
from apps.steps.expressions import ExpressionError, cel_evaluate, template_render
from apps.steps.registry import step_config_parse, step_type_get
from apps.workflows.graph import StepOptions, TemplateMapping, step_options

logger = logging.getLogger(__name__)


def worker_identity() -> str:
    """host:pid:thread, recorded as the lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


class Heartbeat:
    """Renews the step's lease every third of its length from a thread of its own (with its own
    database connection) until stopped; `lost` turns true when the step is no longer ours."""

    def __init__(self, step_run: StepRun) -> None:
        self.step_run = step_run
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{step_run.pk}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        interval = settings.AIOS_STEP_LEASE_SECONDS / 3
        try:
            while not self._stop.wait(interval):
                if not step_run_heartbeat(step_run=self.step_run):
                    self.lost = True
                    return
        except Exception:
            logger.warning("heartbeat for step run %s failed", self.step_run.pk, exc_info=True)
        finally:
            connection.close()


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
    """Claim the step and run it to a recorded outcome. Safe to call twice: the second claim fails."""
    step_run = step_run_claim(step_run_id=step_run_id, worker=worker_identity())
    if step_run is None:
        return
    crash_point("after_claim")
    run = step_run.run
    definition = run.step_definition(step_run.step_key)
    at_most_once = definition.get("config", {}).get("delivery") == "at_most_once"
    calls_out = not (run.is_test and test_stands_in(run, step_run.step_key, step_run.step_type))
    if step_type_get(step_run.step_type).side_effects and _original_run_id(run) is None and calls_out:
        try:
            previous = effect_intent_record(step_run=step_run)
        except StepLost:
            logger.info("step run %s was taken over before its outside call; not calling", step_run.pk)
            return
        if previous in ("intent", "applied") and at_most_once:
            # An earlier attempt may have changed the outside world and this system cannot deduplicate:
            # a person decides (retry, skip with an output, or abort) instead of a blind retry.
            step_run_incident_open(
                step_run=step_run,
                reason="An earlier attempt of this at-most-once step stopped after it may have reached the "
                "outside system; its outcome is unknown. Check the other system, then retry, skip or abort.",
            )
            return
    stream = TokenStream(step_run)
    try:
        with Heartbeat(step_run):
            outcome = _execute(step_run, stream)
    except StepError as error:
        stream.flush()
        crash_point("before_result_commit")
        if error.uncertain and at_most_once:
            step_run_incident_open(step_run=step_run, reason=f"The outcome is unknown: {error.message}")
            return
        if step_type_get(step_run.step_type).side_effects and not error.uncertain:
            effect_outcome_record(step_run=step_run, applied=False, outcome=error.message)
        step_run_fail(step_run=step_run, error=error.message, retryable=error.retryable, streamed_text=stream.text)
        return
    except ValidationError as error:
        stream.flush()
        step_run_fail(
            step_run=step_run, error=f"The step's configuration is invalid: {error}", streamed_text=stream.text
        )
        return
    except Exception as error:
        # A bug in a step type must fail the step, visibly, not kill the worker or leave the run hanging.
        logger.exception("step %s of run %s crashed", step_run.step_key, run.pk)
        stream.flush()
        # The details go to the log; the run page and the audit chain get no raw exception text, which
        # could carry a URL with credentials or data from elsewhere.
        step_run_fail(
            step_run=step_run,
            error=f"The step stopped with an internal error ({type(error).__name__}); the worker log has details.",
            streamed_text=stream.text,
        )
        return
    stream.flush()
    if outcome.wait is not None:
        _park(step_run, outcome)
        return
    crash_point("before_result_commit")
    # The crash points after the commit live where its follow-up work is sent (outbox._outbox_send_committed).
    step_run_succeed(step_run=step_run, output=outcome.output, usage=outcome.usage, streamed_text=stream.text)


def _execute(step_run: StepRun, stream: TokenStream) -> StepOutcome:
    run = step_run.run
    options = step_options(run.step_definition(step_run.step_key))
    step_type = step_type_get(step_run.step_type)
    config = step_config_parse(step_run.step_type, options.config)
    succeeded = StepRun.objects.filter(run=run, state=StepRun.State.SUCCEEDED)
    outputs: dict[str, dict[str, Any]] = {key: out or {} for key, out in succeeded.values_list("step_key", "output")}
    context = StepContext(
        run_id=run.pk,
        step_key=step_run.step_key,
        input=run.inputs,
        steps=outputs,
        idempotency_key=effect_key(run.pk, step_run.step_key),
        emit_tokens=stream.add,
        attempt=step_run.attempt,
        step_run_id=step_run.pk,
        replay_of=recording_run_id(run.replay_of_id, step_run.step_key) if run.replay_of_id else None,
        budget=run.graph.get("budget") or {},
    )
    context.params = _map_inputs(options, context.expression_variables(), step_run.step_key)
    if context.params:
        StepRun.objects.filter(pk=step_run.pk, fencing_token=step_run.fencing_token).update(input=context.params)
    crash_point("mid_step")
    if run.is_test and test_stands_in(run, step_run.step_key, step_run.step_type):
        return _test_outcome(run, step_run.step_key, step_type, config, context)
    original = _original_run_id(run)
    if original is not None and (step_type.side_effects or step_type.replay_reuses_output):
        # Replays and what-if runs never touch the outside world or ask people again: the original run's
        # result stands in (a what-if compares model outputs; it must not re-post an invoice).
        return _recorded_outcome(original, step_run.step_key)
    outcome = step_type().execute(config, context)
    if step_type.side_effects:
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
    while run_id not in seen:
        seen.add(run_id)
        steps = StepRun.objects.filter(run_id=run_id, step_key=step_key)
        reused_from = steps.values_list("reused_from__run_id", flat=True).first()
        if reused_from is None:
            return run_id
        run_id = reused_from
    return run_id


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


def _park(step_run: StepRun, outcome: StepOutcome) -> None:
    wait = outcome.wait
    assert wait is not None
    with transaction.atomic():
        if step_run_wait(step_run=step_run, for_what=wait.for_what, fire_at=wait.fire_at, details=wait.details):
            # Child runs start here; an approval is the approvals app's, reached through the hook it fills.
            starter = WAIT_STARTERS.get(wait.for_what) or hooks.on_wait.get(wait.for_what)
            if starter is not None:
                starter(step_run, wait)
