"""An agent step (`llm.agent`) on the run page: its turns in order, each with the assistant's text, its tool calls
(the tool, the arguments as a table with the raw JSON behind a toggle, the state in words, the result, the
error, the inbox link of a call waiting for a person) and the model call's provenance; the step's totals; and
no tool call as a step or diagram node of its own. First from rows written as the engine writes them, then
from a real agent run against the development inference server."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from lxml import html

from apps.inference.models import InferenceCall
from apps.runs.models import Run, StepRun
from apps.runs.presentation import agent_view, tool_call_view
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish
from tests.steps.test_llm_agent import (  # noqa: F401  (fixtures: the scripted server, its proxy, the endpoint)
    LOOKUP,
    agent_server,
    agent_step,
    endpoint,
    post_note,
    run_to_end,
    sink,
    wire,
)
from tests.steps.test_llm_agent import publish as publish_agent

pytestmark = pytest.mark.django_db

NOTE_TOOL = {
    "name": "post_note",
    "description": "Post a note on the ticket.",
    "step": {"type": "http.request", "config": {"method": "POST", "url": "https://erp.example.com/notes"}},
    "parameters": {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]},
    "approval": "ask",
    "approval_queue": "support",
}


@pytest.fixture
def queue(analyst: Any, team: Any) -> Any:
    from apps.approvals.services import approval_queue_create

    return approval_queue_create(
        actor=None, key="support", name="Support leads", team=team, workers=[analyst], users=[analyst]
    )


def agent_run(analyst: Any, team: Any, *, calls: int = 3) -> Run:
    """A run of a published agent, written row by row as the engine leaves it mid-way: turn 1 looked `calls - 2`
    tickets up, turn 2 asked to post a note (rejected) and another (waiting for approval)."""
    workflow = workflow_create(actor=analyst, name=f"Support agent {calls}", team=team)
    graph = {"steps": [agent_step([LOOKUP, NOTE_TOOL])]}
    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    now = timezone.now()
    run = Run.objects.create(
        workflow=workflow,
        version=version,
        inputs={"text": "Ticket 42"},
        initiator=analyst,
        status=Run.Status.RUNNING,
        started_at=now,
    )
    agent = StepRun.objects.create(
        run=run,
        step_key="agent",
        step_type="llm.agent",
        position=0,
        state="waiting",
        waiting_for="tool calls",
        attempt=1,
        started_at=now,
        usage={"calls": 2, "prompt_tokens": 300, "generated_tokens": 40, "cost": "0.21", "tool_calls": calls},
    )
    lookups = [f"agent~{n}" for n in range(1, calls - 1)]
    agent.transcript = [
        {
            "turn": 1,
            "text": "I will look the tickets up.",
            "calls": lookups,
            "finish": "tool_calls",
            "at": now.isoformat(),
        },
        {
            "turn": 2,
            "text": "<b>Posting</b> two notes.",
            "calls": [f"agent~{calls - 1}", f"agent~{calls}"],
            "finish": "tool_calls",
            "at": now.isoformat(),
        },
    ]
    agent.save(update_fields=["transcript"])
    for number, key in enumerate(lookups, start=1):
        StepRun.objects.create(
            run=run,
            parent=agent,
            step_key=key,
            step_type="data.transform",
            name="lookup",
            position=number,
            state="succeeded",
            attempt=1,
            definition={
                "key": key,
                "type": "data.transform",
                "config": LOOKUP["step"]["config"],
                "name": "lookup",
                "tool": "lookup",
                "call_id": f"c{number}",
                "turn": 1,
                "approval": "run",
            },
            input={"ticket": 40 + number},
            output={"ticket": 40 + number, "state": "open-LOOKED-UP"},
            started_at=now,
            finished_at=now + timedelta(seconds=2),
        )
    for offset, (state, error) in enumerate((("failed", "Rejected by Ana Analyst: not to customers"), ("waiting", ""))):
        key = f"agent~{calls - 1 + offset}"
        StepRun.objects.create(
            run=run,
            parent=agent,
            step_key=key,
            step_type="http.request",
            name="post_note",
            position=calls - 1 + offset,
            state=state,
            waiting_for="approval" if state == "waiting" else "",
            error=error,
            attempt=1,
            definition={
                "key": key,
                "type": "http.request",
                "config": NOTE_TOOL["step"]["config"],
                "name": "post_note",
                "tool": "post_note",
                "call_id": f"n{offset}",
                "turn": 2,
                "approval": "ask",
            },
            input={"note": f"Note {offset}: the ticket is open"},
            started_at=now,
        )
    for turn in (1, 2):
        InferenceCall.objects.create(
            run_id=run.pk,
            step_run_id=agent.pk,
            step_key=f"agent~m{turn}j",
            endpoint_name="main",
            endpoint_url="http://127.0.0.1:1/",
            protocol="chat",
            model_id="dev-model",
            input_sha256="a" * 64,
            output_sha256="b" * 64,
            template_sha256="c" * 64,
            parameters={"max_new_tokens": 256},
            prompt_tokens=150,
            generated_tokens=20,
            latency_ms=120.0,
            cost=Decimal("0.105"),
            status="ok",
        )
    return run


def page_of(client: Client, run: Run) -> Any:
    response = client.get(f"/runs/{run.pk}/")
    assert response.status_code == 200
    return html.fromstring(response.content.decode())


def test_the_agent_reads_as_turns_with_tool_calls_and_provenance(analyst, team, queue):
    from apps.approvals.models import ApprovalRequest

    run = agent_run(analyst, team)
    waiting = StepRun.objects.get(run=run, step_key="agent~3")
    item = ApprovalRequest.objects.create(step_run=waiting, run=run, queue=queue, title="Post a note?")
    client = Client()
    client.force_login(analyst)
    page = page_of(client, run)

    # One step on the page and in the diagram: the calls live inside it.
    assert [a.get("id") for a in page.xpath('//div[@class="steps"]/article')] == ["step-agent"]
    assert page.xpath('//*[@data-step="agent"]') and not page.xpath('//*[starts-with(@data-step, "agent~")]')
    [agent] = page.xpath('//article[@id="step-agent"]')
    turns = agent.xpath('.//li[contains(@class, "agent-turn")]')
    assert [" ".join(t.xpath("./h5")[0].text_content().split()) for t in turns] == [
        "Turn 1 · asks for 1 tool call",
        "Turn 2 · asks for 2 tool calls",
    ]
    assert turns[0].xpath('./p[@class="agent-text"]')[0].text_content() == "I will look the tickets up."
    # The model's text is escaped, never markup.
    assert turns[1].xpath('./p[@class="agent-text"]')[0].text_content() == "<b>Posting</b> two notes."
    assert not agent.xpath(".//p[@class='agent-text']/b")

    lookup, rejected, asking = agent.xpath('.//article[contains(@class, "tool-call")]')
    assert lookup.get("id") == "step-agent~1" and "Tool call: lookup" in lookup.xpath(".//h6")[0].text_content()
    assert lookup.xpath('.//span[contains(@class, "badge")]')[0].text == "succeeded"
    # The arguments as a field table, the raw JSON behind a toggle; the result as fields.
    arguments = lookup.xpath('.//p[@class="tool-call-label" and text()="Arguments"]/following-sibling::*[1]')[0]
    assert "Ticket" in arguments.text_content() and "41" in arguments.text_content()
    assert '"ticket": 41' in lookup.xpath(".//details[@class='raw']/pre")[0].text_content()
    assert "open-LOOKED-UP" in lookup.text_content() and "took 2" in lookup.text_content()
    # A refused call says so in words, with the reason; a call waiting for a person links her inbox item.
    assert rejected.xpath('.//span[contains(@class, "badge")]')[0].text == "rejected"
    assert "tool-call--rejected" in rejected.get("class")
    assert "Rejected by Ana Analyst: not to customers" in rejected.xpath('.//*[@role="alert"]')[0].text_content()
    assert asking.xpath('.//span[contains(@class, "badge")]')[0].text == "waiting for approval"
    [link] = asking.xpath('.//p[@class="step-note"]/a')
    assert link.get("href") == f"/inbox/items/{item.pk}/"
    assert "Support leads" in asking.xpath('.//p[@class="step-note"]')[0].text_content()

    # Each turn's model call has its provenance; the step has its totals.
    provenance = [d.xpath("./summary")[0].text_content() for d in agent.xpath('.//li//details[@class="provenance"]')]
    assert provenance == ["Provenance of turn 1 · dev-model", "Provenance of turn 2 · dev-model"]
    assert "150 in · 20 out · 1 call" in agent.xpath('.//li//details[@class="provenance"]')[0].text_content()
    totals = " ".join(agent.xpath('.//p[contains(@class, "agent-totals")]')[0].text_content().split())
    assert totals.startswith("2 turns · 3 tool calls · 300 tokens in, 40 out · cost 0.21")


def test_a_thinking_agent_has_a_live_stream_for_its_next_turn(analyst, team, queue):
    run = agent_run(analyst, team)
    StepRun.objects.filter(run=run, parent__isnull=False).update(state="succeeded", error="")
    StepRun.objects.filter(run=run, step_key="agent").update(state="running", waiting_for="", streamed_text="Let me ")
    client = Client()
    client.force_login(analyst)
    page = page_of(client, run)
    [stream] = page.xpath('//pre[@id="step-agent-stream"]')
    assert stream.text == "Let me "
    assert "Turn 3 · being written" in stream.getparent().text_content()


def test_a_call_for_the_initiator_to_confirm_and_a_declined_one_say_so_in_words():
    class Row:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(
                {
                    "pk": 1,
                    "run_id": 1,
                    "step_key": "agent~1",
                    "step_type": "email.send",
                    "input": {},
                    "output": None,
                    "duration_seconds": None,
                    "definition": {"tool": "reply"},
                    "name": "reply",
                    "error": "",
                    **fields,
                }
            )

    waiting = tool_call_view(Row(state="waiting", waiting_for="confirm"))
    assert (waiting.state, waiting.state_words) == ("waiting", "waiting for the person who started the run to confirm")
    declined = tool_call_view(Row(state="failed", waiting_for="", error="Not done: ana declined it."))
    assert (declined.state, declined.state_words) == ("rejected", "declined")
    failed = tool_call_view(Row(state="failed", waiting_for="", error="The server answered 500."))
    assert (failed.state, failed.state_words) == ("failed", "failed")


def test_agent_view_keeps_calls_no_turn_names_yet():
    """A call recorded before its turn's transcript entry (the engine writes both, in either order) still shows."""

    class Row:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(
                {
                    "pk": 1,
                    "run_id": 1,
                    "state": "running",
                    "waiting_for": "",
                    "error": "",
                    "output": None,
                    "input": {},
                    "usage": {},
                    "transcript": [],
                    "duration_seconds": None,
                    "definition": {},
                    "name": "",
                    **fields,
                }
            )

    agent = Row(step_key="agent", step_type="llm.agent")
    call = Row(pk=2, step_key="agent~1", step_type="data.transform", state="queued", definition={"tool": "lookup"})
    view = agent_view(agent, [call], [], {})
    assert view.turns == () and [c.tool for c in view.unlisted] == ["lookup"]
    assert view.unlisted[0].state_words == "queued" and not view.thinking


