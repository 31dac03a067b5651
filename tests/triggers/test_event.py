"""Event triggers: a run of A finishing starts B with its output, through an outbox row written with A's finish (not
inside A's locked transaction), once per A run even when the relay repeats."""

from __future__ import annotations

import time

import pytest

from apps.core.exceptions import ValidationFailed
from apps.runs import tasks
from apps.runs.models import Outbox, Run, TriggerFiring
from apps.runs.services import run_cancel, run_start
from apps.runs.trigger_events import TRIGGER_EVENT_TASK
from apps.runs.triggers import trigger_create, trigger_pause
from tests.support.engine import drive
from tests.triggers.conftest import TICKET_SCHEMA, publish

REPORT_SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "size": {"type": "integer"}, "from_run": {"type": "integer"}},
    "required": ["title"],
}


@pytest.fixture
def chain(analyst, team, ticket_workflow):
    report = publish(analyst, "Ticket report", schema=REPORT_SCHEMA, fields={"line": "input.title"}, team=team)
    trigger, _ = trigger_create(
        actor=analyst,
        workflow=report,
        kind="event",
        name="After intake",
        source=ticket_workflow.slug,
        inputs={"title": "payload.output.title", "size": "payload.output.size", "from_run": "payload.run"},
    )
    return ticket_workflow, report, trigger


def event_rows(run_id: int) -> list[Outbox]:
    return list(Outbox.objects.filter(task=TRIGGER_EVENT_TASK, args=[run_id]))


@pytest.mark.django_db
def test_a_finished_run_starts_the_next_workflow_once_even_when_the_relay_repeats(chain, analyst):
    source, report, trigger = chain
    run, _ = run_start(actor=analyst, workflow=source, inputs={"subject": "Broken printer"})
    run = drive(run)
    assert run.status == "succeeded"
    # A's finish wrote the doorbell; B has not started inside A's transaction.
    assert len(event_rows(run.pk)) == 1 and not Run.objects.filter(workflow=report).exists()
    for _ in range(3):  # the relay repeats (a redelivered message, the sweeper's resend)
        tasks.trigger_event(run.pk)
    [downstream] = Run.objects.filter(workflow=report)
    assert downstream.trigger == "event" and downstream.initiator == analyst
    assert downstream.inputs == {"title": "Broken printer", "size": 14, "from_run": run.pk}
    outcomes = list(TriggerFiring.objects.filter(trigger=trigger).order_by("pk").values_list("outcome", flat=True))
    assert outcomes == ["started", "duplicate", "duplicate"]
    assert drive(downstream).status == "succeeded"


@pytest.mark.django_db
def test_only_the_chosen_outcomes_fire_and_paused_or_test_runs_do_not(chain, analyst):
    source, report, trigger = chain
    cancelled, _ = run_start(actor=analyst, workflow=source, inputs={"subject": "Never mind"})
    run_cancel(run=cancelled, actor=analyst)
    assert len(event_rows(cancelled.pk)) == 1  # the doorbell rings for any finish; the trigger's outcomes decide
    tasks.trigger_event(cancelled.pk)
    assert not Run.objects.filter(workflow=report).exists() and not TriggerFiring.objects.exists()
    trigger_pause(actor=analyst, trigger=trigger)
    run, _ = run_start(actor=analyst, workflow=source, inputs={"subject": "While paused"})
    drive(run)
    assert event_rows(run.pk) == []  # nothing enabled watches: not even a doorbell


@pytest.mark.django_db
def test_a_loop_and_an_unseen_source_are_refused(chain, analyst, outsider, team):
    source, report, _ = chain
    with pytest.raises(ValidationFailed) as loop:
        trigger_create(actor=analyst, workflow=source, kind="event", name="Back", source=report.slug)
    assert "would be a loop" in loop.value.fields["source"][0]
    with pytest.raises(ValidationFailed) as itself:
        trigger_create(actor=analyst, workflow=source, kind="event", name="Self", source=source.slug)
    assert "cannot start itself" in itself.value.fields["source"][0]
    hidden = publish(outsider, "Otto's own", schema=TICKET_SCHEMA, fields={"x": "input.subject"})
    with pytest.raises(ValidationFailed) as unseen:
        trigger_create(actor=analyst, workflow=report, kind="event", name="Spy", source=hidden.slug)
    assert "No workflow you may see" in unseen.value.fields["source"][0]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_with_a_real_worker_the_chain_runs_end_to_end(chain, analyst, celery_worker_process):
    source, report, _ = chain
    run, _ = run_start(actor=analyst, workflow=source, inputs={"subject": "Coffee machine"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        downstream = Run.objects.filter(workflow=report).first()
        if downstream is not None and downstream.is_finished:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no finished downstream run; source is {Run.objects.get(pk=run.pk).status}")
    assert downstream.status == "succeeded" and downstream.inputs["from_run"] == run.pk
    assert downstream.output is not None
    assert Run.objects.filter(workflow=report).count() == 1
