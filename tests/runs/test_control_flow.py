"""Control flow end to end through the engine's services (the test drives steps in-process)."""

from __future__ import annotations

import pytest

from apps.audit.models import AuditEvent
from apps.core.exceptions import ApplicationError
from apps.runs.executor import step_run_execute
from apps.runs.models import Run, StepResult, Timer
from apps.runs.services import run_cancel, run_start
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.support.engine import advance_clock, drive, states

NUMBER = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}


def publish(analyst, team, name, graph, schema=NUMBER):
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def start(analyst, workflow, **inputs) -> Run:
    return run_start(actor=analyst, workflow=workflow, inputs=inputs)[0]


def transform(key, **fields):
    return {"key": key, "type": "data.transform", "config": {"fields": fields}}


def test_if_routes_and_merges(analyst, team):
    graph = {
        "steps": [
            {"key": "check", "type": "logic.if", "config": {"condition": "input.n > 10.0"}},
            transform("big", label='"big"'),
            transform("small", label='"small"'),
            {**transform("done", seen="true"), "join": "all"},
        ],
        "edges": [
            {"from": "check", "to": "big", "when": "true"},
            {"from": "check", "to": "small", "when": "false"},
            {"from": "big", "to": "done"},
            {"from": "small", "to": "done"},
        ],
    }
    workflow = publish(analyst, team, "Route by size", graph)
    run = drive(start(analyst, workflow, n=3))
    assert run.status == "succeeded"
    assert states(run) == {"check": "succeeded", "big": "skipped", "small": "succeeded", "done": "succeeded"}
    assert StepResult.objects.filter(run=run, outcome="skipped").count() == 1


def test_switch_takes_the_first_matching_case_else_default(analyst, team):
    graph = {
        "steps": [
            {
                "key": "route",
                "type": "logic.switch",
                "config": {
                    "cases": [
                        {"label": "gold", "condition": "input.n >= 100.0"},
                        {"label": "silver", "condition": "input.n >= 10.0"},
                    ],
                    "default": "bronze",
                },
            },
            transform("gold", tier='"gold"'),
            transform("silver", tier='"silver"'),
            transform("bronze", tier='"bronze"'),
        ],
        "edges": [
            {"from": "route", "to": "gold", "when": "gold"},
            {"from": "route", "to": "silver", "when": "silver"},
            {"from": "route", "to": "bronze", "when": "bronze"},
        ],
    }
    workflow = publish(analyst, team, "Tiers", graph)
    outputs = {n: drive(start(analyst, workflow, n=n)).output for n in (500, 50, 5)}
    assert outputs == {500: {"tier": "gold"}, 50: {"tier": "silver"}, 5: {"tier": "bronze"}}


def test_parallel_fan_out_and_fan_in(analyst, team):
    graph = {
        "steps": [
            {"key": "fan", "type": "flow.parallel", "config": {}},
            transform("left", x="input.n * 2.0"),
            transform("right", y="input.n + 1.0"),
            transform("join", total="steps.left.x + steps.right.y"),
        ],
        "edges": [
            {"from": "fan", "to": "left"},
            {"from": "fan", "to": "right"},
            {"from": "left", "to": "join"},
            {"from": "right", "to": "join"},
        ],
    }
    workflow = publish(analyst, team, "Fan", graph)
    run = start(analyst, workflow, n=4)
    run = drive(run)
    assert run.status == "succeeded" and run.output == {"total": 13.0}


def test_error_branch_catches_a_failure(analyst, team):
    graph = {
        "steps": [transform("risky", x="input.missing"), transform("ok", y="1"), transform("recover", z='"fallback"')],
        "edges": [{"from": "risky", "to": "ok"}, {"from": "risky", "to": "recover", "when": "error"}],
    }
    workflow = publish(analyst, team, "Catch", graph)
    run = drive(start(analyst, workflow, n=1))
    assert run.status == "succeeded" and run.output == {"z": "fallback"}
    assert states(run) == {"risky": "failed", "ok": "skipped", "recover": "succeeded"}


