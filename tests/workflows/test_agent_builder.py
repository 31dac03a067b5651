"""The agent step (`llm.agent`) in the builder, through the real pages: its tools editor adds each kind of tool
with settings that read the model's arguments, saves through the draft (so undo works), keeps the arguments in
step with the settings, moves and removes tools, and shows each tool's problems on the tool; publishing refuses
what the step library cannot check (apps/workflows/agent_tools.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from lxml import html

from apps.approvals.services import approval_queue_create
from apps.knowledge.services import collection_create
from apps.steps.registry import step_config_parse
from apps.workflows.agent_tools import agent_config_problems
from apps.workflows.services import (
    version_problems,
    workflow_create,
    workflow_draft_get_or_create,
    workflow_draft_save,
    workflow_draft_undo,
    workflow_version_create,
    workflow_version_publish,
)
from tests.connectors.helpers import make_connection

pytestmark = pytest.mark.django_db

AGENT = {
    "key": "agent",
    "type": "llm.agent",
    "name": "Resolve the ticket",
    "config": {"prompt": "Resolve {{ input.ticket }}", "tools": []},
}
STATEMENT = "SELECT status FROM orders WHERE id = :order_id AND tenant = :tenant"


@pytest.fixture
def workflow(analyst: Any, team: Any) -> Any:
    workflow = workflow_create(actor=analyst, name="Support agent", team=team)
    schema = {"type": "object", "properties": {"ticket": {"type": "string"}}}
    workflow_draft_save(
        actor=analyst, workflow=workflow, graph={"steps": [AGENT]}, input_schema=schema, expected_revision=None
    )
    return workflow


@pytest.fixture
def lookup(analyst: Any, team: Any) -> Any:
    """A published workflow the analyst may run: a workflow tool."""
    child = workflow_create(actor=analyst, name="Order lookup", team=team)
    graph = {"steps": [{"key": "t", "type": "data.transform", "config": {"fields": {"n": "1"}}}]}
    version = workflow_version_create(actor=analyst, workflow=child, graph=graph, input_schema={"type": "object"})
    workflow_version_publish(actor=analyst, version=version)
    return child


def panel(client: Client, workflow: Any) -> Any:
    response = client.get(f"/workflows/{workflow.slug}/edit/?step=agent")
    assert response.status_code == 200
    return html.fromstring(response.content.decode())


def form_data(page: Any) -> dict[str, Any]:
    """What a browser posts for the step form as it stands (checked boxes, selected options, typed text)."""
    [form] = page.xpath('//form[contains(@class, "step-form")]')
    data: dict[str, Any] = {}

    def add(name: str, value: str) -> None:
        if name in data:
            data[name] = [*(data[name] if isinstance(data[name], list) else [data[name]]), value]
        else:
            data[name] = value

    for control in form.xpath(".//input|.//select|.//textarea"):
        name = control.get("name")
        if not name:
            continue
        if control.tag == "input" and control.get("type") in ("submit", "button"):
            continue
        if control.tag == "input" and control.get("type") == "checkbox":
            if control.get("checked") is not None:
                add(name, control.get("value") or "on")
        elif control.tag == "select":
            chosen = control.xpath("./option[@selected]") or control.xpath("./option")
            add(name, chosen[0].get("value") if chosen else "")
        elif control.tag == "textarea":
            add(name, control.text or "")
        else:
            add(name, control.get("value") or "")
    return data


def save(client: Client, workflow: Any, **changes: Any) -> Any:
    """Post the panel's form as shown, with `changes`; the saved agent config."""
    data = {**form_data(panel(client, workflow)), **changes}
    response = client.post(f"/workflows/{workflow.slug}/edit/steps/agent/", data)
    assert response.status_code == 302, response.content.decode()[:500]
    return workflow.versions.get(state="draft").graph["steps"][0]["config"]


def tool_box(page: Any, index: int) -> Any:
    [box] = page.xpath(f'//fieldset[@id="tool-{index}"]')
    return box


