"""A finished run rings the doorbell of the event triggers that watch its workflow.

Called inside the transaction that finishes the run (holding its lock). Starting the downstream run there would
touch a second run in that transaction, which the lock-order rule forbids (apps/runs/lifecycle.py, rule 3), so
this only writes an outbox row; the `runs.trigger_event` task starts the downstream runs after the commit, each
in a transaction of its own (apps.runs.triggers.event_relay). Kept apart from triggers.py so the engine can call
it without importing the services that sit on top of the engine.
"""

from __future__ import annotations

from apps.runs.models import Run
from apps.runs.outbox import outbox_task
from apps.workflows.models import Trigger

TRIGGER_EVENT_TASK = "runs.trigger_event"


def run_finished_notify(run: Run) -> None:
    """Write the outbox row for the event triggers on `run`'s workflow, if any is enabled (one indexed probe).

    Only live runs count: a test, a replay or a what-if run re-examines work that was already done, and must not
    start anything downstream."""
    if run.mode != Run.Mode.LIVE:
        return
    watched = Trigger.objects.filter(source_workflow_id=run.workflow_id, kind=Trigger.Kind.EVENT, enabled=True).exists()
    if watched:
        outbox_task(TRIGGER_EVENT_TASK, [run.pk])