def test_the_run_page_query_count_does_not_grow_with_tool_calls(analyst, team, queue, django_assert_max_num_queries):
    client = Client()
    client.force_login(analyst)
    counts = []
    for calls in (3, 20):
        run = agent_run(analyst, team, calls=calls)
        client.get(f"/runs/{run.pk}/")  # warm the per-process diagram cache and the session
        with django_assert_max_num_queries(13) as captured:
            assert client.get(f"/runs/{run.pk}/").status_code == 200
        counts.append(len(captured))
    assert counts[0] == counts[1], "a tool call more must not mean a query more"


def test_a_real_agent_run_reads_as_its_turns(endpoint, analyst, team, sink):  # noqa: F811
    workflow = publish_agent(analyst, team, [agent_step([LOOKUP, post_note(sink)])])
    run = run_to_end(analyst, workflow, "AGENT-A: look up ticket 42 and post a note")
    assert run.status == Run.Status.SUCCEEDED, run.error
    client = Client()
    client.force_login(analyst)
    page = page_of(client, run)
    [agent] = page.xpath('//article[@id="step-agent"]')
    assert [a.get("id") for a in page.xpath('//div[@class="steps"]/article')] == ["step-agent"]
    turns = agent.xpath('.//li[contains(@class, "agent-turn")]')
    assert len(turns) == 3 and "final answer" in turns[2].xpath("./h5")[0].text_content()
    calls = agent.xpath('.//article[contains(@class, "tool-call")]')
    assert [c.xpath('.//span[contains(@class, "badge")]')[0].text for c in calls] == ["succeeded", "succeeded"]
    assert "Tool call: lookup" in calls[0].text_content() and "Tool call: post_note" in calls[1].text_content()
    assert len(agent.xpath('.//li//details[@class="provenance"]')) == 3  # one model call per turn
    assert "Ticket 42 is open; the note is posted." in agent.xpath('.//section[@class="step-output"]')[0].text_content()
    totals = " ".join(agent.xpath('.//p[contains(@class, "agent-totals")]')[0].text_content().split())
    assert totals.startswith("3 turns · 2 tool calls")