def test_each_kind_of_tool_is_added_filled_saved_and_reloaded(analyst, team, workflow, lookup):
    make_connection(team, name="erp", kind="http")
    make_connection(team, name="warehouse", kind="sql")
    make_connection(team, name="mailer", kind="smtp")
    collection_create(actor=analyst, name="handbook", title="Handbook", team=team)
    client = Client()
    client.force_login(analyst)
    page = panel(client, workflow)
    assert page.xpath('//h3[@id="agent-tools-title"]')[0].text == "Tools"
    kinds = [option.get("value") for option in page.xpath('//select[@name="tool_kind"]/option')]
    assert kinds == ["workflow", "knowledge", "http", "sql", "email", "mcp"]
    # The generic rows of the tools list are not shown: the tools editor replaces them.
    assert not page.xpath('//*[@name="config.tools.0.step.type"]')
    assert page.xpath('//label[@for="tool-kind"]')[0].text == "Kind of tool"

    for kind in kinds:
        save(client, workflow, tool_action="add", tool_kind=kind)
    config = workflow.versions.get(state="draft").graph["steps"][0]["config"]
    assert [tool["step"]["type"] for tool in config["tools"]] == [
        "flow.subworkflow",
        "rag.retrieve",
        "http.request",
        "sql.query",
        "email.send",
        "mcp.call",
    ]
    assert [tool["name"] for tool in config["tools"]] == [
        "run_workflow",
        "search_knowledge",
        "call_api",
        "query_database",
        "send_email",
        "mcp_tool",
    ]

    page = panel(client, workflow)
    # The workflow tool offers the published workflows the analyst may run (not the agent's own workflow).
    options = [o.get("value") for o in page.xpath('//select[@name="config.tools.0.step.config.workflow"]/option')]
    assert lookup.slug in options and workflow.slug not in options
    # The knowledge tool offers the collections as checkboxes, the SQL tool its connections.
    assert page.xpath('//input[@name="config.tools.1.step.config.collections" and @value="handbook"]')
    sql_options = [o.get("value") for o in page.xpath('//select[@name="config.tools.3.step.config.connection"]/option')]
    assert "warehouse" in sql_options
    # The SQL tool is read-only: no mode to choose.
    assert not page.xpath('//*[@name="config.tools.3.step.config.mode"]')

    config = save(
        client,
        workflow,
        **{
            "config.tools.0.step.config.workflow": lookup.slug,
            "config.tools.0.description": "Looks an order up by its number.",
            "config.tools.1.step.config.collections": ["handbook"],
            "config.tools.2.step.config.connection": "erp",
            "config.tools.2.step.config.url": "/orders/{{ params.order_id }}",
            "config.tools.3.step.config.connection": "warehouse",
            "config.tools.3.step.config.statement": STATEMENT,
            "config.tools.4.step.config.connection": "mailer",
            "config.tools.4.name": "notify_customer",
        },
    )
    tools = config["tools"]
    assert tools[0]["step"]["config"] == {"workflow": lookup.slug} and tools[0]["parameters"] is None
    assert tools[0]["description"] == "Looks an order up by its number."
    assert tools[1]["step"]["config"]["collections"] == ["handbook"]
    assert tools[1]["step"]["config"]["query"] == "{{ params.query }}"
    assert list(tools[1]["parameters"]["properties"]) == ["query"]
    # Every value the HTTP tool's settings read becomes an argument.
    assert tools[2]["parameters"]["properties"] == {"order_id": {"type": "string"}}
    # The SQL placeholders read the arguments of their names, and are the arguments; the mode stays read.
    assert tools[3]["step"]["config"]["parameters"] == {"order_id": "params.order_id", "tenant": "params.tenant"}
    assert tools[3]["step"]["config"]["mode"] == "read"
    assert tools[3]["parameters"]["required"] == ["order_id", "tenant"]
    assert tools[4]["name"] == "notify_customer" and tools[4]["approval"] == "ask"
    assert set(tools[4]["parameters"]["properties"]) == {"to", "subject", "body"}

    # Reloaded, the panel shows what was saved.
    page = panel(client, workflow)
    [statement] = page.xpath('//*[@name="config.tools.3.step.config.statement"]')
    assert statement.get("value") == STATEMENT
    assert page.xpath('//input[@name="config.tools.2.parameters.0.name"]')[0].get("value") == "order_id"
    assert "notify_customer" in tool_box(page, 4).xpath("./legend")[0].text_content()

    # The person types an argument's type and description in the field table; a save keeps them.
    config = save(
        client,
        workflow,
        **{
            "config.tools.2.parameters.0.type": "integer",
            "config.tools.2.parameters.0.description": "The order number.",
        },
    )
    assert config["tools"][2]["parameters"]["properties"]["order_id"] == {
        "type": "integer",
        "description": "The order number.",
    }


