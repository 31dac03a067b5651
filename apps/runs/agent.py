"""The engine's side of an `llm.agent` step: its loop so far, and the tool calls each of its turns asks for.

An agent step runs one or more turns per execution (apps/steps/library/llm_agent.py). When a turn asks for tool
calls, the step parks (waiting for "agent") and `agent_tools_start` records the turn in the step's transcript
and makes one step run per call, in the same transaction: a child step of the run with its own claim, lease,
fencing token, effect ledger entry and idempotency key ("<agent key>~<n>"), defined by the call rather than the
graph. When the last of them finishes, `lifecycle.agents_wake` queues the agent again, and its next execution
reads every outcome here (`agent_history`). A crash anywhere resumes at the last recorded call: a call that was
recorded is never made again, and one that was executing is taken back by the sweeper like any step.

A call that the run's initiator may not use (a workflow she may not run, a connection or collection her rights
or the workflow's do not reach) is refused at once, audited, and never executed; the refusal is the tool's
answer to the model. A call whose tool asks a person first waits for an approval in the inbox
(apps/approvals), and runs only if it is approved.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.core.exceptions import Conflict, Forbidden
from apps.inference.models import InferenceCall
from apps.runs import hooks
from apps.runs.lifecycle import agents_wake, output_digest, publish_on_commit, run_advance, run_lock
from apps.runs.models import Run, StepResult, StepRun
from apps.runs.outbox import outbox_dispatch
from apps.steps.base import AgentHistory, ToolCallRecord, Wait
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_can_run
from apps.workflows.uses import uses_problems

APPROVAL_WAIT = "approval"
# A call the person who started the run confirms herself (a chat assistant's "send this reply?").
CONFIRM_WAIT = "confirm"


def agent_history(step_run: StepRun, config: Any) -> AgentHistory:
    """What the agent step has done so far: its transcript, each tool call's outcome, its model usage, and the
    argument schemas of its workflow tools (the input schema of the version a call would run)."""
    transcript = StepRun.objects.values_list("transcript", flat=True).get(pk=step_run.pk) or []
    calls = {}
    for key, definition, arguments, state, output, error in (
        StepRun.objects.filter(parent_id=step_run.pk)
        .order_by("position")
        .values_list("step_key", "definition", "input", "state", "output", "error")
    ):
        definition = definition or {}
        calls[key] = ToolCallRecord(
            key=key,
            tool=str(definition.get("tool", "")),
            call_id=str(definition.get("call_id", "")),
            arguments=arguments,
            state=state,
            output=output,
            error=error,
        )
    usage = InferenceCall.objects.filter(step_run_id=step_run.pk).aggregate(
        prompt=Sum("prompt_tokens"), generated=Sum("generated_tokens"), cost=Sum("cost")
    )
    return AgentHistory(
        turns=list(transcript),
        calls=calls,
        tokens=int(usage["prompt"] or 0) + int(usage["generated"] or 0),
        cost=str(Decimal(usage["cost"] or 0)),
        tool_parameters=_tool_parameters(step_run, transcript, config),
    )


def _tool_parameters(step_run: StepRun, transcript: list[dict[str, Any]], config: Any) -> dict[str, dict[str, Any]]:
    """The argument schemas of the agent's workflow tools, fixed at its first turn (kept in the transcript), so
    a version of a tool workflow published mid-loop, or after the run, changes neither the later turns nor a
    replay; a replay or what-if takes the original's."""
    if transcript:
        return dict(transcript[0].get("tool_parameters") or {})
    run = step_run.run
    original = run.replay_of_id or (run.restarted_from_id if run.mode == Run.Mode.WHAT_IF else None)
    if original is not None:
        first = (
            StepRun.objects.filter(run_id=original, step_key=step_run.step_key)
            .values_list("transcript", flat=True)
            .first()
        )
        if first:
            return dict(first[0].get("tool_parameters") or {})
    return _workflow_tool_schemas(config)


