"""Writes for runs and step runs: start, claim, complete, fail.

Each transition is a conditional UPDATE on the state it expects, inside one transaction with its audit
event; follow-up work (enqueueing the next step, telling browsers) is scheduled with on_commit, so nothing
outside the database ever sees a change that did not commit.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.core.exceptions import Conflict, Forbidden, ValidationFailed
from apps.runs import engine
from apps.runs.models import Run, StepRun
from apps.steps.registry import step_type_get
from apps.workflows.input_schema import input_validate
from apps.workflows.models import Workflow
from apps.workflows.selectors import workflow_can_run, workflow_version_published_latest


def _enqueue(step_run_ids: list[tuple[int, str]]) -> None:
    # Imported here: tasks import the executor, which imports these services.
    from apps.runs.tasks import execute_step

    for step_run_id, queue in step_run_ids:
        execute_step.apply_async(args=[step_run_id], queue=queue)


def _after_commit(run_id: int, *, enqueue: list[tuple[int, str]] | None = None, changed: list[str]) -> None:
    from apps.runs.events import publish_run_changed

    def fire() -> None:
        if enqueue:
            _enqueue(enqueue)
        publish_run_changed(run_id, changed)

    transaction.on_commit(fire)


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
    if idempotency_key:
        existing = Run.objects.filter(initiator=actor, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    version = workflow_version_published_latest(workflow)
    if version is None:
        raise Conflict(f'"{workflow.name}" has no published version yet.')
    cleaned, errors = input_validate(version.input_schema, inputs)
    if errors:
        raise ValidationFailed("The run input is not valid.", fields=errors)
    try:
        with transaction.atomic():
            run = Run.objects.create(
                workflow=workflow,
                version=version,
                inputs=cleaned,
                initiator=actor,
                idempotency_key=idempotency_key,
                trigger=trigger,
                status=Run.Status.RUNNING,
                started_at=timezone.now(),
            )
    except IntegrityError:
        # A concurrent request with the same key won the insert; return its run.
        return Run.objects.get(initiator=actor, idempotency_key=idempotency_key), False
    step_runs = StepRun.objects.bulk_create(
        StepRun(
            run=run,
            step_key=step["key"],
            step_type=step["type"],
            name=step.get("name") or step["key"],
            position=index,
        )
        for index, step in enumerate(version.steps)
    )
    audit_record(
        actor=actor,
        verb="run.started",
        target=run,
        data={"workflow": workflow.slug, "version": version.number, "trigger": trigger},
    )
    decision = engine.decide(version.graph, {s.step_key: s.state for s in step_runs})
    enqueue = _queue_steps(run, decision.start)
    _after_commit(run.pk, enqueue=enqueue, changed=list(decision.start))
    return run, True


def _queue_steps(run: Run, keys: tuple[str, ...]) -> list[tuple[int, str]]:
    """Move the named pending steps to queued; returns (step run id, Celery queue) for each."""
    if not keys:
        return []
    now = timezone.now()
    queued = []
    for step_run in StepRun.objects.filter(run=run, step_key__in=keys, state=StepRun.State.PENDING):
        updated = StepRun.objects.filter(pk=step_run.pk, state=StepRun.State.PENDING).update(
            state=StepRun.State.QUEUED, queued_at=now
        )
        if updated:
            queued.append((step_run.pk, step_type_get(step_run.step_type).queue))
    return queued


def step_run_claim(*, step_run_id: int, worker: str) -> StepRun | None:
    """Take ownership of a queued step: running, a lease, a new fencing token. None if another worker
    already has it or it is no longer queued (a duplicate delivery), in which case the caller stops."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.AIOS_STEP_LEASE_SECONDS)
    updated = StepRun.objects.filter(pk=step_run_id, state=StepRun.State.QUEUED).update(
        state=StepRun.State.RUNNING,
        attempt=F("attempt") + 1,
        fencing_token=F("fencing_token") + 1,
        lease_owner=worker[:200],
        lease_expires_at=lease,
        started_at=now,
    )
    if not updated:
        return None
    step_run = StepRun.objects.select_related("run", "run__version").get(pk=step_run_id)
    _after_commit(step_run.run_id, changed=[step_run.step_key])
    return step_run


@transaction.atomic
def step_run_succeed(
    *, step_run: StepRun, output: dict[str, Any], usage: dict[str, Any], streamed_text: str = ""
) -> bool:
    """Record a step's result if `step_run.fencing_token` is still current; then advance the run.

    Returns False (and changes nothing) when the token is stale: another worker owns the step now.
    """
    run = Run.objects.select_for_update().select_related("version").get(pk=step_run.run_id)
    # Round-trip through JSON so what is stored is exactly what later steps will read.
    output = json.loads(json.dumps(output, cls=DjangoJSONEncoder))
    updated = StepRun.objects.filter(
        pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
    ).update(
        state=StepRun.State.SUCCEEDED,
        output=output,
        usage=usage,
        streamed_text=streamed_text,
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    if not updated:
        return False
    Run.objects.filter(pk=run.pk).update(
        total_prompt_tokens=F("total_prompt_tokens") + int(usage.get("prompt_tokens") or 0),
        total_generated_tokens=F("total_generated_tokens") + int(usage.get("generated_tokens") or 0),
    )
    audit_record(
        actor=None,
        verb="step.succeeded",
        target=run,
        data={"step": step_run.step_key, "attempt": step_run.attempt, "usage": usage},
    )
    _advance(run, changed=[step_run.step_key])
    return True


@transaction.atomic
def step_run_fail(*, step_run: StepRun, error: str, streamed_text: str = "") -> bool:
    """Record a step's failure (with a readable `error`) if its fencing token is current; then advance."""
    run = Run.objects.select_for_update().select_related("version").get(pk=step_run.run_id)
    updated = StepRun.objects.filter(
        pk=step_run.pk, state=StepRun.State.RUNNING, fencing_token=step_run.fencing_token
    ).update(
        state=StepRun.State.FAILED,
        error=error,
        streamed_text=streamed_text,
        finished_at=timezone.now(),
        lease_expires_at=None,
    )
    if not updated:
        return False
    audit_record(
        actor=None,
        verb="step.failed",
        target=run,
        data={"step": step_run.step_key, "attempt": step_run.attempt, "error": error[:2000]},
    )
    _advance(run, changed=[step_run.step_key])
    return True


def _advance(run: Run, *, changed: list[str]) -> None:
    """Apply the engine's decision after a step finished. Caller holds the run row lock."""
    rows = list(StepRun.objects.filter(run=run).values("step_key", "state", "output", "error"))
    decision = engine.decide(run.version.graph, {row["step_key"]: row["state"] for row in rows})
    enqueue = _queue_steps(run, decision.start)
    if decision.run_status is not None and run.status not in Run.FINISHED:
        outputs = {row["step_key"]: row["output"] for row in rows}
        failed = [row for row in rows if row["state"] == StepRun.State.FAILED]
        Run.objects.filter(pk=run.pk).update(
            status=decision.run_status,
            finished_at=timezone.now(),
            output=engine.run_output(run.version.graph, outputs) if decision.run_status == "succeeded" else None,
            error=f'Step "{failed[0]["step_key"]}" failed: {failed[0]["error"]}' if failed else "",
        )
        audit_record(actor=None, verb=f"run.{decision.run_status}", target=run, data={})
    _after_commit(run.pk, enqueue=enqueue, changed=changed + list(decision.start))
