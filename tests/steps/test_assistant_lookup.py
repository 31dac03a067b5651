"""`assistant.lookup`: the remote-work assistant's tools read a person's work with her own rights.

The readers per persona (Rita sees the items she may decide in her queues and nobody else's; Otto the outsider
sees nothing; a run nobody started reads nothing and says so), her runs that need attention and her week's
numbers; then the gallery's "Remote-work assistant" in real agent runs executed here (`drive`) against the
stack's development inference server answering from its demo script: "What is waiting for me?" calls
pending_approvals and its output holds Rita's real items, and "Draft a reply to the oldest" waits for her to
confirm the drafted email, which goes out over SMTP only when she does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.accounts.models import Team, User
from apps.accounts.services import team_create, user_create
from apps.approvals.models import ApprovalRequest
from apps.approvals.readers import my_approvals, weekly_summary
from apps.approvals.services import approval_claim, approval_decide
from apps.connectors.services import connection_create
from apps.runs.agent import tool_call_confirm, tool_calls_awaiting_confirmation
from apps.runs.models import Incident, Run, StepRun
from apps.runs.readers import runs_needing_attention
from apps.runs.services import run_start
from apps.steps.agent_config import TOOL_STEP_TYPES
from apps.steps.base import StepContext
from apps.steps.library.assistant_lookup import NOBODY, AssistantLookup, AssistantLookupConfig
from apps.steps.readers import LOOKUPS, READERS
from apps.steps.registry import step_config_errors
from apps.workflows.gallery import gallery_template_get, workflow_create_from_template
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.selectors import workflow_can_run
from apps.workflows.services import (
    version_problems,
    workflow_create,
    workflow_draft_get_or_create,
    workflow_version_create,
    workflow_version_publish,
)
from devserver import DEMO_SCRIPT, Script
from devserver.scripts import choose_reply
from tests.approvals.items import claim_workflow, member, parked_item
from tests.support.engine import drive
from tests.support.smtp import PrivateSmtpServer, private_smtp_server

pytestmark = pytest.mark.django_db
ASSISTANT = "remote-work-assistant"
PARAMS = {"limit": 10, "workflow_id": None}


@pytest.fixture
def finance(analyst: User) -> Team:
    olga = user_create(username="olga", password="correct-horse-battery-staple", roles=["reviewer"])
    return team_create(name="Finance", members=[analyst, olga])


@pytest.fixture
def work(analyst: User, reviewer: User, team: Team, finance: Team) -> dict[str, Any]:
    """Ana's runs parked in two queues: the claims team's (Rita's) and finance's (Olga's). Of the claims items,
    Rita claimed one, Rolf (another claims reviewer) claimed one, one is free."""
    rolf = member(team, "rolf")
    claims = claim_workflow(analyst, team, name="Claim check")
    payments = claim_workflow(analyst, finance, name="Payment check", queue=finance.group.name)
    first = parked_item(analyst, claims, name="First Claimant")
    mine = parked_item(analyst, claims, name="Second Claimant")
    rolfs = parked_item(analyst, claims, name="Third Claimant")
    finance_item = parked_item(analyst, payments, name="Finance Payee")
    approval_claim(request=mine, actor=reviewer)
    approval_claim(request=rolfs, actor=rolf)
    return {"first": first, "mine": mine, "rolfs": rolfs, "finance": finance_item, "claims": claims, "rolf": rolf}


# --- the registry and the step ------------------------------------------------------------------------------


def test_every_lookup_has_a_reader_registered_by_the_app_that_owns_the_data():
    assert set(READERS) == set(LOOKUPS) == {"my_approvals", "my_runs_needing_attention", "weekly_summary"}
    assert READERS["my_approvals"] is my_approvals and READERS["weekly_summary"] is weekly_summary
    assert READERS["my_runs_needing_attention"] is runs_needing_attention
    assert "assistant.lookup" in TOOL_STEP_TYPES


def test_the_config_names_what_is_wrong():
    assert step_config_errors("assistant.lookup", {"what": "my_approvals"}) == []
    assert step_config_errors("assistant.lookup", {"what": "everything"})
    assert step_config_errors("assistant.lookup", {"what": "my_approvals", "limit": 51})
    assert step_config_errors("assistant.lookup", {"what": "my_approvals", "limit": 0})
    assert step_config_errors("assistant.lookup", {"what": "my_approvals", "scope": "all"})


def _context(initiator_id: int | None) -> StepContext:
    return StepContext(run_id=1, step_key="look", input={}, steps={}, idempotency_key="k", initiator_id=initiator_id)


def test_a_run_nobody_started_reads_nothing_and_says_so(work):
    config = AssistantLookupConfig(what="my_approvals")
    outcome = AssistantLookup().execute(config, _context(None))
    assert outcome.output == {"what": "my_approvals", "items": [], "count": 0, "summary": NOBODY}
    assert "Nobody started this run" in NOBODY


def test_the_step_reads_as_the_initiator_and_keeps_to_its_limit(work, reviewer):
    outcome = AssistantLookup().execute(AssistantLookupConfig(what="my_approvals", limit=1), _context(reviewer.pk))
    assert outcome.output["count"] == 1 and len(outcome.output["items"]) == 1
    assert outcome.output["items"][0]["request_id"] == work["first"].pk
    assert outcome.output["summary"].startswith("2 items are waiting for you to decide (1 claimed by you)")
    assert "(the oldest is listed)" in outcome.output["summary"]


# --- my approvals ---------------------------------------------------------------------------------------------


def test_a_reviewer_sees_the_items_she_may_decide_in_her_queues_only(work, reviewer):
    reading = my_approvals(reviewer.pk, PARAMS)
    items = reading["items"]
    # Her claimed item and the free one, oldest first; not Rolf's claimed item, not finance's.
    assert [item["request_id"] for item in items] == [work["first"].pk, work["mine"].pk]
    first, mine = items
    assert first["title"] == "Check the claim" and first["queue"] == work["first"].queue.name
    assert first["workflow"] == "Claim check" and first["priority"] == "Normal"
    assert first["claimed_by_me"] is False and mine["claimed_by_me"] is True
    assert first["link"] == reverse("approvals:item", args=[work["first"].pk])
    assert first["age"].startswith("waiting ") and first["sla"] == "no due time" and first["due_at"] is None
    assert reading["summary"].startswith("2 items are waiting for you to decide (1 claimed by you); the oldest")


def test_the_due_time_is_said_in_words(work, reviewer):
    ApprovalRequest.objects.filter(pk=work["first"].pk).update(due_at=timezone.now() - timedelta(hours=3))
    first = my_approvals(reviewer.pk, PARAMS)["items"][0]
    assert first["sla_state"] == "breached" and first["sla"].startswith("breached ") and first["due_at"]
    assert "and 1 is past its due time" in my_approvals(reviewer.pk, PARAMS)["summary"]


def test_other_people_see_their_own_work_and_an_outsider_nothing(work, outsider, analyst, manager):
    olga = User.objects.get(username="olga")
    assert [item["request_id"] for item in my_approvals(olga.pk, PARAMS)["items"]] == [work["finance"].pk]
    assert [item["request_id"] for item in my_approvals(work["rolf"].pk, PARAMS)["items"]] == [
        work["first"].pk,
        work["rolfs"].pk,
    ]
    for person in (outsider, analyst, manager):  # none of them works a queue
        reading = my_approvals(person.pk, PARAMS)
        assert reading == {"items": [], "summary": "Nothing is waiting for you to decide."}
    # A departed colleague (inactive) or no such person: nothing at all.
    User.objects.filter(pk=olga.pk).update(is_active=False)
    assert my_approvals(olga.pk, PARAMS)["items"] == []
    assert my_approvals(999_999, PARAMS)["items"] == []


def test_an_item_she_started_herself_under_separation_of_duties_is_not_hers_to_decide(reviewer, team, analyst):
    workflow = claim_workflow(analyst, team, name="Self check")
    assign_perm("workflows.run_workflow", reviewer, workflow)
    parked_item(reviewer, workflow, name="Rita Herself")
    assert my_approvals(reviewer.pk, PARAMS)["items"] == []


# --- runs needing attention --------------------------------------------------------------------------------


def _failing_workflow(analyst: User, team: Team) -> Workflow:
    workflow = workflow_create(actor=analyst, name="Nightly export", team=team)
    graph = {"steps": [{"key": "boom", "type": "data.transform", "config": {"fields": {"x": "input.n / 0"}}}]}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    version = workflow_version_create(actor=analyst, workflow=workflow, graph=graph, input_schema=schema)
    workflow_version_publish(actor=analyst, version=version)
    return workflow


def test_runs_needing_attention_by_persona(work, analyst, reviewer, outsider, finance):
    failed, _ = run_start(actor=analyst, workflow=_failing_workflow(analyst, finance), inputs={"n": 1})
    failed = drive(failed)
    assert failed.status == Run.Status.FAILED
    # One item has waited on people for two days; another run stopped on an incident.
    long_wait = work["first"]
    StepRun.objects.filter(pk=long_wait.step_run_id).update(started_at=timezone.now() - timedelta(days=2))
    stuck = work["mine"]
    Incident.objects.create(run_id=stuck.run_id, step_run_id=stuck.step_run_id, reason="Restart cap reached.\nMore.")

    reading = runs_needing_attention(analyst.pk, PARAMS)
    assert [(item["run_id"], item["reason"]) for item in reading["items"]] == [
        (stuck.run_id, "incident"),
        (failed.pk, "failed"),
        (long_wait.run_id, "waiting_on_people"),
    ]
    incident, failure, waiting = reading["items"]
    assert incident["status"] == 'stopped on an incident at "review": Restart cap reached.'
    assert failure["status"].startswith("failed: ") and failure["workflow"] == "Nightly export"
    assert failure["name"] == f"Run #{failed.pk}" and failure["link"] == reverse("runs:detail", args=[failed.pk])
    assert waiting["status"].startswith('waiting for a decision at "review" for 2\xa0days')
    assert waiting["when"].endswith(" ago") and waiting["since"]
    assert reading["summary"] == (
        "3 runs need attention: 1 stopped on an incident, 1 failed, 1 waiting on people for more than a day."
    )
    # Rita reads the runs behind her queue's items, not the failed export of a workflow she cannot see...
    assert {item["reason"] for item in runs_needing_attention(reviewer.pk, PARAMS)["items"]} == {
        "incident",
        "waiting_on_people",
    }
    # ...the outsider nothing, and the asking workflow's own runs are left out.
    assert runs_needing_attention(outsider.pk, PARAMS)["items"] == []
    assert "No run you can see needs attention" in runs_needing_attention(outsider.pk, PARAMS)["summary"]
    without = runs_needing_attention(analyst.pk, {"limit": 10, "workflow_id": work["claims"].pk})
    assert [item["reason"] for item in without["items"]] == ["failed"]
    limited = runs_needing_attention(analyst.pk, {"limit": 1, "workflow_id": None})
    assert len(limited["items"]) == 1 and "there may be more" in limited["summary"]


# --- the week ------------------------------------------------------------------------------------------------


def test_the_weekly_summary_counts_her_own_decisions_and_runs(work, analyst, reviewer, outsider):
    sure = ("amount", "claimant")
    approval_decide(request=work["first"], actor=reviewer, decision="approved", confirmed=sure)
    mine = ApprovalRequest.objects.get(pk=work["mine"].pk)
    approval_decide(request=mine, actor=reviewer, decision="rejected", reason="Not covered.", confirmed=sure)
    for decided in (work["first"], mine):
        drive(Run.objects.get(pk=decided.run_id))
    rita = weekly_summary(reviewer.pk, PARAMS)
    numbers = {item["key"]: item["value"] for item in rita["items"]}
    assert [item["name"] for item in rita["items"]][:2] == ["Items decided", "Items approved"]
    assert numbers["items_decided"] == 2 and numbers["items_approved"] == 1 and numbers["items_rejected"] == 1
    assert numbers["runs_started"] == 0
    assert rita["summary"] == (
        "In the last 7 days you decided 2 items (1 approved, 1 rejected) and started 0 runs "
        "(0 succeeded, 0 failed, 0 still in progress)."
    )
    ana = {item["key"]: item["value"] for item in weekly_summary(analyst.pk, PARAMS)["items"]}
    assert ana["items_decided"] == 0 and ana["runs_started"] == 4
    assert ana["runs_succeeded"] == 2 and ana["runs_in_progress"] == 2
    # The asking workflow's own runs do not count; nor anything older than a week.
    assert {
        i["key"]: i["value"]
        for i in weekly_summary(analyst.pk, {"limit": 10, "workflow_id": work["claims"].pk})["items"]
    }["runs_started"] == 1
    Run.objects.filter(initiator=analyst).update(created_at=timezone.now() - timedelta(days=8))
    assert {i["key"]: i["value"] for i in weekly_summary(analyst.pk, PARAMS)["items"]}["runs_started"] == 0
    assert all(item["value"] == 0 for item in weekly_summary(outsider.pk, PARAMS)["items"])


# --- the gallery's assistant in real agent runs -----------------------------------------------------------------


@pytest.fixture
def mail(settings: Any, team: Team) -> Iterator[PrivateSmtpServer]:
    """The "team-mail" connection the template's draft_reply tool names, to a mail server of the test's own."""
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32"]
    with private_smtp_server() as server:
        connection_create(
            actor=None,
            name="team-mail",
            label="Team mail",
            kind="smtp",
            team=team,
            config={
                "host": server.host,
                "port": server.port,
                "security": "none",
                "from_address": "AIOS assistant <assistant@aios.example>",
            },
        )
        yield server


def _assistant(analyst: User, reviewer: User, team: Team) -> Workflow:
    workflow = workflow_create_from_template(actor=analyst, template=ASSISTANT, team=team)
    draft = workflow_draft_get_or_create(actor=analyst, workflow=workflow)
    assert version_problems(draft) == []
    workflow_version_publish(actor=analyst, version=draft, note="Published from the gallery.")
    assert workflow_can_run(reviewer, workflow)  # as a member of the team
    return workflow


def test_the_template_imports_publishes_and_offers_the_four_tools(analyst, reviewer, team, mail):
    workflow = _assistant(analyst, reviewer, team)
    version = workflow.versions.get(state=WorkflowVersion.State.PUBLISHED)
    template = gallery_template_get(ASSISTANT)
    assert template.name == "Remote-work assistant"
    assert version.input_schema["required"] == ["message"]
    assert version.input_schema["properties"]["history"]["items"]["required"] == ["role", "text"]
    [agent] = version.graph["steps"]
    tools = {tool["name"]: tool for tool in agent["config"]["tools"]}
    assert list(tools) == ["pending_approvals", "runs_needing_attention", "weekly_summary", "draft_reply"]
    assert tools["draft_reply"]["approval"] == "confirm" and tools["draft_reply"]["step"]["type"] == "email.send"
    assert {tools[name]["step"]["config"]["what"] for name in list(tools)[:3]} == set(LOOKUPS)


def test_the_builder_and_the_run_form_show_the_assistant(analyst, reviewer, team, mail):
    from django.test import Client

    workflow = _assistant(analyst, reviewer, team)
    client = Client()
    client.force_login(analyst)
    editor = client.get(reverse("workflows:editor", args=[workflow.slug]))
    assert editor.status_code == 200
    step = client.get(reverse("workflows:editor", args=[workflow.slug]), {"step": "assistant"})
    assert step.status_code == 200 and "pending_approvals" in step.content.decode()
    assert "assistant.lookup" in step.content.decode()  # the tools editor names a kind it has no label for by type
    form = client.get(reverse("runs:create", args=[workflow.slug]))
    assert form.status_code == 200 and "Conversation so far" in form.content.decode()
    # The second sample fills the conversation in one message per line.
    sample = client.get(reverse("runs:create", args=[workflow.slug]), {"sample": 2}).content.decode()
    assert "user: What is waiting for me?\nassistant: Here is what is waiting for you to decide" in sample


def _ask(workflow: Workflow, person: User, message: str, history: list[dict[str, str]] | None = None) -> Run:
    run, _ = run_start(actor=person, workflow=workflow, inputs={"message": message, "history": history or []})
    return drive(run)


def test_what_is_waiting_for_me_answers_with_her_real_items(work, analyst, reviewer, team, mail):
    workflow = _assistant(analyst, reviewer, team)
    run = _ask(workflow, reviewer, "What is waiting for me?")

    assert run.status == Run.Status.SUCCEEDED, run.error
    [call] = StepRun.objects.filter(run=run, parent__isnull=False)
    assert (call.name, call.step_type, call.state) == ("pending_approvals", "assistant.lookup", "succeeded")
    assert [item["request_id"] for item in call.output["items"]] == [work["first"].pk, work["mine"].pk]
    assert call.output["what"] == "my_approvals" and call.output["count"] == 2
    answer = StepRun.objects.get(run=run, step_key="assistant").output["text"]
    assert answer.startswith("Here is what is waiting for you to decide, oldest first.")
    # The same question from the outsider's side of the product: the analyst works no queue.
    assistant_for_ana = _ask(workflow, analyst, "what's waiting for me")
    [ana_call] = StepRun.objects.filter(run=assistant_for_ana, parent__isnull=False)
    assert ana_call.output["items"] == [] and ana_call.output["summary"] == "Nothing is waiting for you to decide."


@pytest.mark.parametrize("confirmed", [True, False])
def test_a_drafted_reply_goes_out_only_when_she_confirms_it(work, analyst, reviewer, team, mail, confirmed):
    workflow = _assistant(analyst, reviewer, team)
    history = [
        {"role": "user", "text": "What is waiting for me?"},
        {"role": "assistant", "text": "Here is what is waiting for you to decide, oldest first."},
    ]
    run = _ask(workflow, reviewer, "Draft a reply to the oldest", history)

    [call] = tool_calls_awaiting_confirmation(run)
    assert call.name == "draft_reply" and call.input["subject"] == "Your claim: next steps"
    assert mail.messages() == []
    tool_call_confirm(step_run=call, actor=reviewer, confirmed=confirmed)
    run = drive(run)

    assert run.status == Run.Status.SUCCEEDED, run.error
    answer = StepRun.objects.get(run=run, step_key="assistant").output["text"]
    if confirmed:
        [message] = mail.messages(to="claimant@example.com")
        assert message["Subject"] == "Your claim: next steps"
        assert answer == "Sent: the reply is on its way."
    else:
        assert mail.messages() == []
        assert answer.startswith("All right, nothing was sent.")


def test_anything_else_gets_what_the_assistant_can_do(analyst, reviewer, team, mail):
    run = _ask(_assistant(analyst, reviewer, team), reviewer, "Hello there")
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert not StepRun.objects.filter(run=run, parent__isnull=False).exists()
    assert "What is waiting for me?" in StepRun.objects.get(run=run, step_key="assistant").output["text"]


# --- the demo script ---------------------------------------------------------------------------------------------


def test_the_demo_rules_parse_and_answer_the_latest_message_only():
    script = Script.load(DEMO_SCRIPT)
    system = "You are the AIOS remote-work assistant of the person you are talking to."

    def reply(text: str) -> Any:
        return choose_reply(
            script,
            route="chat",
            match_text=f"{system}\n{text}",
            tail_source="x",
            constraint=None,
            tool_calls_allowed=True,
        )

    first = reply(
        "Conversation so far:\n(none: this is the first message)\nThe person asks now: What is waiting for me?"
    )
    assert [call.name for call in first.tool_calls] == ["pending_approvals"]
    # An earlier "what is waiting" in the history does not decide the latest turn.
    later = reply(
        "Conversation so far:\n- user: What is waiting for me?\n- assistant: Here it is.\n"
        "The person asks now: Draft a reply to the oldest"
    )
    assert [call.name for call in later.tool_calls] == ["draft_reply"]
    assert later.tool_calls[0].arguments["to"] == "claimant@example.com"
    week = reply("The person asks now: how was my week?")
    assert [call.name for call in week.tool_calls] == ["weekly_summary"]
    runs = reply("The person asks now: which runs need my attention?")
    assert [call.name for call in runs.tool_calls] == ["runs_needing_attention"]
    other = reply("The person asks now: thanks!")
    assert not other.tool_calls and "What is waiting for me?" in other.text


# --- the conversation as a run input ------------------------------------------------------------------------


def test_the_conversation_input_is_checked_entry_by_entry_and_typed_one_message_per_line():
    from apps.workflows.input_schema import input_form_class, input_schema_errors, input_validate

    schema = gallery_template_get(ASSISTANT).documents[-1]["spec"]["input_schema"]
    assert input_schema_errors(schema) == []
    history = [{"role": "user", "text": "What is waiting for me?"}, {"role": "assistant", "text": "Two items."}]
    assert input_validate(schema, {"message": "And now?", "history": history}) == (
        {"message": "And now?", "history": history},
        {},
    )
    for bad, message in [
        ([{"role": "bot", "text": "x"}], "Entry 1: role must be one of user, assistant."),
        ([{"role": "user"}], "Entry 1: text is required."),
        ([{"role": "user", "text": "x", "at": "noon"}], 'Entry 1: "at" is not one of role, text.'),
        ([{"role": "user", "text": 7}], "Entry 1: text must be text."),
        (["user: hi"], "Entry 1: must be an object of role, text."),
        ([{"role": "user", "text": "x"}] * 41, "At most 40 entries."),
    ]:
        assert input_validate(schema, {"message": "hi", "history": bad}) == ({}, {"history": [message]})
    # The Run form: one message per line, the text keeping its own colons.
    form = input_form_class(schema)(data={"message": "hi", "history": "user: Hi: there\nassistant: Hello.\n"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["history"] == [
        {"role": "user", "text": "Hi: there"},
        {"role": "assistant", "text": "Hello."},
    ]
    assert form["history"].value() == "user: Hi: there\nassistant: Hello.\n"
    refused = input_form_class(schema)(data={"message": "hi", "history": "just text"})
    assert not refused.is_valid()
    assert refused.errors["history"] == ['Line 1: write role and text separated by a colon, as in "role: text".']
    # Lists of anything but text records stay refused.
    numbers = {
        "type": "object",
        "properties": {
            "rows": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer"}}}}
        },
    }
    assert input_schema_errors(numbers) == [
        'input schema: field "rows" is a list, and only lists of text, or of records whose fields are all text, '
        "are supported"
    ]


# --- the demo ------------------------------------------------------------------------------------------------


def test_the_demo_publishes_the_assistant_for_the_claims_team_on_a_chat(settings, tmp_path):
    from django.core.management import call_command

    from apps.workflows.models import Trigger

    settings.AIOS_DATA_DIR = tmp_path
    settings.AIOS_DEMO_OUTSIDE_URL = ""
    settings.AIOS_DEMO_ERP_URL = ""
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_HOST_USER = "127.0.0.1", 2525, ""
    call_command("seed_demo")

    workflow = Workflow.objects.get(slug=ASSISTANT)
    assert workflow.team is not None and workflow.team.slug == "claims"
    assert workflow.versions.filter(state=WorkflowVersion.State.PUBLISHED).count() == 1
    [chat] = Trigger.objects.filter(workflow=workflow)
    assert chat.kind == "chat" and chat.enabled and chat.config["title"] == "Remote-work assistant"
    assert workflow_can_run(User.objects.get(username="rita"), workflow)
    call_command("seed_demo")  # again: nothing new
    assert Trigger.objects.filter(workflow__slug=ASSISTANT).count() == 1
