"""The run page: the workflow's diagram with each step's live state, and the run's inputs, step outputs and
result as labelled fields and tables (apps/runs/presentation.py), with the raw JSON one click away."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from django.template.loader import render_to_string
from django.test import Client
from django.utils import timezone

from apps.runs.models import Run, StepRun
from apps.runs.presentation import (
    MAX_DEPTH,
    MAX_ITEMS,
    Bullets,
    Fields,
    Table,
    Text,
    present_value,
    run_inputs_display,
    step_output_display,
)
from apps.workflows.services import workflow_create, workflow_version_create, workflow_version_publish

# --- presentation ------------------------------------------------------------------------------------------

CLAIM_SCHEMA = {
    "type": "object",
    "properties": {
        "claimant": {"type": "string", "title": "Claimant's name"},
        "amount": {"type": "number", "title": "Claimed amount", "description": "In euros, as the claim says."},
        "injury_reported": {"type": "boolean"},
        "incident_date": {"type": "string", "format": "date"},
    },
    "required": ["claimant", "amount"],
}


def rows(value: Any) -> dict[str, Any]:
    assert isinstance(value, Fields), value
    return {row.label: row for row in value.rows}


def text_of(value: Any) -> str:
    assert isinstance(value, Text), value
    return value.text


def test_extract_reads_as_a_table_of_the_schemas_fields_with_confidence_and_low_said_in_words():
    output = {
        "data": {"injury_reported": False, "claimant": "Maria Lopez", "amount": 12400.0, "incident_date": "2024-11-03"},
        "confidence": {"claimant": 0.97, "amount": 0.55},
        "text": "{...}",
    }
    display = step_output_display("llm.extract", {"json_schema": CLAIM_SCHEMA}, output)
    fields = rows(display)
    # Schema order and titles (the data's key order does not matter); humanised names where no title.
    assert list(fields) == ["Claimant's name", "Claimed amount", "Injury reported", "Incident date"]
    assert fields["Claimed amount"].description == "In euros, as the claim says."
    assert text_of(fields["Claimed amount"].value) == "12,400"
    assert text_of(fields["Injury reported"].value) == "No"
    assert text_of(fields["Incident date"].value) == "3 November 2024"
    high, low = fields["Claimant's name"].confidence, fields["Claimed amount"].confidence
    assert (high.percent, high.low) == ("97%", False)
    assert (low.percent, low.low) == ("55%", True)
    assert fields["Injury reported"].confidence is None  # the server gave none for it
    html = render_to_string("runs/_value.html", {"value": display, "top": True})
    assert "confidence 55% <strong>· low</strong>" in html  # not by colour alone
    assert "confidence 97%</span>" in html
    assert '<th scope="col">Field</th><th scope="col">Value</th>' in html


def test_generate_reads_json_by_its_reply_schema_and_text_as_a_paragraph():
    config = {"output": "json", "json_schema": CLAIM_SCHEMA}
    fields = rows(
        step_output_display("llm.generate", config, {"text": "{}", "data": {"claimant": "Tom", "amount": 850}})
    )
    assert text_of(fields["Claimed amount"].value) == "850" and fields["Claimed amount"].confidence is None
    letter = step_output_display("llm.generate", {}, {"text": "Dear Maria,\n\nyour claim is approved."})
    assert isinstance(letter, Text) and letter.long and letter.text == "Dear Maria,\n\nyour claim is approved."
    html = render_to_string("runs/_value.html", {"value": letter})
    assert 'class="value-text value-text--long"' in html and "Dear Maria,\n\nyour claim" in html


def test_classify_says_label_confidence_and_route_in_words():
    config = {"labels": ["fraud", "ok"], "threshold": 0.8}
    output = {"label": "fraud", "confidence": 0.62, "scores": {"fraud": 0.62, "ok": 0.38}, "branch": "low_confidence"}
    fields = rows(step_output_display("llm.classify", config, output))
    assert text_of(fields["Label"].value) == "fraud"
    assert text_of(fields["Confidence"].value) == "62%" and fields["Confidence"].confidence.low
    html = render_to_string("runs/_value.html", {"value": step_output_display("llm.classify", config, output)})
    assert '62%</span> <span class="confidence confidence--low"><strong>low</strong></span>' in " ".join(html.split())
    assert "Low confidence: below the 80% threshold" in text_of(fields["Route"].value)
    assert {row.label: text_of(row.value) for row in fields["Scores"].value.rows} == {"fraud": "62%", "ok": "38%"}
    confident = rows(step_output_display("llm.classify", config, {**output, "confidence": 0.9, "branch": "confident"}))
    assert text_of(confident["Route"].value).startswith("Confident: at or above the 80% threshold")
    assert not confident["Confidence"].confidence.low
    unmatched = rows(step_output_display("llm.classify", config, {**output, "label": None}))
    assert unmatched["Label"].value.muted


def test_approval_shows_the_decision_the_reason_and_who_decided():
    output = {
        "decision": "rejected",
        "branch": "rejected",
        "reason": "Policy lapsed.",
        "edits": {},
        "decided_by": "rita",
    }
    fields = rows(step_output_display("human.approval", {"queue": "Claims"}, output))
    assert {label: text_of(row.value) for label, row in fields.items()} == {
        "Decision": "Rejected",
        "Reason": "Policy lapsed.",
        "Decided by": "rita",
    }
    expired = rows(
        step_output_display("human.approval", {}, {**output, "decision": "expired", "reason": "", "decided_by": ""})
    )
    assert text_of(expired["Decision"].value) == "Expired: nobody decided in time"
    assert expired["Reason"].value.muted and expired["Decided by"].value.muted
    edited = rows(step_output_display("human.approval", {}, {**output, "edits": {"amount": 800}}))
    assert text_of(rows(edited["Changes made"].value)["Amount"].value) == "800"


def test_http_request_shows_the_status_in_words_and_a_flat_body_as_fields():
    fields = rows(step_output_display("http.request", {}, {"status": 201, "body": {"ticket_id": 4711, "queue": "A"}}))
    assert text_of(fields["Status"].value) == "201 Created"
    assert {row.label: text_of(row.value) for row in fields["Response"].value.rows} == {
        "Ticket id": "4,711",
        "Queue": "A",
    }
    empty = rows(step_output_display("http.request", {}, {"status": 204, "body": None}))
    assert text_of(empty["Status"].value) == "204 No Content" and empty["Response"].value.muted


def test_fields_follow_the_designed_order_that_survives_storage():
    # jsonb hands properties back sorted by key length; the `required` list keeps the designed order.
    schema = {
        "type": "object",
        "properties": {"amount": {"type": "number"}, "summary": {"type": "string"}, "claimant": {"type": "string"}},
        "required": ["claimant", "amount"],
    }
    data = {"summary": "s", "amount": 1, "claimant": "c", "extra": 2}
    assert list(rows(present_value(data, schema))) == ["Claimant", "Amount", "Summary", "Extra"]


def test_transform_lists_its_fields_in_the_configured_order():
    config = {"fields": {"route": "...", "reason": "...", "amount": "..."}}
    output = {"amount": 850.0, "reason": "Small claim.", "route": "auto_approve", "extra": True}
    fields = rows(step_output_display("data.transform", config, output))
    assert list(fields) == ["Route", "Reason", "Amount", "Extra"]
    assert text_of(fields["Route"].value) == "auto_approve"  # data stays data: not reworded


def test_unknown_shapes_get_the_generic_reading():
    records = [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1500}]
    table = step_output_display("some.plugin", {}, {"lines": records})
    lines = rows(table)["Lines"].value
    assert isinstance(lines, Table) and lines.columns == ("Sku", "Qty")
    assert [[text_of(cell) for cell in row] for row in lines.rows] == [["A-1", "2"], ["B-2", "1,500"]]
    mixed = present_value(["a", {"b": 1}, 3])
    assert isinstance(mixed, Bullets) and [type(entry) for entry in mixed.entries] == [Text, Fields, Text]
    assert text_of(present_value(None)) == "Not given" and present_value(None).muted
    assert text_of(present_value(True)) == "Yes"
    assert text_of(present_value(1234567)) == "1,234,567" and text_of(present_value(0.125)) == "0.125"
    assert text_of(present_value("2024-03-05T14:30:00+00:00")) == "5 March 2024, 14:30 UTC"
    assert text_of(present_value("POL-2024-11")) == "POL-2024-11"  # not a date
    assert present_value([]).muted and present_value({}).muted
    # A person who skipped a failed extraction may give any output: it still reads, generically.
    assert text_of(step_output_display("llm.extract", {"json_schema": CLAIM_SCHEMA}, 42)) == "42"
    assert isinstance(step_output_display("llm.extract", {}, {"note": "typed by hand"}), Fields)


def test_nesting_stops_at_the_depth_limit_and_long_lists_are_cut_with_a_note():
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    level, labels = present_value(deep), []
    for _ in range(MAX_DEPTH):
        row = level.rows[0]
        labels.append(row.label)
        level = row.value
    assert labels == ["A", "B", "C"]
    assert isinstance(level, Text) and level.text == '{"d": {"e": 1}}'
    many = present_value(list(range(MAX_ITEMS + 7)))
    assert isinstance(many, Bullets) and len(many.entries) == MAX_ITEMS and many.more == 7
    html = render_to_string("runs/_value.html", {"value": many})
    assert "… and 7 more (see View raw)" in html
    long_text = present_value("x" * 20_000)
    assert long_text.long and "shortened" in long_text.text and len(long_text.text) < 10_100


def test_model_output_is_escaped_everywhere_it_is_shown():
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    values = [
        step_output_display("llm.extract", {"json_schema": CLAIM_SCHEMA}, {"data": {"claimant": hostile, hostile: 1}}),
        present_value([{hostile: hostile}, {hostile: hostile}]),
        present_value({"a": {"b": {"c": {"d": hostile}}}}),
        step_output_display("llm.generate", {}, {"text": hostile}),
    ]
    for value in values:
        html = render_to_string("runs/_value.html", {"value": value, "top": True})
        assert "<script" not in html and "<img" not in html, html
        assert "&lt;script&gt;" in html


def test_inputs_read_as_the_start_forms_fields():
    schema = {
        "type": "object",
        "properties": {
            "claim_text": {"type": "string", "title": "Claim text", "format": "textarea"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "urgent": {"type": "boolean"},
            "received_on": {"type": "string", "format": "date"},
            "note": {"type": "string"},
        },
    }
    inputs = {
        "claim_text": "Line one.\nLine two.",
        "tags": ["car", "glass"],
        "urgent": True,
        "received_on": "2025-01-31",
    }
    fields = rows(run_inputs_display(schema, inputs))
    assert list(fields) == ["Claim text", "Tags", "Urgent", "Received on", "Note"]
    assert fields["Claim text"].value.long
    assert [text_of(entry) for entry in fields["Tags"].value.entries] == ["car", "glass"]
    assert text_of(fields["Urgent"].value) == "Yes" and text_of(fields["Received on"].value) == "31 January 2025"
    assert text_of(fields["Note"].value) == "Not given" and fields["Note"].value.muted


# --- the page ----------------------------------------------------------------------------------------------

INPUT_SCHEMA = {
    "type": "object",
    "properties": {"claim_text": {"type": "string", "title": "Claim text", "format": "textarea", "minLength": 5}},
    "required": ["claim_text"],
}
HOSTILE = '<script>alert("owned")</script>'


def every_kind_graph() -> dict[str, Any]:
    return {
        "steps": [
            {
                "key": "extract",
                "type": "llm.extract",
                "name": "Read the claim",
                "config": {"prompt": "Extract: {{ input.claim_text }}", "json_schema": CLAIM_SCHEMA},
            },
            {
                "key": "classify",
                "type": "llm.classify",
                "name": "Sort the claim",
                "config": {"prompt": "Classify: {{ input.claim_text }}", "labels": ["auto", "property"]},
            },
            {"key": "review", "type": "human.approval", "name": "Adjuster review", "config": {"queue": "team:claims"}},
            {
                "key": "notify",
                "type": "http.request",
                "name": "Open a ticket",
                "config": {"url": "https://erp.example.com/tickets", "body": "{}"},
            },
            {
                "key": "decide",
                "type": "data.transform",
                "name": "Decide the route",
                "config": {"fields": {"route": '"auto_approve"', "amount": "1.0"}},
            },
        ]
    }


def publish(analyst: Any, team: Any, name: str, graph: dict[str, Any]) -> Any:
    workflow = workflow_create(actor=analyst, name=name, team=team)
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=INPUT_SCHEMA)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


OUTPUTS: dict[str, Any] = {
    "extract": {
        "data": {"claimant": HOSTILE, "amount": 12400.0, "injury_reported": False, "incident_date": "2024-11-03"},
        "confidence": {"claimant": 0.91, "amount": 0.42},
        "text": "{}",
    },
    "classify": {"label": "property", "confidence": 0.93, "scores": {"property": 0.93}, "branch": "confident"},
    "review": {
        "decision": "approved",
        "branch": "approved",
        "reason": "Photos match.",
        "edits": {},
        "decided_by": "rita",
    },
    "notify": {"status": 201, "body": {"ticket_id": 4711}},
    "decide": {"route": "adjuster_queue", "amount": 12400.0},
}


def finished_run(analyst: Any, workflow: Any, *, states: dict[str, str] | None = None) -> Run:
    """A run written row by row as the engine leaves it (no worker): every step succeeded unless `states`
    says otherwise; a step that did not succeed has no output."""
    version = workflow.versions.get()
    states = states or {}
    succeeded = all(state == "succeeded" for state in states.values())
    now = timezone.now()
    steps = version.graph["steps"]
    run = Run.objects.create(
        workflow=workflow,
        version=version,
        inputs={"claim_text": f"Claimant: Tom Becker.\nPolicy POL-20917. {HOSTILE}"},
        initiator=analyst,
        status=Run.Status.SUCCEEDED if succeeded else Run.Status.RUNNING,
        output=OUTPUTS.get(steps[-1]["key"], {"n": 1}) if succeeded else None,
        started_at=now,
        finished_at=now if succeeded else None,
    )
    for position, step in enumerate(steps):
        state = states.get(step["key"], "succeeded")
        StepRun.objects.create(
            run=run,
            step_key=step["key"],
            step_type=step["type"],
            name=step.get("name", ""),
            position=position,
            state=state,
            attempt=1 if state != "pending" else 0,
            output=OUTPUTS.get(step["key"], {"n": position}) if state == "succeeded" else None,
            started_at=now if state != "pending" else None,
            finished_at=now if state == "succeeded" else None,
        )
    return run


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def node_states(page: str) -> dict[str, str]:
    """{step key: state} as the diagram draws it."""
    found = re.findall(r'class="diagram-node [^"]*?(?: state-(\w+))?" data-step="([^"]+)"', page)
    return {key: state for state, key in found}


def test_a_finished_run_reads_as_labelled_fields_with_the_raw_json_behind_a_toggle(analyst, team):
    workflow = publish(analyst, team, "Every kind", every_kind_graph())
    run = finished_run(analyst, workflow)
    response = signed_in(analyst).get(f"/runs/{run.pk}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert '<link rel="stylesheet" href="/static/css/runs.css">' in page
    # The input: labelled by the schema's title, line breaks kept, the model-bound text escaped.
    assert '<th scope="row">Claim text</th>' in page
    assert "Claimant: Tom Becker.\nPolicy POL-20917." in page
    # Each step's output by its type.
    for label in ("Claimant&#x27;s name", "Claimed amount", "Injury reported", "Incident date"):
        assert f'<th scope="row">{label}' in page
    assert "confidence 42% <strong>· low</strong>" in page and "12,400" in page and "3 November 2024" in page
    assert "Confident: at or above the 70% threshold" in page
    assert '<th scope="row">Decision</th>' in page and "Approved" in page and "Photos match." in page
    assert "201 Created" in page and '<th scope="row">Ticket id</th>' in page
    # The result reads like the step that made it; the raw JSON stays one click away for each.
    result = page[page.index('id="run-result"') : page.index('id="run-diagram"')]
    assert '<th scope="row">Route</th>' in result and "adjuster_queue" in result
    assert page.count("<summary>View raw") == 1 + 1 + 5  # input, result, five steps
    assert "&quot;route&quot;: &quot;adjuster_queue&quot;" in result
    # Model output and input are escaped wherever they appear.
    assert "<script>alert" not in page
    assert page.count("&lt;script&gt;alert(&quot;owned&quot;)") == 2  # the input's and the extraction's fields
    assert page.count("&lt;script&gt;alert(\\&quot;owned\\&quot;)") == 2  # their raw JSON
    # The diagram, with each step's state in words as well as colour.
    assert 'id="run-diagram-figure"' in page
    assert node_states(page) == dict.fromkeys(OUTPUTS, "succeeded")
    assert "Run: 5 done." in page and "✓ done" in page


def test_the_diagram_shows_a_run_in_the_middle(analyst, team):
    workflow = publish(analyst, team, "Every kind", every_kind_graph())
    run = finished_run(
        analyst,
        workflow,
        states={
            "classify": "succeeded",
            "extract": "succeeded",
            "review": "waiting",
            "notify": "pending",
            "decide": "pending",
        },
    )
    page = signed_in(analyst).get(f"/runs/{run.pk}/").content.decode()
    assert node_states(page) == {
        "extract": "succeeded",
        "classify": "succeeded",
        "review": "waiting",
        "notify": "pending",
        "decide": "pending",
    }
    # Pending has no badge (it looks like the plain drawing); the others say their state in words.
    assert "‖ waiting" in page and page.count("✓ done") == 2 and "Run: 2 not started, 1 waiting, 2 done." in page
    assert 'id="run-output"' not in page and '<div id="run-result" hidden></div>' in page


def test_the_run_page_query_count_does_not_grow_with_steps(analyst, team, django_assert_max_num_queries):
    client = signed_in(analyst)
    small = finished_run(analyst, publish(analyst, team, "Small", every_kind_graph()))
    many = [
        {
            "key": f"t{index}",
            "type": "data.transform",
            "name": f"Step {index}",
            "config": {"fields": {"n": f"{index}.0"}},
        }
        for index in range(30)
    ]
    big = finished_run(analyst, publish(analyst, team, "Big", {"steps": many}))
    counts = []
    for run in (small, big):
        client.get(f"/runs/{run.pk}/")  # warm the per-process diagram cache and the session
        # 13: the person's roles are read once and shared by every check (may she operate the run, does she
        # review the queues whose runs she may read), one query reads the run's approval items, and one the
        # effect ledger (which restart forms ask to confirm sending again).
        with django_assert_max_num_queries(13) as captured:
            assert client.get(f"/runs/{run.pk}/").status_code == 200
        counts.append(len(captured))
    small_count, big_count = counts
    assert big_count == small_count, "a step more must not mean a query more"


def test_the_diagram_is_laid_out_once_per_version_and_a_test_run_draws_its_own_snapshot(analyst, team):
    from apps.runs.selectors import run_graph_facts

    workflow = publish(analyst, team, "Every kind", every_kind_graph())
    first, second = finished_run(analyst, workflow), finished_run(analyst, workflow)
    facts = run_graph_facts(first)
    assert run_graph_facts(Run.objects.get(pk=second.pk)) is facts  # another run, another copy of the row
    assert facts.result_keys == ["decide"] and facts.steps["extract"].config["json_schema"] == CLAIM_SCHEMA
    snapshot = {"steps": [every_kind_graph()["steps"][0]]}
    Run.objects.filter(pk=second.pk).update(mode=Run.Mode.TEST, graph_snapshot=snapshot)
    tested = run_graph_facts(Run.objects.get(pk=second.pk))
    assert [node.key for node in tested.diagram.nodes] == ["extract"] and tested.result_keys == ["extract"]


@pytest.mark.integration
def test_the_claims_demo_driven_to_the_end_reads_as_fields(analyst, claims_workflow, sample_claim):
    # The test stack's development inference server answers the extraction (as the demo's worker would).
    from apps.runs.services import run_start
    from tests.support.engine import drive

    run = drive(run_start(actor=analyst, workflow=claims_workflow, inputs={"claim_text": sample_claim})[0])
    assert run.status == "succeeded"
    page = signed_in(analyst).get(f"/runs/{run.pk}/").content.decode()
    for label in ("Claimant", "Policy number", "Incident type", "Amount", "Injury reported", "Summary", "Route"):
        assert f'<th scope="row">{label}</th>' in page
    assert "Maria Lopez" in page and "auto_approve" in page
    assert node_states(page) == {"extract": "succeeded", "decide": "succeeded"}


# --- the live path ---------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_pushes_carry_the_diagram_when_a_state_changes_and_only_then(asgi_server, analyst, team):
    from websockets.asyncio.client import connect

    from apps.runs.events import publish_run_changed
    from tests.runs.test_websocket import recv, session_cookie, ws_url

    workflow = publish(analyst, team, "Every kind", every_kind_graph())
    run = finished_run(
        analyst,
        workflow,
        states={
            "extract": "running",
            "classify": "pending",
            "review": "pending",
            "notify": "pending",
            "decide": "pending",
        },
    )
    cookie = session_cookie(analyst)

    def finish_extract() -> None:
        StepRun.objects.filter(run=run, step_key="extract").update(
            state="succeeded", output=OUTPUTS["extract"], finished_at=timezone.now()
        )
        StepRun.objects.filter(run=run, step_key="classify").update(state="running", started_at=timezone.now())
        publish_run_changed(run.pk, ["extract", "classify"])

    async def scenario() -> list[str]:
        async with connect(
            ws_url(asgi_server, run.pk), origin=asgi_server, additional_headers={"Cookie": cookie}
        ) as socket:
            received = [await recv(socket)]  # the catch-up render
            await asyncio.to_thread(finish_extract)
            received.append(await recv(socket))
            await asyncio.to_thread(publish_run_changed, run.pk, ["extract"])  # nothing new for the diagram
            received.append(await recv(socket))
            return received

    catch_up, changed, unchanged = asyncio.run(scenario())
    assert '<section id="run-diagram" class="card run-diagram" hx-swap-oob="true"' in catch_up
    assert node_states(catch_up)["extract"] == "running"
    assert node_states(changed) == {
        "extract": "succeeded",
        "classify": "running",
        **dict.fromkeys(["review", "notify", "decide"], "pending"),
    }
    assert "confidence 42% <strong>· low</strong>" in changed  # the step's fields, pushed as rendered on load
    assert 'id="run-diagram"' not in unchanged and 'id="step-extract"' in unchanged
    # A reload shows what was pushed.
    page = signed_in(analyst).get(f"/runs/{run.pk}/").content.decode()
    assert node_states(page) == node_states(changed)
