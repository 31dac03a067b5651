"""In Chromium, the agent end to end: the analyst builds an agent step with two tools in the builder (a customer
lookup that runs at once, and a refund note sent over HTTP that a person approves first), publishes and starts a
run from the Run form; the reviewer approves the risky call in the inbox; the run page shows every turn with its
calls and results; a replay from the run page reproduces every output byte for byte without calling the model
server or the outside system again.

The stack is the product's own processes (worker, ASGI) pointed at a development inference server that answers
by this test's script, behind a recording proxy (so "no new model request" is read from the wire), and an HTTP
sink that counts its deliveries (tests/support/sink.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from playwright.sync_api import Browser, Locator, Page, expect

from apps.inference.models import InferenceCall
from apps.runs.models import Run, StepRun
from apps.runs.selectors import canonical_json
from apps.workflows.services import (
    workflow_create,
    workflow_draft_save,
    workflow_version_create,
    workflow_version_publish,
)
from tests.conftest import PASSWORD
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.support.devserver import write_script
from tests.support.processes import (
    asgi_server_argv,
    celery_worker_argv,
    free_port,
    http_ok,
    inference_server_argv,
    redis_url_with_db,
    running,
    service_env,
)
from tests.support.recorder import RecordingProxy
from tests.support.sink import Sink

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WIDTHS = {"desktop": 1280, "phone": 390}
REQUEST = "REFUND-FLOW: customer C-1042 was charged twice for order 7781 and asks for EUR 40 back."
ANSWER = "Customer C-1042 is on the gold plan; the refund note for EUR 40 was sent."
NOTE = "Refund of EUR 40 approved for order 7781"

# The model's turns, latest first: each rule matches the whole conversation, so a turn's rule sees the results
# of the calls before it (the lookup's output holds CUSTOMER-FOUND; the sink's answer says "applied": true).
RULES: list[dict[str, Any]] = [
    {"name": "3: answer", "match": {"contains": ["REFUND-FLOW", '"applied": true']}, "response": ANSWER},
    {
        "name": "2: send the note",
        "match": {"contains": ["REFUND-FLOW", "CUSTOMER-FOUND"]},
        "response": {
            "tool_calls": [{"name": "send_refund_note", "arguments": {"customer_id": "C-1042", "note": NOTE}}]
        },
    },
    {
        "name": "1: look the customer up",
        "match": {"contains": "REFUND-FLOW"},
        "response": {"tool_calls": [{"name": "lookup_customer", "arguments": {"customer_id": "C-1042"}}]},
    },
]


@pytest.fixture(scope="module")
def agent_stack(
    django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RecordingProxy]]:
    """A worker and an ASGI server of their own (on a Redis database of their own) whose model server is a
    development server answering by RULES, reached through a recording proxy (the worker's model calls; the web
    server asks it directly). Loopback is allowlisted for outbound HTTP, so the HTTP tool reaches the sink.
    Yields the web base URL and the proxy."""
    import redis
    from django.conf import settings

    script = write_script(tmp_path_factory.mktemp("agent-flow") / "script.json", RULES)
    inference_port, web_port = free_port(), free_port()
    proxy = RecordingProxy(inference_port)
    redis_url = redis_url_with_db(settings.REDIS_URL, 4)
    redis.Redis.from_url(redis_url).flushdb()
    base = f"http://127.0.0.1:{web_port}"
    with django_db_blocker.unblock():
        env = service_env(
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=redis_url,
            AIOS_INFERENCE_URL=proxy.url,
            AIOS_HTTP_ALLOWLIST="127.0.0.1/32",
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            AIOS_PUBLIC_URLS=base,
        )
    try:
        with (
            running(
                "agent-flow-inference",
                inference_server_argv(inference_port, ttft_ms=20, tpot_ms=2, script=script),
                ready=lambda log: http_ok(f"http://127.0.0.1:{inference_port}/health"),
                env=env,
            ),
            running("agent-flow-worker", celery_worker_argv(), ready=lambda log: " ready." in log, env=env),
            running(
                "agent-flow-asgi",
                asgi_server_argv(web_port),
                ready=lambda log: http_ok(f"{base}/healthz"),
                # Pages ask the model server's /info (at most once a minute) for the development server's
                # banner: straight to it, so the proxy holds only what the worker sent.
                env={**env, "AIOS_INFERENCE_URL": f"http://127.0.0.1:{inference_port}"},
            ),
        ):
            yield base, proxy
    finally:
        proxy.close()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    with Sink(tmp_path / "sink.sqlite3") as running_sink:
        yield running_sink


def sign_in(page: Page, base: str, username: str, welcome: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=welcome)).to_be_visible()


def shoot(page: Page, name: str) -> None:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    for label, width in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SCREENSHOT_DIR / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def press(page: Page, button: Locator) -> None:
    """Press a button of the step panel and wait until the builder the save answers with is on the page: the
    draft's revision has moved on (htmx swaps the page in after the response, so until then a field typed in or
    a publish would land on the page before the save, with its old revision)."""
    revision = page.locator("form.step-form input[name=revision]")
    before = revision.input_value()
    with page.expect_response(lambda response: "/edit/steps/" in response.url):
        button.click()
    expect(revision).not_to_have_value(before)


def save_step(page: Page) -> None:
    # The panel's buttons, not the hidden "Save step" first in its form (which makes Enter in a field save).
    press(page, page.locator(".panel-buttons").get_by_role("button", name="Save step"))


def add_tool(page: Page, kind: str) -> None:
    page.get_by_label("Kind of tool").select_option(label=kind)
    press(page, page.get_by_role("button", name="Add tool"))


def customer_lookup_workflow(analyst: Any, team: Any) -> Any:
    """The published workflow the lookup tool runs: a data step that "finds" the customer."""
    workflow = workflow_create(actor=analyst, name="Customer lookup", team=team)
    fields = {"customer_id": "input.customer_id", "plan": "'gold'", "status": "'CUSTOMER-FOUND'"}
    version = workflow_version_create(
        actor=analyst,
        workflow=workflow,
        graph={"steps": [{"key": "find", "type": "data.transform", "config": {"fields": fields}}]},
        input_schema={
            "type": "object",
            "properties": {"customer_id": {"type": "string", "description": "The customer's number, C-…"}},
            "required": ["customer_id"],
        },
    )
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def blank_refund_desk(analyst: Any, team: Any) -> Any:
    """A draft with its Run form (one text field) and no steps yet."""
    workflow = workflow_create(actor=analyst, name="Refund desk", team=team)
    workflow_draft_save(
        actor=analyst,
        workflow=workflow,
        graph={"steps": []},
        input_schema={
            "type": "object",
            "properties": {"request": {"type": "string", "title": "Customer request"}},
            "required": ["request"],
        },
        expected_revision=None,
    )
    return workflow


@pytest.fixture
def own_connections() -> Iterator[None]:
    """Close, at the end of the test, the database connections its body opened. Without this one stays open
    after the session (the test thread runs Playwright's event loop, and Django keeps connections per async
    context there), and dropping the test database fails with "being accessed by other users"."""
    yield
    connections.close_all()


def outputs(run: Run) -> dict[str, str]:
    """Every step run's output as canonical JSON, by step key (the agent and each of its tool calls)."""
    return {step.step_key: canonical_json(step.output) for step in StepRun.objects.filter(run=run)}


