"""D10: a new version is published while runs of the old one are mid-flight; recorded step histories
replayed through the engine's pure decision function.

Expected: in-flight runs stay pinned to the version they started on (their remaining steps, branches and
outputs are the old version's), new runs take the new version; replaying each run's recorded history
through `apps.runs.engine.decide` gives exactly what the engine did, and the stored histories in
tests/faults/histories/ give exactly the decisions recorded with them.
"""

from __future__ import annotations

import os

import pytest

from apps.runs.models import Run, StepRun
from apps.runs.services import run_start
from apps.workflows.models import WorkflowVersion
from apps.workflows.services import workflow_version_create, workflow_version_publish
from tests.faults.harness import check_invariants, sized, wait_runs, wait_until
from tests.faults.replay import history_from_run, live_divergences, store, stored_divergences
from tests.faults.workflows import EFFECT_INPUT, N_INPUT, publish
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(8, 80)
HOLD_SECONDS = sized(3, 20)  # every v1 run must be parked in it when v2 is published

V1 = {
    "steps": [
        {"key": "prepare", "type": "data.transform", "config": {"fields": {"version": '"v1"', "n": "input.n"}}},
        {"key": "hold", "type": "util.delay", "config": {"seconds": HOLD_SECONDS}},
        {"key": "route", "type": "logic.if", "config": {"condition": "input.n % 2 == 0"}},
        {"key": "even", "type": "data.transform", "config": {"fields": {"parity": '"even"'}}},
        {"key": "odd", "type": "data.transform", "config": {"fields": {"parity": '"odd"'}}},
        {"key": "fan", "type": "flow.parallel"},
        {"key": "left", "type": "data.transform", "config": {"fields": {"side": '"left"'}}},
        {"key": "right", "type": "data.transform", "config": {"fields": {"side": '"right"'}}},
        {
            "key": "join",
            "type": "data.transform",
            "config": {"fields": {"sides": "[steps.left.side, steps.right.side]"}},
        },
        {"key": "finish", "type": "data.transform", "config": {"fields": {"version": "steps.prepare.version"}}},
    ],
    "edges": [
        {"from": "prepare", "to": "hold"},
        {"from": "hold", "to": "route"},
        {"from": "route", "to": "even", "when": "true"},
        {"from": "route", "to": "odd", "when": "false"},
        {"from": "even", "to": "fan"},
        {"from": "odd", "to": "fan"},
        {"from": "fan", "to": "left"},
        {"from": "fan", "to": "right"},
        {"from": "left", "to": "join"},
        {"from": "right", "to": "join"},
        {"from": "join", "to": "finish"},
    ],
}
V2 = {
    "steps": [
        {"key": "prepare", "type": "data.transform", "config": {"fields": {"version": '"v2"', "n": "input.n"}}},
        {"key": "finish", "type": "data.transform", "config": {"fields": {"version": "steps.prepare.version"}}},
    ]
}


def error_branch_graph(sink_url: str) -> dict:
    """A call that fails (HTTP 503 every time, one attempt) and an error branch that handles it."""
    return {
        "steps": [
            {"key": "prepare", "type": "data.transform", "config": {"fields": {"amount": "input.n"}}},
            {
                "key": "call",
                "type": "http.request",
                "config": {"url": sink_url + "/effect/{{ input.n }}?fail_first=99", "body": '{"n": {{ input.n }}}'},
            },
            {"key": "done", "type": "data.transform", "config": {"fields": {"ok": "true"}}},
            {"key": "recover", "type": "data.transform", "config": {"fields": {"recovered": "true"}}},
        ],
        "edges": [
            {"from": "prepare", "to": "call"},
            {"from": "call", "to": "done"},
            {"from": "call", "to": "recover", "when": "error"},
        ],
    }


FAILING = {
    "steps": [
        {"key": "prepare", "type": "data.transform", "config": {"fields": {"n": "input.n"}}},
        {"key": "broken", "type": "data.transform", "config": {"fields": {"x": "input.missing + 1"}}},
        {"key": "never", "type": "data.transform", "config": {"fields": {"y": "1"}}},
    ]
}


