"""The engine's lock-order rule under the three races that used to break it (apps/runs/lifecycle.py).

Each test runs two real transactions at once, each on its own connection, and holds each one's first lock
for LOCK_HOLD seconds before it goes on, so both hold their first lock when they reach for their second.
Where the two took the same locks in opposite orders, PostgreSQL aborted one of them as a deadlock (a step
result lost until its lease ran out; a person's decision answered with "the database is unreachable").
With the rule, the second transaction simply waits at the run's lock and both commit, one after the other.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from apps.approvals.models import ApprovalRequest
from apps.approvals.services import approval_decide
from apps.audit.models import AuditEvent
from apps.core.exceptions import Conflict
from apps.runs.lifecycle import step_run_claim, step_run_fail, step_run_incident_open, step_run_succeed
from apps.runs.models import Incident, Outbox, Run, StepResult, StepRun, TriggerFiring
from apps.runs.services import incident_abort, incident_retry, incident_skip, run_cancel, run_start
from apps.runs.sweeper import timers_fire_due
from apps.runs.triggers import trigger_create, trigger_delete, trigger_history_record, trigger_pause
from apps.workflows.models import Trigger
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.engine import ENGINE_TASKS, drive
from tests.support.figures import record_figure

pytestmark = [pytest.mark.django_db(transaction=True)]

LOCK_HOLD = 0.4
RUN_LOCK = r"FOR NO KEY UPDATE"
FIRST_LOCK = r"FOR (NO KEY )?UPDATE|^UPDATE "
NUMBER = {"type": "object", "properties": {"n": {"type": "number"}}}


@pytest.fixture(autouse=True)
def no_worker_hears(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test is the only worker: messages the outbox relays are dropped, so a worker process another test
    started cannot take these steps, and the test runs what the outbox holds itself."""
    from celery import current_app

    monkeypatch.setattr(current_app, "send_task", lambda *args, **kwargs: None)


def race(*calls: tuple[Callable[[], Any], str]) -> list[Any]:
    """Run each call at the same moment in a thread and connection of its own; each holds the lock taken by
    its first statement matching its pattern for LOCK_HOLD seconds. Returns each call's result or error."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def body(index: int, call: Callable[[], Any], pattern: str) -> None:
        held = False

        def hold_first_lock(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            nonlocal held
            result = execute(sql, params, many, context)
            if not held and re.search(pattern, sql):
                held = True
                time.sleep(LOCK_HOLD)
            return result

        try:
            with connection.execute_wrapper(hold_first_lock):
                barrier.wait()
                results[index] = call()
        except Exception as error:
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i, call, pattern)) for i, (call, pattern) in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def deadlocks(results: list[Any]) -> list[Exception]:
    return [r for r in results if isinstance(r, OperationalError) and "deadlock" in str(r)]


def unexpected(results: list[Any], allowed: tuple[type[Exception], ...] = ()) -> list[Exception]:
    return [r for r in results if isinstance(r, Exception) and not isinstance(r, allowed)]


def engine_tasks() -> None:
    """Run what the outbox holds for the engine (a child telling its parent, a parent cancelling a child)."""
    for row in Outbox.objects.filter(task__in=ENGINE_TASKS).order_by("pk"):
        ENGINE_TASKS[row.task](*row.args)


def publish(analyst: Any, team: Any, name: str, graph: dict[str, Any], schema: dict[str, Any] = NUMBER) -> Any:
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def transform(key: str, **fields: str) -> dict[str, Any]:
    return {"key": key, "type": "data.transform", "config": {"fields": fields}}


def claimed(run: Run) -> StepRun:
    """The run's one queued step, claimed as a worker would (running, with a lease and a token)."""
    queued = StepRun.objects.get(run=run, state=StepRun.State.QUEUED)
    step = step_run_claim(step_run_id=queued.pk, worker="race-test")
    assert step is not None
    return step


# --- a child finishing while its parent is cancelled -----------------------------------------------------------