def test_agent_with_an_approved_tool_call_runs_shows_its_turns_and_replays_byte_for_byte(
    agent_stack, sink, analyst, reviewer, team, browser: Browser, own_connections
):
    base, proxy = agent_stack
    lookup = customer_lookup_workflow(analyst, team)
    workflow = blank_refund_desk(analyst, team)
    errors: list[str] = []

    # --- The analyst builds the agent step and its two tools in the builder, publishes and starts a run. ---
    analyst_context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = analyst_context.new_page()
    page.on("pageerror", lambda error: errors.append(f"analyst: {error}"))
    sign_in(page, base, "ana", "Welcome, Ana Analyst")
    page.goto(f"{base}/workflows/{workflow.slug}/edit/")
    expect(page.get_by_text("This workflow has no steps yet.")).to_be_visible()
    page.locator('a.insert-link[href*="insert=root:0"]').first.click()
    page.get_by_label("Search step types").fill("agent")
    page.get_by_role("button", name="Search").click()
    with page.expect_response(lambda response: "/edit/operation/" in response.url):
        page.get_by_role("button", name=re.compile("^Agent")).click()
    expect(page.get_by_role("status")).to_contain_text("Added")
    expect(page.get_by_role("heading", name="Tools")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("Handle the refund request")
    page.locator("#field-config-prompt").fill("Handle this customer request: {{ input.request }}")

    # Tool 1: the published lookup workflow, run at once.
    add_tool(page, "Published workflow")
    tool = page.locator("#tool-0")
    tool.get_by_label("Tool name").fill("lookup_customer")
    tool.get_by_label("What it does").fill("Looks a customer up by number: plan and status.")
    tool.get_by_label("Workflow").select_option(lookup.slug)
    # Tool 2: an HTTP call to the refund system, asked first in the team's queue.
    add_tool(page, "HTTP operation")
    tool = page.locator("#tool-1")
    tool.get_by_label("Tool name").fill("send_refund_note")
    tool.get_by_label("What it does").fill("Sends a refund note to the billing system.")
    tool.get_by_label("Method").select_option("POST")
    tool.get_by_label("URL").fill(f"{sink.url}/effect/refund-note")
    tool.get_by_label("Body", exact=True).fill('{"customer": "{{ params.customer_id }}", "note": "{{ params.note }}"}')
    tool.get_by_label("Each call").select_option("ask")
    tool.get_by_label("Approval queue").select_option(f"team:{team.slug}")
    save_step(page)
    # The arguments came from the settings that read them; the analyst says what each is, for the model.
    tool = page.locator("#tool-1")
    expect(tool.locator("input[name='config.tools.1.parameters.0.name']")).to_have_value("customer_id")
    expect(tool.locator("input[name='config.tools.1.parameters.1.name']")).to_have_value("note")
    tool.get_by_label("Field 1: description").fill("The customer's number, C-…")
    tool.get_by_label("Field 2: description").fill("The note, one sentence.")
    save_step(page)
    expect(page.locator("#problems")).to_contain_text("No problems")

    page.get_by_label("What changed (shown in the version list)").fill("An agent that looks up and refunds")
    page.get_by_role("button", name="Publish version 1").click()
    try:
        expect(page.get_by_role("heading", name="Versions")).to_be_visible(timeout=20_000)  # a busy machine
    except AssertionError:
        alerts = page.locator("[role=alert], .callout--error, .field-error").all_inner_texts()
        raise AssertionError(f"version 1 was not published: {alerts}") from None
    page.goto(f"{base}/runs/start/{workflow.slug}/")
    page.get_by_label("Customer request").fill(REQUEST)
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r"/runs/\d+/$"))
    run = Run.objects.get(pk=int(page.url.rstrip("/").rsplit("/", 1)[1]))
    run_url = page.url
    # The lookup ran at once; the note waits for a person, and nothing reached the sink yet.
    expect(page.locator("#step-agent\\~2")).to_have_class(re.compile("tool-call--waiting"), timeout=30_000)
    expect(page.locator("#step-agent\\~1")).to_have_class(re.compile("tool-call--succeeded"))
    assert sink.deliveries() == []

    # --- The reviewer approves the risky call in the inbox. ---
    reviewer_context = browser.new_context(viewport={"width": 1280, "height": 900})
    inbox = reviewer_context.new_page()
    inbox.on("pageerror", lambda error: errors.append(f"reviewer: {error}"))
    sign_in(inbox, base, "rita", "Welcome, Rita")
    inbox.goto(f"{base}/inbox/")
    inbox.get_by_role("link", name=re.compile("send_refund_note")).first.click()
    expect(inbox.get_by_role("heading", level=1)).to_contain_text("send_refund_note")
    review = inbox.locator(".review")
    expect(review).to_contain_text("C-1042")
    expect(review).to_contain_text(NOTE)
    inbox.get_by_role("button", name=re.compile("^Claim")).click()
    expect(inbox.get_by_text("It is yours.")).to_be_visible()
    shoot(inbox, "agent-flow-inbox-item")
    inbox.get_by_label("Comment").fill("The double charge is on the statement.")
    inbox.get_by_role("button", name=re.compile("^Approve")).click()
    # What she is about to do, before it is done: the arguments unchanged.
    expect(inbox.get_by_role("heading", name="You changed 0 of 2 fields")).to_be_visible()
    inbox.get_by_role("button", name="Submit approval", exact=True).click()
    expect(inbox.locator(".item-state")).to_contain_text("Approved")
    reviewer_context.close()

    # --- The analyst's run page: every turn, its calls and their results, and the final answer. ---
    page.goto(run_url)
    expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    turns = page.locator(".agent-turn")
    expect(turns).to_have_count(3)
    expect(turns.nth(0).locator("h5")).to_have_text("Turn 1 · asks for 1 tool call")
    expect(turns.nth(0).locator(".tool-call")).to_contain_text("Tool call: lookup_customer")
    expect(turns.nth(0).locator(".tool-call")).to_contain_text("CUSTOMER-FOUND")
    expect(turns.nth(1).locator("h5")).to_have_text("Turn 2 · asks for 1 tool call")
    second = turns.nth(1).locator(".tool-call")
    expect(second).to_contain_text("Tool call: send_refund_note")
    expect(second).to_have_class(re.compile("tool-call--succeeded"))
    expect(second).to_contain_text(NOTE)
    expect(second).to_contain_text(re.compile(r"Applied\s*Yes"))  # the sink's answer: the effect happened
    expect(second).to_contain_text("Approved by Rita")
    expect(turns.nth(2).locator("h5")).to_have_text("Turn 3 · final answer")
    expect(turns.nth(2)).to_contain_text(ANSWER)
    # The step's totals are over its three turns (what the run's header counts), not its last turn's alone.
    calls = InferenceCall.objects.filter(run_id=run.pk)
    assert calls.count() == 3
    prompt, generated = sum(c.prompt_tokens for c in calls), sum(c.generated_tokens for c in calls)
    expect(page.locator(".agent-totals")).to_contain_text(
        f"3 turns · 2 tool calls · {prompt} tokens in, {generated} out"
    )
    shoot(page, "agent-flow-run")
    deliveries = sink.deliveries()
    assert len(deliveries) == 1 and deliveries[0].applied and deliveries[0].path == "/effect/refund-note"

    # --- Replay from the run page: byte for byte, nothing sent to the model server or the sink. ---
    run.refresh_from_db()
    original = outputs(run)
    assert set(original) >= {"agent", "agent~1", "agent~2"}, original
    assert REQUEST.encode() in proxy.sent  # the original's model calls went through the proxy
    proxy.clear()
    page.get_by_role("button", name="Replay from recordings").click()
    expect(page.get_by_text(re.compile(rf"replays run #{run.pk} from its recordings"))).to_be_visible()
    replay = Run.objects.get(replay_of=run)
    expect(page).to_have_url(re.compile(rf"/runs/{replay.pk}/$"))
    expect(page.locator("#run-header")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(page.locator(".agent-turn")).to_have_count(3)
    replay.refresh_from_db()
    assert outputs(replay) == original
    assert canonical_json(replay.output) == canonical_json(run.output)
    assert proxy.sent == b""
    assert len(sink.deliveries()) == 1
    analyst_context.close()
    assert not errors, errors