@pytest.mark.timeout(sized(120, 600))
def test_d10_in_flight_runs_keep_their_version_and_histories_replay_identically(analyst, fleet, sink):
    workflow = publish(analyst, "D10 versions", V1, input_schema=N_INPUT)
    v1 = WorkflowVersion.objects.get(workflow=workflow, number=1)
    errors = publish(analyst, "D10 error branch", error_branch_graph(sink.url), input_schema=EFFECT_INPUT)
    failing = publish(analyst, "D10 failing", FAILING, input_schema=N_INPUT)
    fleet.worker(concurrency=2, wait=False)
    fleet.beat(wait=False)
    fleet.ready()

    old_runs = [run_start(actor=analyst, workflow=workflow, inputs={"n": n})[0].pk for n in range(N)]
    wait_until(
        lambda: StepRun.objects.filter(run_id__in=old_runs, step_key="hold", state="waiting").count() == N,
        timeout=60,
        what="every v1 run to wait in its delay step",
    )
    v2 = workflow_version_create(actor=analyst, workflow=workflow, graph=V2, input_schema=N_INPUT)
    workflow_version_publish(actor=analyst, version=v2)
    assert StepRun.objects.filter(run_id__in=old_runs, step_key="hold", state="waiting").count() == N, (
        "v1 runs left their delay before v2 was published: the test would prove nothing"
    )
    new_runs = [run_start(actor=analyst, workflow=workflow, inputs={"n": n})[0].pk for n in range(N // 2)]
    other_runs = [
        run_start(actor=analyst, workflow=errors, inputs={"n": 7})[0].pk,
        run_start(actor=analyst, workflow=failing, inputs={"n": 1})[0].pk,
    ]
    everything = old_runs + new_runs + other_runs
    wait_runs(everything, timeout=sized(60, 300))

    v1_keys = {step["key"] for step in V1["steps"]}
    switched = []
    for run in Run.objects.filter(pk__in=old_runs):
        keys = set(StepRun.objects.filter(run=run).values_list("step_key", flat=True))
        if run.version_id != v1.pk or keys != v1_keys or (run.output or {}).get("version") != "v1":
            switched.append(run.pk)
    new_on_v2 = Run.objects.filter(pk__in=new_runs, version=v2, output__version="v2").count()
    invariants = check_invariants(old_runs + new_runs)
    assert Run.objects.get(pk=other_runs[0]).status == "succeeded"  # the error branch handled the failure
    assert Run.objects.get(pk=other_runs[1]).status == "failed"

    live_problems = []
    histories = {}
    for run in Run.objects.filter(pk__in=everything).select_related("version", "workflow"):
        history = history_from_run(run)
        live_problems += live_divergences(run, history)
        shape = f"{run.workflow.slug}-v{run.version.number}"
        if run.workflow_id == workflow.pk and run.version_id == v1.pk:
            shape += "-even" if run.inputs["n"] % 2 == 0 else "-odd"
        histories.setdefault(shape, history)
    if os.environ.get("AIOS_RECORD_HISTORIES") == "1":
        for shape, history in histories.items():
            store(shape, history)
    stored, stored_problems = stored_divergences()
    divergences = len(live_problems) + len(stored_problems)
    ok = not switched and new_on_v2 == len(new_runs) and divergences == 0 and stored > 0 and not invariants.problems
    record_figure(
        f"D10 runs_switched_version {len(switched)}/{len(old_runs)} new_runs_on_v2 {new_on_v2}/{len(new_runs)} "
        f"replay_divergences {divergences} over {stored + len(everything)} histories "
        f"({stored} stored, {len(everything)} live) {'ok' if ok else 'miss'}"
    )
    assert not switched, f"runs that left version 1: {switched}"
    assert new_on_v2 == len(new_runs)
    assert not invariants.problems, "\n".join(invariants.problems)
    assert stored > 0, "no stored histories in tests/faults/histories/ (record them with AIOS_RECORD_HISTORIES=1)"
    assert not live_problems, "\n".join(live_problems)
    assert not stored_problems, "\n".join(stored_problems)