def test_a_child_finishing_while_its_parent_is_cancelled(analyst, team):
    child_workflow = publish(analyst, team, "Child", {"steps": [transform("work", x="input.n + 1.0")]})
    parent_workflow = publish(
        analyst,
        team,
        "Parent",
        {"steps": [{"key": "call", "type": "flow.subworkflow", "config": {"workflow": child_workflow.slug}}]},
    )
    parent, _ = run_start(actor=analyst, workflow=parent_workflow, inputs={"n": 1})
    drive(Run.objects.get(pk=parent.pk), max_steps=1)  # the subworkflow step parks and starts its child
    child = Run.objects.get(parent_step_run__run=parent)
    step = claimed(child)

    results = race(
        (lambda: run_cancel(run=parent, actor=analyst, reason="stop"), FIRST_LOCK),
        (lambda: step_run_succeed(step_run=step, output={"x": 2.0}), FIRST_LOCK),
    )
    engine_tasks()
    parent.refresh_from_db()
    child.refresh_from_db()
    locked_out = deadlocks(results)
    record_figure(f"L1 child_finish_vs_parent_cancel deadlocks {len(locked_out)} {'ok' if not locked_out else 'miss'}")
    assert not locked_out and not unexpected(results), results
    assert parent.status == "cancelled"
    assert child.status in ("succeeded", "cancelled") and child.is_finished
    # The parent's step never resumed after the cancel: one result at most, and it is the cancellation's.
    assert StepResult.objects.filter(run=parent).count() == 0


def test_two_foreach_items_finishing_at_once_when_one_fails_fast(analyst, team):
    schema = {"type": "object", "properties": {"item": {"type": "integer"}}}
    child_workflow = publish(analyst, team, "Item", {"steps": [transform("work", v="input.item * 2")]}, schema)
    parent_workflow = publish(
        analyst,
        team,
        "Items",
        {
            "steps": [
                {
                    "key": "each",
                    "type": "flow.foreach",
                    "config": {
                        "items": "[1, 2]",
                        "workflow": child_workflow.slug,
                        "concurrency": 2,
                        "on_item_failure": "fail",
                    },
                }
            ]
        },
    )
    parent, _ = run_start(actor=analyst, workflow=parent_workflow, inputs={"n": 0})
    drive(Run.objects.get(pk=parent.pk), max_steps=1)  # the foreach parks and starts both items
    first, second = Run.objects.filter(parent_step_run__run=parent).order_by("item_index")
    failing, finishing = claimed(first), claimed(second)

    results = race(
        (lambda: step_run_fail(step_run=failing, error="the item broke"), FIRST_LOCK),
        (lambda: step_run_succeed(step_run=finishing, output={"v": 4}), FIRST_LOCK),
    )
    # Both children told their parent through the outbox; the two notices race for the parent as well.
    notices = list(Outbox.objects.filter(task="runs.child_finished"))
    notice_results = race(
        *[
            ((lambda row=row: ENGINE_TASKS[row.task](*row.args)), RUN_LOCK)  # type: ignore[misc]
            for row in notices
        ]
    )
    engine_tasks()
    parent.refresh_from_db()
    each = StepRun.objects.get(run=parent, step_key="each")
    locked_out = deadlocks(results + notice_results)
    record_figure(
        f"L2 foreach_fail_fast_vs_item_finish deadlocks {len(locked_out)} {'ok' if not locked_out else 'miss'}"
    )
    assert not locked_out and not unexpected(results + notice_results), (results, notice_results)
    assert len(notices) == 2
    assert each.state == "failed" and "Item 0 failed" in each.error
    assert parent.status == "failed"
    assert StepResult.objects.filter(run=parent, step_key="each").count() == 1


# --- an approval decided as its due timer fires ----------------------------------------------------------------


def test_an_approval_decided_as_its_due_timer_fires(analyst, team, reviewer):
    graph = {
        "steps": [
            {"key": "review", "type": "human.approval", "config": {"queue": "team:claims", "due_in_seconds": 60}},
            transform("after", decision="steps.review.decision"),
        ],
        "edges": [
            {"from": "review", "to": "after", "when": "approved"},
            {"from": "review", "to": "after", "when": "expired"},
        ],
    }
    workflow = publish(analyst, team, "Gate", graph)
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"n": 1})
    drive(run)
    request = ApprovalRequest.objects.get(run=run)

    results = race(
        (lambda: approval_decide(request=request, actor=reviewer, decision="approved"), FIRST_LOCK),
        (lambda: timers_fire_due(timezone.now() + timezone.timedelta(seconds=120)), RUN_LOCK),
    )
    request.refresh_from_db()
    review = StepRun.objects.get(run=run, step_key="review")
    locked_out = deadlocks(results)
    record_figure(f"L3 approval_decide_vs_due_timer deadlocks {len(locked_out)} {'ok' if not locked_out else 'miss'}")
    assert not locked_out and not unexpected(results, (Conflict,)), results
    # Exactly one of them decided: approved (the timer then found nothing pending) or expired (the decision
    # was refused with a conflict), and the step resumed once with that decision.
    assert request.state in ("approved", "expired")
    assert review.state == "succeeded" and review.output["decision"] == request.state
    assert StepResult.objects.filter(run=run, step_key="review").count() == 1
    assert isinstance(results[0], Conflict) == (request.state == "expired")