def test_problems_are_shown_on_the_tool_and_block_publishing(analyst, team, workflow):
    approval_queue_create(actor=None, key="support", name="Support leads", team=team, workers=[analyst])
    client = Client()
    client.force_login(analyst)
    save(client, workflow, tool_action="add", tool_kind="sql")
    save(client, workflow, tool_action="add", tool_kind="email")
    save(client, workflow, **{"config.tools.1.name": "query_database"})
    page = panel(client, workflow)
    sql_box, email_box = tool_box(page, 0), tool_box(page, 1)
    # The SQL tool's empty statement is shown under its statement field, inside the tool.
    [statement_field] = sql_box.xpath(
        './/*[@name="config.tools.0.step.config.statement"]/ancestor::div[contains(@class, "field")][1]'
    )
    assert "field--invalid" in statement_field.get("class")
    assert statement_field.xpath('.//p[@class="field-error"]')
    # The email tool asks a person, with no queue chosen; and its name is taken.
    assert "choose the queue that decides the calls" in email_box.text_content()
    assert 'another tool is also called "query_database"' in email_box.text_content()

    draft = workflow.versions.get(state="draft")
    problems = version_problems(draft)
    assert any(p.startswith('step "agent": tools.0.step.config.statement') for p in problems)
    assert 'step "agent": tools.1.approval_queue: choose the queue that decides the calls' in problems
    # Each said once, under the tool's field: not again in the step library's own words.
    assert not [p for p in problems if "tools[" in p]

    config = save(
        client,
        workflow,
        **{
            "config.tools.1.name": "notify_customer",
            "config.tools.1.approval_queue": "support",
            "config.tools.0.step.config.statement": "SELECT 1 WHERE :x = :x",
        },
    )
    assert config["tools"][1]["approval_queue"] == "support"
    page = panel(client, workflow)
    assert "choose the queue" not in tool_box(page, 1).text_content()
    assert "another tool" not in page.text_content()


def test_remove_and_move_are_draft_saves_that_undo_reverts(analyst, workflow):
    client = Client()
    client.force_login(analyst)
    for kind in ("knowledge", "sql", "email"):
        save(client, workflow, tool_action="add", tool_kind=kind)

    def names() -> list[str]:
        tools = workflow.versions.get(state="draft").graph["steps"][0]["config"]["tools"]
        return [tool["name"] for tool in tools]

    assert names() == ["search_knowledge", "query_database", "send_email"]
    page = panel(client, workflow)
    # The first tool cannot move up, the last cannot move down; every button names its tool to screen readers.
    assert not tool_box(page, 0).xpath('.//button[@value="up:0"]')
    assert not tool_box(page, 2).xpath('.//button[@value="down:2"]')
    [remove] = tool_box(page, 1).xpath('.//button[@value="remove:1"]')
    assert " ".join(remove.text_content().split()) == "Remove query_database"

    save(client, workflow, tool_action="down:0")
    assert names() == ["query_database", "search_knowledge", "send_email"]
    save(client, workflow, tool_action="up:2")
    assert names() == ["query_database", "send_email", "search_knowledge"]
    save(client, workflow, tool_action="remove:1")
    assert names() == ["query_database", "search_knowledge"]
    workflow_draft_undo(actor=analyst, workflow=workflow, expected_revision=None)
    assert names() == ["query_database", "send_email", "search_knowledge"]
    # A bad action number changes nothing but what the form says.
    save(client, workflow, tool_action="remove:9")
    assert names() == ["query_database", "send_email", "search_knowledge"]


