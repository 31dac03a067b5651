"""What people and the API do to runs: start, cancel, restart from a step, try other settings (what-if),
replay from recordings, and resolve incidents.

The engine's own transitions live in apps/runs/lifecycle.py (with the lock-order rule every transaction
here follows), the outbox in outbox.py, the effect ledger in effects.py and the repair loop in sweeper.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.core.exceptions import (
    ApplicationError,
    Conflict,
    Forbidden,
    Unprocessable,
    ValidationFailed,
)
from apps.core.throttling import rate_limit_check
from apps.runs import engine
from apps.runs.effects import effects_sent
from apps.runs.lifecycle import (
    output_digest,
    publish_on_commit,
    run_advance,
    run_create,
    run_lock,
    step_run_resume,
    steps_cancel,
)
from apps.runs.models import Incident, Run, StepResult, StepRun
from apps.runs.outbox import CANCEL_RUN_TASK, CHILD_FINISHED_TASK, outbox_dispatch, outbox_task
from apps.runs.selectors import run_can_operate
from apps.runs.trigger_events import run_finished_notify
from apps.steps.registry import step_config_errors, step_type_find
from apps.workflows.input_schema import input_validate
from apps.workflows.models import Workflow
from apps.workflows.selectors import workflow_can_edit, workflow_can_run, workflow_version_published_latest

# --- starting runs ---------------------------------------------------------------------------------------


@transaction.atomic
def run_start_rate_check(*, actor: User) -> None:
    """Refuse with RateLimited (429, Retry-After) when `actor` started more than
    settings.AIOS_RUN_STARTS_PER_MINUTE runs by hand (page or API) in the current minute.

    Called by the interfaces a person drives, before `run_start`: each run may spend model time and money
    (OWASP LLM10), and one script or stuck key must not queue thousands. Triggers, schedules and the
    engine's own children are not people and have limits of their own."""
    limit = settings.AIOS_RUN_STARTS_PER_MINUTE
    rate_limit_check(
        scope="run-start",
        key=str(actor.pk),
        limit=limit,
        refusal=lambda wait: (
            f"You have started {limit} runs in the last minute, the most allowed; try again in {wait} s."
        ),
    )


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
            return _idempotent_repeat(existing, request_hash), False
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
            run = run_create(
                version=version,
                inputs=cleaned,
                actor=actor,
                trigger=trigger,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
            )
    except IntegrityError:
        # A concurrent request with the same key won the insert; answer with its run.
        return _idempotent_repeat(
            Run.objects.get(initiator=actor, idempotency_key=idempotency_key), request_hash
        ), False
    run_advance(run)
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


def _idempotent_repeat(existing: Run, request_hash: str) -> Run:
    """The run an idempotency key already started, if this request is the same one again."""
    if existing.request_hash != request_hash:
        raise Unprocessable(
            "This Idempotency-Key was already used for a different request (another workflow or other inputs). "
            "Use a new key for a new run."
        )
    return existing


# --- operating runs --------------------------------------------------------------------------------------


@transaction.atomic
def run_cancel(*, run: Run, actor: User | None, reason: str = "") -> Run:
    """Cancel a run that has not finished: every unfinished step is cancelled and late results refused."""
    locked = run_lock(run.pk)
    if locked.is_finished:
        raise Conflict(f"Run #{run.pk} already {locked.status}; only an unfinished run can be cancelled.")
    keys = steps_cancel(locked, reason=reason or "cancelled")
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.CANCELLED, finished_at=timezone.now(), error=reason or "Cancelled."
    )
    audit_record(actor=actor, verb="run.cancelled", target=locked, data={"reason": reason[:500]})
    publish_on_commit(run.pk, keys)
    if locked.parent_step_run_id:
        # Its parent (another run, rule 3) hears about it in a transaction of its own, as when it finishes.
        outbox_task(CHILD_FINISHED_TASK, [locked.pk])
    # --- triggers: workflows that start when this one is cancelled (an outbox row, rule 3) ---
    run_finished_notify(locked)
    # Child runs are other runs (lock-order rule 3): each is cancelled in a transaction of its own.
    for child_id in (
        Run.objects.filter(parent_step_run__run=locked).exclude(status__in=Run.FINISHED).values_list("pk", flat=True)
    ):
        outbox_task(CANCEL_RUN_TASK, [child_id, f"its parent run #{run.pk} was cancelled"])
    locked.refresh_from_db()
    return locked


