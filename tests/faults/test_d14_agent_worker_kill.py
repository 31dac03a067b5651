"""D14: an agent's loop survives its worker dying mid-loop without repeating a side effect.

Each run's agent posts a note to the sink (an HTTP tool, a child step with its own idempotency key), then looks
the ticket up (a pure tool), then answers. Phase 1: a worker runs with `after_external_call:1.0`, so every
tool call that reaches the sink is followed by a SIGKILL of the pool child before the call's result commits.
While notes keep arriving, that worker is left to die again and again (a kill also takes down any agent turn
that shared its process); then it is killed for good, and a plain worker and beat (the sweeper) start. The
sweeper takes the interrupted calls and turns back when their leases lapse, a retried call resends the same
key, and the agents go on from their recorded turns: every note is applied exactly once, every loop finishes
with the same turns, and no tool call is made twice as a step.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest

from apps.inference.models import ModelEndpoint
from apps.runs.effects import effect_key
from apps.runs.models import Run, StepRun
from apps.runs.services import run_start
from tests.faults.harness import check_invariants, describe_runs, sized, wait_runs, wait_until
from tests.faults.workflows import N_INPUT, publish
from tests.support.devserver import scripted_server
from tests.support.figures import record_figure

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

N = sized(6, 60)

RULES: list[dict[str, Any]] = [
    {"match": {"contains": ["AGENT-D14", "open-LOOKED-UP"]}, "response": "The note is posted and the ticket is open."},
    {
        "match": {"contains": ["AGENT-D14", '"applied"']},
        "response": {"tool_calls": [{"name": "lookup", "arguments": {"ticket": 1}}]},
    },
    {
        "match": {"contains": "AGENT-D14"},
        "response": {"tool_calls": [{"name": "post_note", "arguments": {"note": "Customer called back"}}]},
    },
]


def agent_graph(sink_url: str) -> dict[str, Any]:
    tools = [
        {
            "name": "post_note",
            "description": "Post a note on the ticket.",
            "step": {
                "type": "http.request",
                "config": {
                    "method": "POST",
                    "url": sink_url + "/effect/{{ input.n }}",
                    "body": '{"n": {{ input.n }}, "note": "{{ params.note }}"}',
                },
            },
            "parameters": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]},
        },
        {
            "name": "lookup",
            "description": "Look the ticket up.",
            "step": {"type": "data.transform", "config": {"fields": {"state": "'open-LOOKED-UP'"}}},
            "parameters": {"type": "object", "properties": {"ticket": {"type": "integer"}}},
        },
    ]
    return {
        "steps": [
            {
                "key": "agent",
                "type": "llm.agent",
                "config": {"prompt": "AGENT-D14: note ticket {{ input.n }}", "tools": tools},
            }
        ]
    }


@pytest.mark.timeout(sized(180, 900))
def test_d14_an_agent_killed_mid_loop_resumes_without_repeating_a_side_effect(analyst, fleet, sink):
    with scripted_server(RULES) as url:
        ModelEndpoint.objects.create(
            name="main", kind="tgi", url=url, is_default=True, price_input_per_1k=Decimal("0.5"), timeout_seconds=10
        )
        workflow = publish(analyst, "D14 agent", agent_graph(sink.url), input_schema=N_INPUT)
        dying = fleet.worker(concurrency=4, AIOS_FAULTS="after_external_call:1.0")
        ids = [run_start(actor=analyst, workflow=workflow, inputs={"n": n})[0].pk for n in range(N)]

        # Phase 1 goes on while it makes progress: a kill also takes down the agents' turns that shared the dying
        # process, and without a sweeper those wait for phase 2, so not every note need arrive here.
        wait_until(
            lambda: len(sink.ledger()) >= 1,
            timeout=sized(90, 400),
            what="the sink to see an agent's note",
            detail=lambda: describe_runs(ids),
        )
        seen, quiet_since = len(sink.ledger()), time.monotonic()
        while seen < N and time.monotonic() - quiet_since < 10:
            time.sleep(0.5)
            if len(sink.ledger()) != seen:
                seen, quiet_since = len(sink.ledger()), time.monotonic()
        dying.kill_group()
        fleet.worker(concurrency=4, wait=False)
        fleet.beat(wait=False)
        fleet.ready()
        wait_runs(ids, timeout=sized(120, 800))

    invariants = check_invariants(ids)
    runs = {run.pk: run for run in Run.objects.filter(pk__in=ids)}
    keys = {pk: effect_key(runs[pk], "agent~1") for pk in ids}
    ledger = sink.ledger()
    once = [pk for pk in ids if keys[pk] in ledger and ledger[keys[pk]].effective_applies == 1]
    resent = [pk for pk in ids if keys[pk] in ledger and ledger[keys[pk]].raw_deliveries >= 2]
    succeeded = [pk for pk in ids if runs[pk].status == Run.Status.SUCCEEDED]
    agents = {a.run_id: a for a in StepRun.objects.filter(run_id__in=ids, step_key="agent")}
    calls_per_run = {pk: StepRun.objects.filter(run_id=pk, parent__isnull=False).count() for pk in ids}
    same_loop = [
        pk
        for pk in ids
        if agents[pk].output
        and agents[pk].output.get("text") == "The note is posted and the ticket is open."
        and [t["calls"] for t in agents[pk].transcript or []] == [["agent~1"], ["agent~2"], []]
        and calls_per_run[pk] == 2
    ]
    ok = len(once) == N and resent and len(succeeded) == N and len(same_loop) == N
    record_figure(
        f"D14 agents_completed {len(succeeded)}/{N} notes_applied_once {len(once)}/{N} "
        f"resent_after_kill {len(resent)}/{N} loops_unchanged {len(same_loop)}/{N} "
        f"tool_call_steps {sum(calls_per_run.values())}/{2 * N} {'ok' if ok and not invariants.problems else 'miss'}"
    )
    assert not invariants.problems, "\n".join(invariants.problems)
    assert len(succeeded) == N, describe_runs(ids)
    assert len(once) == N, f"notes not applied exactly once: {[(pk, ledger.get(keys[pk])) for pk in ids]}"
    assert resent, "no kill interrupted a note: the path was not exercised"
    assert len(same_loop) == N, {pk: (agents[pk].output, agents[pk].transcript) for pk in ids}