def test_publish_problems_of_tools(analyst, team, outsider, workflow, lookup):
    from apps.accounts.services import team_create

    elsewhere = team_create(name="Elsewhere", members=[outsider])
    make_connection(elsewhere, name="secret-db", kind="sql")
    tools = [
        {"name": "a", "description": "x", "step": {"type": "llm.generate", "config": {"prompt": "hi"}}},
        {"name": "b", "description": "x", "step": {"type": "flow.subworkflow", "config": {"workflow": "nope"}}},
        {"name": "c", "description": "x", "step": {"type": "flow.subworkflow", "config": {"workflow": lookup.slug}}},
        {
            "name": "d",
            "description": "x",
            "step": {"type": "rag.retrieve", "config": {"collections": ["kb"], "query": "{{ params.q }}"}},
            "parameters": {"type": "array"},
        },
        {
            "name": "e",
            "description": "x",
            "step": {
                "type": "sql.query",
                "config": {"connection": "secret-db", "statement": "SELECT 1", "mode": "write"},
            },
            "parameters": {"type": "object", "properties": {"n": {"type": "nonsense"}}},
            "approval": "ask",
            "approval_queue": "no-such-queue",
        },
        {
            "name": "f",
            "description": "x",
            "step": {"type": "rag.retrieve", "config": {"collections": ["kb"], "query": "q"}},
        },
    ]
    graph = {"steps": [{**AGENT, "config": {**AGENT["config"], "tools": tools}}]}
    problems = agent_config_problems(graph, own_slug=workflow.slug, user=analyst)
    text = "\n".join(problems)
    assert 'tools.0.step.type: "llm.generate" cannot be a tool' in text
    assert 'tools.1.step.config.workflow: there is no workflow "nope"' in text
    assert "tools.2" not in text  # a published workflow the analyst may run, with no parameters: fine
    assert 'tools.3.parameters: must be a JSON Schema of type "object"' in text
    assert "tools.4.step.config.mode: a tool's SQL only reads" in text
    assert "tools.4.parameters: not a valid JSON Schema" in text
    assert "tools.4.approval_queue:" in text and "no-such-queue" in text
    assert "tools.4.step.config:" in text and "secret-db" in text  # the publisher may not use that connection
    assert "tools.5.parameters: give the arguments the model passes" in text
    # Without a person, only what needs none is said (the rights are checked at publish, for the publisher).
    assert not any("secret-db" in p for p in agent_config_problems(graph, own_slug=workflow.slug))
    # A workflow cannot offer itself.
    own = [
        {"name": "me", "description": "x", "step": {"type": "flow.subworkflow", "config": {"workflow": workflow.slug}}}
    ]
    graph = {"steps": [{**AGENT, "config": {**AGENT["config"], "tools": own}}]}
    assert agent_config_problems(graph, own_slug=workflow.slug) == [
        'step "agent": tools.0.step.config.workflow: a workflow cannot offer itself as a tool'
    ]


def test_a_valid_agent_with_tools_publishes(analyst, team, workflow, lookup):
    client = Client()
    client.force_login(analyst)
    save(client, workflow, tool_action="add", tool_kind="workflow")
    save(client, workflow, **{"config.tools.0.step.config.workflow": lookup.slug})
    draft = workflow_draft_get_or_create(actor=analyst, workflow=workflow)
    assert version_problems(draft) == []
    published = workflow_version_publish(actor=analyst, version=draft)
    assert published.graph["steps"][0]["config"]["tools"][0]["step"]["config"]["workflow"] == lookup.slug


def test_the_tool_a_button_added_or_moved_keeps_the_keyboard_focus(analyst, workflow):
    client = Client()
    client.force_login(analyst)
    save(client, workflow, tool_action="add", tool_kind="knowledge")
    data = {**form_data(panel(client, workflow)), "tool_action": "add", "tool_kind": "sql"}
    response = client.post(f"/workflows/{workflow.slug}/edit/steps/agent/", data)
    assert response.status_code == 302 and "tool=1" in response["Location"]
    page = html.fromstring(client.get(response["Location"]).content.decode())
    assert page.xpath("//input[@autofocus]/@name") == ["config.tools.1.name"]
    data = {**form_data(page), "tool_action": "up:1"}
    response = client.post(f"/workflows/{workflow.slug}/edit/steps/agent/", data)
    assert "tool=0" in response["Location"]
    page = html.fromstring(client.get(response["Location"]).content.decode())
    assert page.xpath("//input[@autofocus]/@name") == ["config.tools.0.name"]
    assert page.xpath("//input[@autofocus]/@value") == ["query_database"]
    # A plain save focuses the step's name, as for every step.
    assert panel(client, workflow).xpath("//input[@autofocus]/@name") == ["name"]


def test_an_http_tool_takes_its_arguments_from_the_openapi_operation(analyst, team, workflow):
    from apps.connectors.openapi import openapi_document_load
    from tests.connectors.openapi_erp import ERP_YAML

    connection = make_connection(team, label="ERP API")
    openapi_document_load(actor=None, connection=connection, data=ERP_YAML, source_kind="file", source="erp.yaml")
    client = Client()
    client.force_login(analyst)
    save(client, workflow, tool_action="add", tool_kind="http")
    save(client, workflow, **{"config.tools.0.step.config.connection": "erp"})
    page = panel(client, workflow)
    options = [o.get("value") for o in page.xpath('//select[@name="config.tools.0.step.config.operation"]/option')]
    assert "getPurchaseOrder" in options
    config = save(client, workflow, **{"config.tools.0.step.config.operation": "getPurchaseOrder"})
    tool = config["tools"][0]
    # Each parameter of the operation reads the argument of its name; the arguments carry its types.
    assert tool["step"]["config"]["parameters"]["po_number"] == "{{ params.po_number }}"
    assert "po_number" in tool["parameters"]["properties"] and "po_number" in tool["parameters"]["required"]
    page = panel(client, workflow)
    assert (
        page.xpath('//*[@name="config.tools.0.step.config.parameters.po_number"]')[0].text == "{{ params.po_number }}"
    )
    # A value the person writes instead is kept, and is then no argument the model gives.
    config = save(
        client,
        workflow,
        **{"config.tools.0.step.config.parameters.po_number": "PO-1", "config.tools.0.parameters.count": "0"},
    )
    tool = config["tools"][0]
    assert tool["step"]["config"]["parameters"]["po_number"] == "PO-1"
    assert "po_number" not in tool["parameters"]["properties"]