@transaction.atomic
def run_restart(
    *,
    run: Run,
    step_key: str,
    actor: User,
    overrides: dict[str, dict[str, Any]] | None = None,
    send_again: bool = False,
) -> Run:
    """Start a new run of the same version and inputs, linked to `run`, that reuses the recorded outputs
    of every step that does not depend on `step_key` and executes `step_key` and what follows it.

    With `overrides` ({step key: {config field: value}}) it is a what-if run: those steps execute with
    the given config values (another prompt, another model) over the pinned version's; refused with
    field errors when a merged config is not valid.

    The new run's side-effecting steps act under new idempotency keys: restarting after a posting or an email
    does them again. When the original run already reached outside systems from a step the restart executes
    again, the restart is refused (409, the steps named in `extra["send_again"]`) unless the person confirmed
    with `send_again`; the confirmation and the steps are audited.
    """
    original = run_lock(run.pk)
    if not original.is_finished:
        raise Conflict(f"Run #{run.pk} is still {original.status}; restart it once it has finished (or cancel it).")
    if original.is_test:
        raise Conflict("A test run is not restarted: test the draft again instead.")
    if step_key not in {step["key"] for step in original.version.steps}:
        raise ApplicationError(f'Run #{run.pk} has no step "{step_key}".')
    if not run_can_operate(actor, original):
        raise Forbidden("You may view this run but not operate it.")
    if overrides and not workflow_can_edit(actor, original.workflow):
        raise Forbidden("Trying other step settings needs the right to change this workflow.")
    # Graph steps only: an agent's tool calls belong to their agent, whose transcript is copied with it.
    old_steps = {s.step_key: s for s in StepRun.objects.filter(run=original, parent__isnull=True)}
    succeeded = [key for key, step in old_steps.items() if step.state == StepRun.State.SUCCEEDED]
    reused = engine.reusable_before(original.version.graph, step_key, succeeded)
    overrides = _overrides_validate(original, overrides or {}, reused=set(reused))
    # A what-if run answers side-effecting steps from the original's records (executor), so it sends nothing.
    sent = [] if overrides else effects_sent(original, exclude=set(reused))
    if sent and not send_again:
        raise Conflict(
            f"Run #{original.pk} already reached outside systems from {', '.join(sent)}: restarting from "
            f'"{step_key}" does that again. Confirm "send again" to go ahead.',
            extra={"send_again": sent},
        )
    new = run_create(
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
            transcript=old.transcript,
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
            **({"sent_again": sent} if sent else {}),
            **({"overrides": overrides} if overrides else {}),
        },
    )
    run_advance(new)
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
    original = run_lock(run.pk)
    if original.is_test:
        raise Conflict("A test run is not replayed: test the draft again instead.")
    if not original.is_finished:
        raise Conflict(f"Run #{run.pk} is still {original.status}; replay it once it has finished.")
    if not run_can_operate(actor, original):
        raise Forbidden("You may view this run but not operate it.")
    new = run_create(version=original.version, inputs=original.inputs, actor=actor, trigger="replay")
    source = original.replay_of_id or original.pk  # a replay of a replay reads the first recording
    # A what-if run's changed settings are part of what it did: its replay asks the same questions.
    Run.objects.filter(pk=new.pk).update(mode=Run.Mode.REPLAY, replay_of_id=source, overrides=original.overrides)
    new.mode, new.replay_of_id, new.overrides = Run.Mode.REPLAY, source, original.overrides
    audit_record(actor=actor, verb="run.replay_started", target=new, data={"replay_of": source})
    run_advance(new)
    return new


# --- incidents -------------------------------------------------------------------------------------------