def _workflow_tool_schemas(config: Any) -> dict[str, dict[str, Any]]:
    schemas = {}
    for tool in getattr(config, "tools", []):
        if tool.step.type != "flow.subworkflow" or tool.parameters is not None:
            continue
        versions = WorkflowVersion.objects.filter(
            workflow__slug=str(tool.step.config.get("workflow", "")), state=WorkflowVersion.State.PUBLISHED
        )
        if tool.step.config.get("version"):
            versions = versions.filter(number=tool.step.config["version"])
        schema = versions.order_by("-number").values_list("input_schema", flat=True).first()
        if isinstance(schema, dict):
            schemas[tool.name] = schema
    return schemas


def tool_refusal(run: Run, definition: dict[str, Any]) -> str | None:
    """Why the run's initiator may not have this tool call made (None when she may). The step checks the
    workflow's own rights again when it runs, as every step does."""
    initiator = run.initiator
    config = definition.get("config") or {}
    if definition.get("type") == "flow.subworkflow":
        target = Workflow.objects.filter(slug=str(config.get("workflow", ""))).first()
        if target is None:
            return f"there is no workflow “{config.get('workflow', '')}”"
        if initiator is not None and not workflow_can_run(initiator, target):
            return f"{initiator.get_username()} may not run the workflow “{target.name}”"
    if initiator is not None:
        problems = uses_problems(
            initiator,
            {"steps": [{"key": definition["key"], "type": definition["type"], "config": config}]},
            workflow=run.workflow,
        )
        if problems:
            return "; ".join(problem.split(": ", 1)[-1] for problem in problems)
    return None


def agent_tools_start(step_run: StepRun, wait: Wait) -> None:
    """An agent's turn asked for tool calls and the step is parked (the run lock is held): record its turns and
    make one step run per call, queued, waiting for a person, or refused (see the module docstring)."""
    run = step_run.run
    turns: list[dict[str, Any]] = list(wait.payload.get("turns", []))
    requested: list[dict[str, Any]] = list(wait.payload.get("calls", []))
    transcript = StepRun.objects.values_list("transcript", flat=True).get(pk=step_run.pk) or []
    StepRun.objects.filter(pk=step_run.pk).update(transcript=[*transcript, *turns])
    position = (StepRun.objects.filter(run=run).aggregate(last=Max("position"))["last"] or 0) + 1
    now = timezone.now()
    made: list[StepRun] = []
    refused: list[tuple[StepRun, str]] = []
    # A replay or what-if reuses the original calls' outcomes (refusals and decisions included) and a test run
    # simulates what would reach the outside: none of them asks a person again.
    reenacted = run.replay_of_id is not None or run.mode == Run.Mode.WHAT_IF
    asks_people = not (reenacted or run.is_test)
    for offset, call in enumerate(requested):
        definition = {
            "key": call["key"],
            "type": call["type"],
            "config": call["config"],
            "name": call["tool"],
            "tool": call["tool"],
            "call_id": call["call_id"],
            "turn": call["turn"],
            "approval": call.get("approval", "run"),
            "approval_queue": call.get("approval_queue", ""),
            "parameters": call.get("parameters") or {},
            # As the model asked: a reviewer may correct the call's input, which a replay must still match.
            "arguments": call["arguments"],
        }
        refusal = None if run.replay_of_id is not None else tool_refusal(run, definition)
        if refusal is None and asks_people and definition["approval"] == "confirm" and run.initiator_id is None:
            refusal = "nobody started this run, so nobody can confirm the call"
        state = StepRun.State.QUEUED
        if refusal:
            state = StepRun.State.FAILED
        elif asks_people and definition["approval"] in ("ask", "confirm"):
            state = StepRun.State.WAITING
        child = StepRun(
            run=run,
            step_key=call["key"],
            step_type=call["type"],
            name=str(call["tool"])[:120],
            position=position + offset,
            parent=step_run,
            definition=definition,
            input=call["arguments"],
            state=state,
            waiting_for=(CONFIRM_WAIT if definition["approval"] == "confirm" else APPROVAL_WAIT)
            if state == StepRun.State.WAITING
            else "",
            queued_at=now,
            error=f"Refused: {refusal}." if refusal else "",
            finished_at=now if refusal else None,
        )
        made.append(child)
        if refusal:
            refused.append((child, refusal))
    StepRun.objects.bulk_create(made)
    for child in made:
        audit_record(
            actor=None,
            verb="agent.tool_called",
            target=run,
            data={
                "step": step_run.step_key,
                "call": child.step_key,
                "tool": child.name,
                "type": child.step_type,
                "arguments_sha256": output_digest(child.input),
                "approval": (child.definition or {}).get("approval", "run"),
            },
        )
    for child, refusal in refused:
        StepResult.objects.create(
            run=run,
            step_key=child.step_key,
            step_run=child,
            outcome="failed",
            error=child.error,
            attempt=0,
            fencing_token=0,
        )
        audit_record(
            actor=None,
            verb="agent.tool_refused",
            target=run,
            data={"step": step_run.step_key, "call": child.step_key, "tool": child.name, "reason": refusal[:500]},
        )
    outbox_dispatch([child for child in made if child.state == StepRun.State.QUEUED])
    for child in made:
        if child.state == StepRun.State.WAITING and child.waiting_for == APPROVAL_WAIT:
            ask = hooks.on_wait.get(APPROVAL_WAIT)
            if ask is not None:
                ask(child, Wait(APPROVAL_WAIT, details={"tool": child.name}, payload={"params": child.input or {}}))
    keys = [child.step_key for child in made]
    # Every call refused (or none made): the agent goes on at once with the refusals as the tools' answers.
    woken = agents_wake(run, keys) if made else []
    publish_on_commit(run.pk, [step_run.step_key, *keys, *woken])