def test_saving_the_panel_unchanged_changes_no_tool(analyst, workflow, lookup):
    """Tools written elsewhere (an import, the API), of kinds Add does not offer too, survive the form."""
    tools = [
        {
            "name": "lookup",
            "description": "Look a ticket up by its number.",
            "step": {"type": "data.transform", "config": {"fields": {"ticket": "params.ticket", "state": "'open'"}}},
            "parameters": {"type": "object", "properties": {"ticket": {"type": "integer"}}, "required": ["ticket"]},
            "approval": "run",
            "approval_queue": "",
        },
        {
            "name": "post_note",
            "description": "Post a note.",
            "step": {
                "type": "http.request",
                "config": {
                    "method": "POST",
                    "url": "https://erp.example.com/notes",
                    "body": '{"note": "{{ params.note }}"}',
                },
            },
            "parameters": {
                "type": "object",
                "properties": {"note": {"type": "string", "format": "markdown"}},
                "required": ["note"],
            },
            "approval": "run",
            "approval_queue": "",
        },
        {
            "name": "order",
            "description": "Looks an order up.",
            "step": {"type": "flow.subworkflow", "config": {"workflow": lookup.slug}},
            "parameters": None,
            "approval": "run",
            "approval_queue": "",
        },
    ]
    draft = workflow.versions.get(state="draft")
    graph = {"steps": [{**AGENT, "config": {**AGENT["config"], "tools": tools}}]}
    workflow_draft_save(
        actor=analyst, workflow=workflow, graph=graph, input_schema=draft.input_schema, expected_revision=None
    )
    client = Client()
    client.force_login(analyst)
    page = panel(client, workflow)
    assert "data.transform" in tool_box(page, 0).xpath("./legend")[0].text_content()
    # A schema the field table cannot show exactly (a format) is edited as JSON Schema, so it is never rewritten.
    assert tool_box(page, 1).xpath('.//textarea[@name="config.tools.1.parameters"]')
    saved = save(client, workflow)["tools"]

    def without_order(tool: dict) -> dict:
        """The tool as it means: its config as its step type reads it (the form writes defaults out, as for any
        step), its arguments without the field order the table keeps."""
        parameters = tool["parameters"]
        if isinstance(parameters, dict):
            parameters = {k: v for k, v in parameters.items() if k != "x-order"}
        config = step_config_parse(tool["step"]["type"], tool["step"]["config"]).model_dump()
        return {**tool, "parameters": parameters, "step": {**tool["step"], "config": config}}

    assert [without_order(tool) for tool in saved] == [without_order(tool) for tool in tools]


def test_the_step_librarys_words_about_a_tool_are_placed_on_that_tool():
    from apps.workflows.agent_tools import problem_place

    assert problem_place("", 'tools[2] "lookup": parameters: must be an object schema') == (
        "tools.2",
        "parameters: must be an object schema",
    )
    assert problem_place("prompt", "required") == ("prompt", "required")
    assert problem_place("", "a problem of the whole step") == ("", "a problem of the whole step")


def test_every_approval_policy_is_offered_and_a_confirm_tool_keeps_its_policy(analyst, workflow):
    client = Client()
    client.force_login(analyst)
    save(client, workflow, tool_action="add", tool_kind="email")
    config = save(client, workflow, **{"config.tools.0.approval": "confirm"})
    assert config["tools"][0]["approval"] == "confirm"
    page = panel(client, workflow)
    options = page.xpath('//select[@name="config.tools.0.approval"]/option')
    assert [o.get("value") for o in options] == ["run", "ask", "confirm"]
    assert [o.get("value") for o in options if o.get("selected") is not None] == ["confirm"]
    assert save(client, workflow)["tools"][0]["approval"] == "confirm"  # an unchanged save keeps it
