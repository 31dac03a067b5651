"""Eager dispatch, the chain's budget, the per-process lease renewer, and what a step reads (in-process)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from apps.runs.executor import step_run_execute
from apps.runs.leases import LeaseRenewer
from apps.runs.lifecycle import step_run_claim
from apps.runs.models import Outbox, Run, StepRun
from apps.runs.plans import _reads
from apps.runs.services import run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

NUMBER = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}


def publish(analyst, team, name, graph):
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=NUMBER)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def transform(key, **fields):
    return {"key": key, "type": "data.transform", "config": {"fields": fields}}


def chain_of(count: int) -> dict:
    steps = [transform("s0", v="input.n")]
    steps += [transform(f"s{i}", v=f"steps.s{i - 1}.v + 1.0") for i in range(1, count)]
    return {"steps": steps}


def first_step(run: Run) -> StepRun:
    return StepRun.objects.get(run=run, state=StepRun.State.QUEUED)


def dispatched(run: Run) -> list[str]:
    """The steps of the run that went through the outbox (a message each)."""
    ids = [row.args[0] for row in Outbox.objects.filter(task="runs.execute_step")]
    return sorted(StepRun.objects.filter(run=run, pk__in=ids).values_list("step_key", flat=True))


def test_one_task_runs_a_sequential_chain_without_a_message_per_step(analyst, team):
    run, _ = run_start(actor=analyst, workflow=publish(analyst, team, "Chain", chain_of(5)), inputs={"n": 1.0})
    step_run_execute(step_run_id=first_step(run).pk)
    run.refresh_from_db()
    assert run.status == "succeeded" and run.output == {"v": 5.0}
    steps = StepRun.objects.filter(run=run)
    # Only the first step was sent; each of the others was claimed by the transaction that recorded the one
    # before it, for the same worker, and ran once.
    assert dispatched(run) == ["s0"]
    assert {s.lease_owner for s in steps} == {steps[0].lease_owner}
    assert {(s.attempt, s.fencing_token) for s in steps} == {(1, 1)}


def test_the_chain_hands_over_to_the_broker_when_its_budget_is_spent(analyst, team, settings):
    settings.AIOS_EAGER_MAX_STEPS = 2
    run, _ = run_start(actor=analyst, workflow=publish(analyst, team, "Budget", chain_of(5)), inputs={"n": 1.0})
    step_run_execute(step_run_id=first_step(run).pk)
    assert dict(StepRun.objects.filter(run=run).values_list("step_key", "state")) == {
        "s0": "succeeded",
        "s1": "succeeded",
        "s2": "queued",
        "s3": "pending",
        "s4": "pending",
    }
    assert dispatched(run) == ["s0", "s2"]
    step_run_execute(step_run_id=first_step(run).pk)
    step_run_execute(step_run_id=first_step(run).pk)
    run.refresh_from_db()
    assert run.status == "succeeded" and dispatched(run) == ["s0", "s2", "s4"]


def test_with_eager_dispatch_off_every_step_goes_through_the_broker(analyst, team, settings):
    settings.AIOS_EAGER_DISPATCH = False
    run, _ = run_start(actor=analyst, workflow=publish(analyst, team, "Off", chain_of(3)), inputs={"n": 1.0})
    for _ in range(3):
        step_run_execute(step_run_id=first_step(run).pk)
    run.refresh_from_db()
    assert run.status == "succeeded" and dispatched(run) == ["s0", "s1", "s2"]


def test_a_successor_on_another_queue_and_fan_out_siblings_go_through_the_broker(analyst, team):
    graph = {
        "steps": [
            transform("start", v="input.n"),
            transform("left", v="steps.start.v + 1.0"),
            transform("right", v="steps.start.v + 2.0"),
            {"key": "ask", "type": "llm.generate", "config": {"prompt": "{{ steps.left.v }}", "max_new_tokens": 4}},
        ],
        "edges": [
            {"from": "start", "to": "left"},
            {"from": "start", "to": "right"},
            {"from": "left", "to": "ask"},
        ],
    }
    run, _ = run_start(actor=analyst, workflow=publish(analyst, team, "Fan", graph), inputs={"n": 1.0})
    step_run_execute(step_run_id=first_step(run).pk)
    states = dict(StepRun.objects.filter(run=run).values_list("step_key", "state"))
    # One successor of the fan-out ran eagerly; its sibling was sent. The LLM step (inference queue) is sent too.
    assert states["start"] == "succeeded"
    assert sorted([states["left"], states["right"]]) == ["queued", "succeeded"]
    eager_one = "left" if states["left"] == "succeeded" else "right"
    expected = ["start", "right" if eager_one == "left" else "left"]
    if eager_one == "left":
        expected.append("ask")
    assert dispatched(run) == sorted(expected)


def test_a_step_reads_only_the_outputs_it_names():
    assert _reads({"config": {"fields": {"a": "steps.one.x + steps.two.y"}}}, {"one", "two", "three"}) == {
        "one",
        "two",
    }
    assert _reads({"config": {"prompt": "{{ steps['one'].x }}"}}, {"one"}) is None
    assert _reads({"config": {"prompt": "{% for k in steps.items() %}{% endfor %}"}}, {"one"}) is None
    assert _reads({"config": {"fields": {"a": "input.n"}}}, {"one"}) == frozenset()
    # Read as written, not as JSON: a newline or tab before `steps` must not hide it.
    assert _reads({"config": {"fields": {"a": "steps.one.x +\nsteps.two.y"}}}, {"one", "two"}) == {"one", "two"}
    assert _reads({"inputs": {"p": {"template": "{{ [steps.one,\tsteps.two] }}"}}}, {"one", "two"}) == {"one", "two"}
    assert _reads({"config": {"prompt": "{{ steps | length }}"}}, {"one"}) is None


@pytest.mark.django_db(transaction=True)
def test_the_renewer_renews_survives_a_lost_connection_and_notices_a_step_taken_over(analyst, team, settings):
    settings.AIOS_EAGER_DISPATCH = False
    run, _ = run_start(actor=analyst, workflow=publish(analyst, team, "Lease", chain_of(1)), inputs={"n": 1.0})
    step = step_run_claim(step_run_id=first_step(run).pk, worker="test")
    assert step is not None
    soon = timezone.now() + timedelta(seconds=1)
    StepRun.objects.filter(pk=step.pk).update(lease_expires_at=soon)
    renewer = LeaseRenewer()
    renewer._steps[step.pk] = step.fencing_token  # registered, without starting the thread
    # The connection dies under it (as in a database restart): the renewal fails, the registration stays.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    other = connections.create_connection("default")
    with other.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    other.close()
    renewer.renew_now()
    assert not renewer.lost(step) and step.pk in renewer._steps
    step.refresh_from_db()
    assert step.lease_expires_at == soon  # that renewal did fail
    renewer.renew_now()  # on a new connection
    step.refresh_from_db()
    assert step.lease_expires_at > soon + timedelta(seconds=settings.AIOS_STEP_LEASE_SECONDS / 2)
    # Taken over (a new token): the next renewal drops it and says it is lost.
    StepRun.objects.filter(pk=step.pk).update(fencing_token=step.fencing_token + 1)
    renewer.renew_now()
    assert renewer.lost(step) and step.pk not in renewer._steps