@transaction.atomic
def tool_call_confirm(*, step_run: StepRun, actor: User, confirmed: bool) -> StepRun:
    """The person who started the run answers an agent's call that waits for her confirmation: confirmed, it
    runs; declined, it fails with that as the tool's answer (and the agent goes on). Only she may answer
    (Forbidden for anyone else); a call no longer waiting is a Conflict."""
    run = run_lock(step_run.run_id)
    if run.initiator_id != actor.pk:
        raise Forbidden("Only the person who started this conversation confirms its actions.")
    current = StepRun.objects.filter(pk=step_run.pk, state=StepRun.State.WAITING, waiting_for=CONFIRM_WAIT).first()
    if current is None or not current.is_tool_call:
        raise Conflict("This action was already answered.")
    now = timezone.now()
    if confirmed:
        StepRun.objects.filter(pk=current.pk).update(state=StepRun.State.QUEUED, waiting_for="", queued_at=now)
        current.state = StepRun.State.QUEUED
        audit_record(actor=actor, verb="agent.tool_confirmed", target=run, data={"call": current.step_key})
        outbox_dispatch([current])
        publish_on_commit(run.pk, [current.step_key])
    else:
        error = f"Not done: {actor.get_username()} declined it."
        StepRun.objects.filter(pk=current.pk).update(
            state=StepRun.State.FAILED, waiting_for="", error=error, finished_at=now
        )
        StepResult.objects.create(
            run=run,
            step_key=current.step_key,
            step_run=current,
            outcome="failed",
            error=error,
            attempt=0,
            fencing_token=0,
        )
        audit_record(actor=actor, verb="agent.tool_declined", target=run, data={"call": current.step_key})
        run_advance(run, changed=[current.step_key])
    current.refresh_from_db()
    return current


def tool_calls_awaiting_confirmation(run: Run) -> list[StepRun]:
    """The calls of `run`'s agents that wait for the confirmation of the person who started it."""
    return list(
        StepRun.objects.filter(
            run=run, state=StepRun.State.WAITING, waiting_for=CONFIRM_WAIT, parent__isnull=False
        ).order_by("position")
    )