def test_retry_policy_backs_off_on_timers_then_fails_with_the_error(analyst, team):
    step = {
        **transform("flaky", x="input.missing"),
        "retry": {"max_attempts": 3, "backoff_seconds": 5, "retry_on": "any"},
    }
    workflow = publish(analyst, team, "Flaky", {"steps": [step]})
    run = drive(start(analyst, workflow, n=1))
    flaky = run.step_runs.get()
    assert (flaky.state, flaky.waiting_for, flaky.attempt) == ("waiting", "retry", 1)
    first = Timer.objects.get(step_run=flaky, kind="retry")
    assert 5 <= (first.fire_at - flaky.started_at).total_seconds() <= 5 * 1.2 + 1
    assert advance_clock(1) == 0  # not due yet
    assert advance_clock(30) == 1
    run = drive(run)
    assert run.step_runs.get().attempt == 2
    advance_clock(60)
    run = drive(run)
    flaky = run.step_runs.get()
    assert run.status == "failed" and flaky.attempt == 3 and "no such field" in flaky.error
    assert AuditEvent.objects.filter(verb="step.retry_scheduled", target_id=str(run.pk)).count() == 2


def test_delay_waits_on_a_timer_without_a_worker(analyst, team):
    graph = {"steps": [{"key": "wait", "type": "util.delay", "config": {"seconds": 3600}}, transform("after", x="1")]}
    workflow = publish(analyst, team, "Wait an hour", graph)
    run = drive(start(analyst, workflow, n=1))
    assert states(run) == {"wait": "waiting", "after": "pending"} and run.status == "running"
    advance_clock(3601)
    run = drive(run)
    assert run.status == "succeeded" and run.output == {"x": 1}


def test_step_timeout_fails_a_stuck_step_and_refuses_its_late_result(analyst, team):
    from apps.runs.lifecycle import step_run_claim, step_run_succeed

    graph = {"steps": [{**transform("slow", x="1"), "timeout_seconds": 10}]}
    workflow = publish(analyst, team, "Slow", graph)
    run = start(analyst, workflow, n=1)
    step = step_run_claim(step_run_id=run.step_runs.get().pk, worker="test")  # a worker takes it, then stalls
    assert advance_clock(11) == 1
    run.refresh_from_db()
    assert run.status == "failed" and "longer than its 10 s time limit" in run.step_runs.get().error
    assert step_run_succeed(step_run=step, output={"x": 1}) is False  # the stale worker's result is refused


def test_run_timeout_fails_the_run(analyst, team):
    graph = {"steps": [{"key": "wait", "type": "util.delay", "config": {"seconds": 3600}}], "timeout_seconds": 60}
    workflow = publish(analyst, team, "Deadline", graph)
    run = drive(start(analyst, workflow, n=1))
    advance_clock(61)
    run.refresh_from_db()
    assert run.status == "failed" and "time limit" in run.error
    assert run.step_runs.get().state == "cancelled"


def test_input_mappings_feed_params_and_a_failing_mapping_names_step_field_and_expression(analyst, team):
    good = {
        "key": "greet",
        "type": "data.transform",
        "inputs": {"who": {"template": "Dear {{ input.name }}"}, "twice": "input.n * 2.0"},
        "config": {"fields": {"text": "params.who", "value": "params.twice"}},
    }
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "number"}}}
    workflow = publish(analyst, team, "Mapped", {"steps": [good]}, schema)
    run = drive(start(analyst, workflow, name="Ada", n=2))
    assert run.output == {"text": "Dear Ada", "value": 4.0}
    assert run.step_runs.get().input == {"who": "Dear Ada", "twice": 4.0}
    bad = {**good, "inputs": {"who": "input.nobody.name"}}
    workflow = publish(analyst, team, "Mapped badly", {"steps": [bad]}, schema)
    run = drive(start(analyst, workflow, name="Ada", n=2))
    assert run.status == "failed"
    assert 'Step "greet", input "who": `input.nobody.name` failed' in run.step_runs.get().error