def test_a_tool_call_held_by_an_incident_offers_retry_skip_and_abort_to_whoever_may_operate(
    analyst, team, manager, queue
):
    """An at-most-once tool call whose outcome is unknown waits on an incident: the page says why inside the call
    and offers the same choices as for a step, to those who may operate the run; the others read the reason."""
    from apps.runs.lifecycle import step_run_incident_open
    from apps.runs.models import Incident

    run = agent_run(analyst, team)
    call = StepRun.objects.get(run=run, step_key="agent~3")
    StepRun.objects.filter(pk=call.pk).update(state=StepRun.State.RUNNING, waiting_for="", fencing_token=1)
    call.refresh_from_db()
    reason = "The call to erp.example.com may or may not have happened: the worker died during it."
    assert step_run_incident_open(step_run=call, reason=reason)
    incident = Incident.objects.get(step_run=call, resolved_at=None)

    client = Client()
    client.force_login(analyst)
    [section] = page_of(client, run).xpath('//article[@id="step-agent~3"]//section[@class="incident"]')
    assert reason in section.text_content()
    buttons = [" ".join(button.text_content().split()) for button in section.xpath(".//button")]
    assert buttons == ["Retry tool call", "Skip with this result", "Abort run"]
    assert section.xpath(".//label[@for=$id]", id=f"skip-output-{incident.pk}")[0].text_content() == (
        "Result to give the agent instead (JSON)"
    )
    [retry] = [form for form in section.xpath(".//form") if form.xpath('.//input[@value="retry"]')]

    # The manager reads every run but operates none: the reason without the choices.
    reader = Client()
    reader.force_login(manager)
    [read_only] = page_of(reader, run).xpath('//article[@id="step-agent~3"]//section[@class="incident"]')
    assert reason in read_only.text_content() and not read_only.xpath(".//form")

    assert client.post(retry.get("action"), {"action": "retry"}).status_code == 302
    incident.refresh_from_db()
    call.refresh_from_db()
    assert incident.resolved_at is not None and call.state == StepRun.State.QUEUED
    assert not page_of(client, run).xpath('//section[@class="incident"]')
