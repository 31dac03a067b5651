"""`llm.agent` over the tool-calling API (TGI's and vLLM's wire shapes), and the fallback to JSON replies on a
server that has no tool calling: several calls in one turn, arguments that do not fit, replay byte for byte.

The development server scripts the model's tool calls (tests/support/devserver.py `scripted_server`); its rules
match the whole conversation, so a later turn's rule comes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from apps.inference.models import InferenceCall, ModelEndpoint
from apps.runs.models import Run, StepRun
from apps.runs.selectors import canonical_json
from apps.runs.services import run_replay
from tests.steps.test_llm_agent import LOOKUP, agent_step, publish, run_to_end, tool_calls
from tests.support.devserver import scripted_server
from tests.support.engine import drive

RULES: list[dict[str, Any]] = [
    # Two calls at once, then an answer once both results are in.
    {"match": {"contains": ["TOOLS-1", "open-LOOKED-UP"]}, "response": "Tickets 1 and 2 are open."},
    {
        "match": {"contains": "TOOLS-1"},
        "response": {
            "tool_calls": [
                {"name": "lookup", "arguments": {"ticket": 1}},
                {"name": "lookup", "arguments": {"ticket": 2}},
            ]
        },
    },
    # Arguments that do not fit, corrected after the error comes back.
    {"match": {"contains": ["TOOLS-2", "open-LOOKED-UP"]}, "response": "Ticket 3 is open."},
    {
        "match": {"contains": ["TOOLS-2", "do not fit lookup"]},
        "response": {"tool_calls": [{"name": "lookup", "arguments": {"ticket": 3}}]},
    },
    {
        "match": {"contains": "TOOLS-2"},
        "response": {"tool_calls": [{"name": "lookup", "arguments": {"ticket": "three"}}]},
    },
]

# The same conversations for a server without tool calling: JSON replies naming the tools.
JSON_RULES: list[dict[str, Any]] = [
    {"match": {"contains": ["TOOLS-1", "open-LOOKED-UP"]}, "response": {"json": {"answer": "Ticket 1 is open."}}},
    {
        "match": {"contains": "TOOLS-1"},
        "response": {"json": {"tool_calls": [{"name": "lookup", "arguments": {"ticket": 1}}]}},
    },
]


@pytest.fixture(params=[("tgi", "tgi"), ("openai-compatible", "openai")], ids=["tgi", "vllm"])
def endpoint(request: pytest.FixtureRequest, db: Any, settings: Any) -> Iterator[ModelEndpoint]:
    settings.AIOS_INFERENCE_RETRIES = 0
    kind, style = request.param
    with scripted_server(RULES, tool_call_style=style) as url:
        yield ModelEndpoint.objects.create(
            name="main", kind=kind, url=url, is_default=True, price_input_per_1k=Decimal("0.5"), timeout_seconds=10
        )


def tools_agent(**config: Any) -> dict[str, Any]:
    return agent_step([LOOKUP], **{"tool_protocol": "auto", **config})


@pytest.mark.django_db
def test_several_calls_in_one_turn_run_as_child_steps_and_the_agent_waits_for_all(endpoint, analyst, team):
    workflow = publish(analyst, team, [tools_agent()])
    run = run_to_end(analyst, workflow, "TOOLS-1: are tickets 1 and 2 open?")

    assert run.status == Run.Status.SUCCEEDED, run.error
    agent = StepRun.objects.get(run=run, step_key="agent")
    assert agent.output == {"text": "Tickets 1 and 2 are open.", "turns": 2, "tool_calls": 2}
    assert [(c.step_key, c.input) for c in tool_calls(run)] == [("agent~1", {"ticket": 1}), ("agent~2", {"ticket": 2})]
    assert agent.transcript[0]["calls"] == ["agent~1", "agent~2"] and agent.transcript[0]["protocol"] == "tools"
    # The model's own call ids go back with each result.
    second = InferenceCall.objects.get(run_id=run.pk, step_key="agent~m2")
    messages = second.request["messages"]
    ids = [call["id"] for call in messages[-3]["tool_calls"]]
    assert [m["tool_call_id"] for m in messages[-2:]] == ids and len(set(ids)) == 2
    assert second.request["tools"][0]["function"]["name"] == "lookup"


@pytest.mark.django_db
def test_arguments_that_do_not_fit_are_the_calls_answer_and_the_model_corrects_them(endpoint, analyst, team):
    workflow = publish(analyst, team, [tools_agent()])
    run = run_to_end(analyst, workflow, "TOOLS-2: is ticket three open?")

    assert run.status == Run.Status.SUCCEEDED, run.error
    agent = StepRun.objects.get(run=run, step_key="agent")
    assert agent.output["text"] == "Ticket 3 is open." and agent.usage["argument_errors"] == 1
    assert [t["finish"] for t in agent.transcript] == ["tool_calls", "tool_calls", "stop"]
    assert agent.transcript[0]["errors"][0]["arguments"] == {"ticket": "three"}
    assert [c.input for c in tool_calls(run)] == [{"ticket": 3}]


@pytest.mark.django_db
def test_replay_over_the_tools_api_is_byte_for_byte(endpoint, analyst, team):
    workflow = publish(analyst, team, [tools_agent()])
    original = run_to_end(analyst, workflow, "TOOLS-1: are tickets 1 and 2 open?")
    assert original.status == Run.Status.SUCCEEDED

    ModelEndpoint.objects.filter(pk=endpoint.pk).update(url="http://127.0.0.1:9")  # nobody answers there
    replay = drive(run_replay(run=original, actor=analyst))

    assert replay.status == Run.Status.SUCCEEDED, replay.error
    for step in original.step_runs.all():
        assert canonical_json(replay.step_runs.get(step_key=step.step_key).output) == canonical_json(step.output)
    assert set(InferenceCall.objects.filter(run_id=replay.pk).values_list("status", flat=True)) == {"replayed"}


@pytest.mark.django_db
def test_a_server_without_tool_calling_gets_json_replies_and_the_run_still_replays(analyst, team, settings):
    settings.AIOS_INFERENCE_RETRIES = 0
    with scripted_server(JSON_RULES, no_tools=True) as url:
        endpoint = ModelEndpoint.objects.create(
            name="main", kind="openai-compatible", url=url, is_default=True, timeout_seconds=10
        )
        workflow = publish(analyst, team, [tools_agent()])
        run = run_to_end(analyst, workflow, "TOOLS-1: is ticket 1 open?")

    assert run.status == Run.Status.SUCCEEDED, run.error
    agent = StepRun.objects.get(run=run, step_key="agent")
    assert agent.output["text"] == "Ticket 1 is open."
    assert [t["protocol"] for t in agent.transcript] == ["json", "json"]
    calls = list(InferenceCall.objects.filter(run_id=run.pk).order_by("pk").values_list("step_key", "status"))
    # The first turn asked with tools, was refused, and asked again for JSON; the second asked for JSON at once.
    assert calls == [("agent~m1", "error"), ("agent~m1j", "ok"), ("agent~m2j", "ok")]

    ModelEndpoint.objects.filter(pk=endpoint.pk).update(url="http://127.0.0.1:9")
    replay = drive(run_replay(run=run, actor=analyst))
    assert replay.status == Run.Status.SUCCEEDED, replay.error
    replayed = StepRun.objects.get(run=replay, step_key="agent")
    assert canonical_json(replayed.output) == canonical_json(agent.output)