def _incident_close(incident: Incident, *, actor: User, resolution: str) -> Incident:
    """Close the open incident (the caller holds its run's lock, taken first as the lock-order rule says)."""
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    if not locked.is_open:
        raise Conflict(f"Incident #{incident.pk} was already resolved ({locked.resolution}).")
    locked.resolution, locked.resolved_by, locked.resolved_at = resolution, actor, timezone.now()
    locked.save(update_fields=["resolution", "resolved_by", "resolved_at"])
    return locked


@transaction.atomic
def incident_retry(*, incident: Incident, actor: User) -> Incident:
    """Give the step another round of attempts (its restart count starts again)."""
    run = run_lock(incident.run_id)
    incident = _incident_close(incident, actor=actor, resolution=Incident.Resolution.RETRY)
    StepRun.objects.filter(pk=incident.step_run_id).update(
        state=StepRun.State.QUEUED, waiting_for="", restarts=0, queued_at=timezone.now()
    )
    audit_record(actor=actor, verb="incident.retried", target=run, data={"incident": incident.pk})
    outbox_dispatch([StepRun.objects.get(pk=incident.step_run_id)])
    publish_on_commit(run.pk, [incident.step_run.step_key])
    return incident


def _supplied_output_problems(step_run: StepRun, output: dict[str, Any]) -> list[str]:
    """What is wrong with `output` as the output of `step_run`'s step (its definition as the run executes it,
    or the tool call's own definition)."""
    if step_run.definition is not None:
        definition = step_run.definition
    else:
        try:
            definition = step_run.run.step_definition(step_run.step_key)
        except KeyError:
            return []
    step_type = step_type_find(str(definition.get("type", "")))
    config = definition.get("config")
    if step_type is None or not isinstance(config, dict):
        return []
    return step_type.supplied_output_problems(config, output)


@transaction.atomic
def incident_skip(*, incident: Incident, actor: User, output: dict[str, Any]) -> Incident:
    """Treat the step as done with an output the person supplies; the run continues from there.

    A supplied output drives everything after the step (an approval's routing, a posting), so it is the
    workflow's editors' call, not every operator's, and it must fit what the step promises later steps (its
    output schema, its labels): otherwise a skip could route a run where the workflow never would.
    """
    if not isinstance(output, dict):
        raise ValidationFailed("The output must be a JSON object.", fields={"output": ["Must be a JSON object."]})
    if not workflow_can_edit(actor, incident.run.workflow):
        raise Forbidden("Skipping a step with an output you supply needs the right to change this workflow.")
    problems = _supplied_output_problems(incident.step_run, output)
    if problems:
        raise ValidationFailed(
            "The output does not fit what this step promises the steps after it.", fields={"output": problems}
        )
    run = run_lock(incident.run_id)
    incident = _incident_close(incident, actor=actor, resolution=Incident.Resolution.SKIP)
    audit_record(
        actor=actor,
        verb="incident.skipped",
        target=run,
        data={"incident": incident.pk, "output_sha256": output_digest(output)},
    )
    step_run_resume(step_run=incident.step_run, output=output, actor=actor)
    return incident


@transaction.atomic
def incident_abort(*, incident: Incident, actor: User) -> Incident:
    """Stop the run: the step and the run are cancelled."""
    run = run_lock(incident.run_id)
    incident = _incident_close(incident, actor=actor, resolution=Incident.Resolution.ABORT)
    audit_record(actor=actor, verb="incident.aborted", target=run, data={"incident": incident.pk})
    run_cancel(run=run, actor=actor, reason=f"aborted from incident #{incident.pk}")
    return incident


INCIDENT_ACTIONS = ("retry", "skip", "abort")


def incident_resolve(*, incident: Incident, actor: User, action: str, output: Any = None) -> Incident:
    """Resolve an incident the way a person chose: retry the step, skip it with `output`, or abort the run."""
    if action == "retry":
        return incident_retry(incident=incident, actor=actor)
    if action == "skip":
        return incident_skip(incident=incident, actor=actor, output=output if output is not None else {})
    if action == "abort":
        return incident_abort(incident=incident, actor=actor)
    raise ValidationFailed("Choose retry, skip or abort.", fields={"action": ["Unknown action."]})