# --- an incident aborted while it is retried or skipped --------------------------------------------------------


@pytest.fixture
def incident(analyst, team) -> Incident:
    workflow = publish(analyst, team, "Flaky", {"steps": [transform("work", x="input.n")]})
    run, _ = run_start(actor=analyst, workflow=workflow, inputs={"n": 1})
    step_run_incident_open(step_run=claimed(run), reason="the outside system did not answer")
    return Incident.objects.get(run=run)


@pytest.mark.parametrize("other", ["retry", "skip"])
def test_an_incident_aborted_while_it_is_retried_or_skipped(incident, analyst, other):
    resolve = {
        "retry": lambda: incident_retry(incident=incident, actor=analyst),
        "skip": lambda: incident_skip(incident=incident, actor=analyst, output={"x": 1}),
    }[other]
    results = race(
        (lambda: incident_abort(incident=incident, actor=analyst), FIRST_LOCK),
        (resolve, FIRST_LOCK),
    )
    incident.refresh_from_db()
    run = Run.objects.get(pk=incident.run_id)
    locked_out = deadlocks(results)
    record_figure(f"L4 incident_abort_vs_{other} deadlocks {len(locked_out)} {'ok' if not locked_out else 'miss'}")
    assert not locked_out and not unexpected(results, (Conflict,)), results
    # One resolution won; the other was told the incident was already resolved.
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert incident.resolution in ("abort", other)
    if incident.resolution == "abort":
        assert run.status == "cancelled"
    else:
        assert run.status == ("running" if other == "retry" else "succeeded")


# --- a trigger changed while a poll records its outcome ----------------------------------------------------------


@pytest.mark.parametrize("change", ["pause", "delete"])
def test_a_trigger_paused_or_deleted_while_a_poll_records_its_outcome(analyst, team, change):
    """A mailbox poll records its outcome as a history row and an audit event on the trigger's stream. The row's
    reference to the trigger is checked at commit, after the stream's lock is taken; a pause or delete that
    locked the trigger FOR UPDATE and then reached for the stream deadlocked with it (seen in CI)."""
    workflow = publish(analyst, team, "Hooked", {"steps": [transform("work", x="input.n")]})
    trigger, _ = trigger_create(actor=analyst, workflow=workflow, kind="webhook", name="Hook")
    act = {
        "pause": lambda: trigger_pause(actor=analyst, trigger=trigger),
        "delete": lambda: trigger_delete(actor=analyst, trigger=trigger),
    }[change]
    results = race(
        (lambda: trigger_history_record(trigger, "failed", "The mailbox did not answer."), r"pg_advisory_xact_lock"),
        (act, FIRST_LOCK),
    )
    locked_out = deadlocks(results)
    record_figure(
        f"L5 trigger_{change}_vs_poll_outcome deadlocks {len(locked_out)} {'ok' if not locked_out else 'miss'}"
    )
    # Both commit one after the other; a delete that came first leaves the poll's row nothing to refer to,
    # which is the poll's error to log, not a lost change.
    assert not locked_out and not unexpected(results[1:]), results
    if change == "pause":
        assert not unexpected(results), results
        assert Trigger.objects.get(pk=trigger.pk).enabled is False
        assert TriggerFiring.objects.filter(trigger_id=trigger.pk, outcome="failed").count() == 1
    else:
        assert not Trigger.objects.filter(pk=trigger.pk).exists()
    verbs = list(
        AuditEvent.objects.filter(target_id=str(trigger.pk), target_type="workflows.trigger").values_list(
            "verb", flat=True
        )
    )
    assert f"trigger.{'paused' if change == 'pause' else 'deleted'}" in verbs