def test_subworkflow_runs_a_pinned_child_and_returns_its_output(analyst, team):
    child = publish(analyst, team, "Double", {"steps": [transform("double", x="input.n * 2.0")]})
    parent_graph = {
        "steps": [
            {"key": "call", "type": "flow.subworkflow", "config": {"workflow": child.slug}, "inputs": {"n": "input.n"}},
            transform("use", y="steps.call.output.x + 1.0"),
        ]
    }
    parent = publish(analyst, team, "Parent", parent_graph)
    pinned = parent.versions.get().graph["steps"][0]["config"]["version"]
    assert pinned == 1
    run = drive(start(analyst, parent, n=5))
    assert run.status == "succeeded" and run.output == {"y": 11.0}, (run.error, states(run))
    assert Run.objects.get(parent_step_run__run=run).version.number == 1


@pytest.mark.parametrize("ending", ["cancelled", "timed out"])
def test_a_child_run_cancelled_or_timed_out_fails_its_parents_step(analyst, team, ending):
    """The parent waits for its child however the child ends, not only when it finishes its steps."""
    child_graph = {"steps": [transform("double", x="input.n * 2.0")], "timeout_seconds": 60}
    child = publish(analyst, team, "Slow child", child_graph)
    parent = publish(
        analyst,
        team,
        "Waiting parent",
        {
            "steps": [
                {
                    "key": "call",
                    "type": "flow.subworkflow",
                    "config": {"workflow": child.slug},
                    "inputs": {"n": "input.n"},
                }
            ]
        },
    )
    run = start(analyst, parent, n=1)
    step_run_execute(step_run_id=run.step_runs.get().pk)  # parks and starts the child, whose step stays queued
    child_run = Run.objects.get(parent_step_run__run=run)
    if ending == "cancelled":
        run_cancel(run=child_run, actor=analyst, reason="not needed")
    else:
        advance_clock(61)
    run = drive(run)
    call = run.step_runs.get(step_key="call")
    assert (run.status, call.state) == ("failed", "failed")
    assert f"run #{child_run.pk}" in call.error


def test_foreach_runs_items_with_a_limit_and_collects_in_order(analyst, team):
    item_schema = {"type": "object", "properties": {"item": {"type": "integer"}}}
    child = publish(analyst, team, "Square", {"steps": [transform("sq", v="input.item * input.item")]}, item_schema)
    graph = {
        "steps": [
            {
                "key": "each",
                "type": "flow.foreach",
                "config": {"items": "[]", "workflow": child.slug, "concurrency": 2},
            }
        ]
    }
    # Input schemas have no list type yet, so the list comes from an expression.
    graph["steps"][0]["config"]["items"] = "[1, 2, 3, 4, 5]"
    parent = publish(analyst, team, "Squares", graph)
    run = start(analyst, parent, n=0)
    step_run_execute(step_run_id=run.step_runs.get().pk)  # the for-each step parks and starts children
    assert Run.objects.filter(parent_step_run__run=run).count() == 2  # the concurrency limit
    run = drive(run)
    assert run.status == "succeeded", run.error
    assert run.output == {"results": [{"v": 1}, {"v": 4}, {"v": 9}, {"v": 16}, {"v": 25}], "failed": 0}
    assert Run.objects.filter(parent_step_run__run=run).count() == 5


def test_publish_refuses_cycles_and_references_to_steps_that_may_not_have_run(analyst, team):
    graph = {
        "steps": [transform("a", x="1"), transform("b", y="steps.c.z"), transform("c", z="1")],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}, {"from": "a", "to": "c"}],
    }
    workflow = workflow_create(actor=analyst, name="Loop", team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=NUMBER)
    with pytest.raises(ApplicationError) as refusal:
        workflow_version_publish(actor=analyst, version=version)
    assert any("form a cycle" in p for p in refusal.value.extra["problems"])
    graph["edges"] = [{"from": "a", "to": "b"}, {"from": "a", "to": "c"}]
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=NUMBER)
    with pytest.raises(ApplicationError) as refusal:
        workflow_version_publish(actor=analyst, version=version)
    assert refusal.value.extra["problems"] == ['step "b": refers to steps.c, which does not always run before it']
