"""The `llm.agent` step's tools in the builder, and what stops them from being published.

A tool is a step of the library the model may call (apps/steps/agent_config.py). The builder edits each one
with its own step type's generated form, under "config.tools.<n>.step.config", so an HTTP tool picks its
connection and OpenAPI operation exactly as an `http.request` step does, and publish problems of a tool's
config land under the tool's own field. The tool's arguments (`parameters`, a JSON Schema) are kept in step
with its settings: every `params.<name>` a setting reads becomes an argument (typed from the OpenAPI operation
where there is one); the person may add arguments, set types and descriptions in the field table.

`agent_config_problems` is what the step library cannot check (it sits below the workflows and the database):
tool step types, each tool's own config, its argument schema, the approval queue, the workflow it runs.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, get_args

from django.http import QueryDict
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from sqlglot.errors import TokenError

from apps.core.exceptions import ApplicationError
from apps.steps.agent_config import TOOL_STEP_TYPES, AgentTool
from apps.steps.registry import step_config_errors, step_type_find
from apps.workflows.config_form import (
    FormField,
    SchemaRow,
    _fields,
    _read,
    schema_rows,
    schema_table_fits,
)
from apps.workflows.input_schema import ORDER_KEY, property_order

AGENT_STEP_TYPE = "llm.agent"
TOOLS_FIELD = "config.tools"
# What "Add tool" offers: kind → (label, step type). data.transform tools (from an import or the API) are
# edited with their step type's form like any other, but are not offered here.
TOOL_KINDS: dict[str, tuple[str, str]] = {
    "workflow": ("Published workflow", "flow.subworkflow"),
    "knowledge": ("Knowledge search", "rag.retrieve"),
    "http": ("HTTP operation", "http.request"),
    "sql": ("SQL query (read-only)", "sql.query"),
    "email": ("Send email", "email.send"),
    "mcp": ("MCP server tool", "mcp.call"),
}
KIND_OF_STEP_TYPE = {step_type: kind for kind, (_, step_type) in TOOL_KINDS.items()}
APPROVAL_LABELS = {
    "run": "Run it at once",
    "ask": "Ask a person first, in the inbox",
    "confirm": "Ask the person who started the run to confirm it",
}
# Settings a kind fixes: a tool's SQL is read-only; a workflow tool runs the latest published version.
FIXED: dict[str, dict[str, Any]] = {"sql.query": {"mode": "read"}}
HIDDEN = {"flow.subworkflow": {"version"}, "sql.query": {"mode", "delivery"}}

_PARAM_REFERENCE = re.compile(r"""\bparams(?:\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*["']([^"'\]]+)["']\s*\])""")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _string_schema(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, ORDER_KEY: list(properties)}


def tool_new(kind: str, taken: set[str]) -> dict[str, Any]:
    """A new tool of `kind` with a free name and settings that read their values from the model's arguments."""
    label, step_type = TOOL_KINDS[kind]
    base = {
        "workflow": "run_workflow",
        "knowledge": "search_knowledge",
        "http": "call_api",
        "sql": "query_database",
        "email": "send_email",
        "mcp": "mcp_tool",
    }[kind]
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}_{number}"
    config: dict[str, Any]
    parameters: dict[str, Any] | None = _object_schema({}, [])
    description = f"{label}: say what it does and when the agent should use it."
    if kind == "workflow":
        config, parameters = {"workflow": ""}, None
    elif kind == "knowledge":
        config = {"collections": [], "query": "{{ params.query }}"}
        parameters = _object_schema({"query": _string_schema("What to search for, in words.")}, ["query"])
        description = "Searches the knowledge base and returns the passages that answer the query."
    elif kind == "http":
        config = {"connection": "", "method": "GET", "url": ""}
    elif kind == "sql":
        config = {"connection": "", "statement": "", "parameters": {}, "mode": "read"}
    elif kind == "email":
        config = {
            "connection": "",
            "to": "{{ params.to }}",
            "subject": "{{ params.subject }}",
            "body_text": "{{ params.body }}",
        }
        parameters = _object_schema(
            {
                "to": _string_schema("The recipient's email address."),
                "subject": _string_schema("The subject line."),
                "body": _string_schema("The message, as plain text."),
            },
            ["to", "subject", "body"],
        )
        description = "Sends an email."
    else:
        config = {"connection": "", "tool": ""}
    return {
        "name": name,
        "description": description,
        "step": {"type": step_type, "config": config},
        "parameters": parameters,
        "approval": "ask" if kind == "email" else "run",
        "approval_queue": "",
    }


# --- the builder's tool editor ----------------------------------------------------------------------------------


@dataclass
class ToolForm:
    """One tool in the agent step's panel: its own fields, its step type's settings and its arguments."""

    index: int
    kind: str
    kind_label: str
    step_type: str
    name: FormField
    description: FormField
    settings: list[FormField]
    parameters: FormField | None  # the field table (None: a workflow tool, whose input schema is used)
    approval: FormField
    approval_queue: FormField
    note: str = ""  # where the arguments come from, in words
    first: bool = False
    last: bool = False
    focused: bool = False  # its name field takes the keyboard's focus (the tool a button just added or moved)
    errors: list[str] = field(default_factory=list)

    @property
    def html_id(self) -> str:
        return f"tool-{self.index}"

    @property
    def title(self) -> str:
        return str(self.name.value or f"Tool {self.index + 1}")

    def all_fields(self) -> list[FormField]:
        """Every control of the tool, for placing problems and reading the post."""
        items = [self.name, self.description, *self.settings, self.approval, self.approval_queue]
        return [*items, self.parameters] if self.parameters is not None else items


def _workflow_field(path: str, current: Any, choices: list[tuple[str, str]]) -> FormField:
    known = {value for value, _ in choices}
    missing = [] if not current or current in known else [(str(current), f"{current} (missing)")]
    return FormField(
        name=path,
        label="Workflow",
        widget="select",
        value=current or "",
        required=True,
        help="A published workflow you may run. The model's arguments are its input; it runs its latest "
        "published version.",
        choices=[("", "Choose a workflow"), *choices, *missing],
    )


def _mcp_tools(user: Any, connection: str) -> list[Any] | None:
    """The tools the MCP server of `connection` lists for `user` (name, description, input_schema), or None
    when they cannot be listed (no such module yet, a connection she may not use, a server that is down)."""
    if not connection or user is None:
        return None
    try:
        mcp = importlib.import_module("apps.connectors.mcp")
    except ImportError:
        return None
    try:
        return list(mcp.mcp_tools_for_user(user, connection))
    except ApplicationError:  # McpUnavailable: a connection she may not use, a server that is down
        return None


def _mcp_tool_field(path: str, connection: str, current: Any, user: Any) -> FormField:
    """The MCP tool's name: a choice among the server's tools where they can be listed, else typed."""
    tools = _mcp_tools(user, connection)
    help_text = "The name of the server's tool."
    if not tools:
        return FormField(
            name=path,
            label="Server tool",
            widget="text",
            value=current or "",
            required=True,
            help=help_text + " Its tools could not be listed: type the name.",
        )
    listed = [(str(_attr(item, "name")), str(_attr(item, "name"))) for item in tools]
    missing = [] if not current or current in {v for v, _ in listed} else [(str(current), f"{current} (missing)")]
    return FormField(
        name=path,
        label="Server tool",
        widget="select",
        value=current or "",
        required=True,
        help=help_text + " Its arguments become the tool's arguments when the table below is empty.",
        choices=[("", "Choose a tool"), *listed, *missing],
    )


def _attr(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _settings(
    tool: dict[str, Any],
    index: int,
    choices: dict[str, list[tuple[str, str]]],
    user: Any,
    workflow_choices: list[tuple[str, str]],
) -> list[FormField]:
    step = tool.get("step") if isinstance(tool.get("step"), dict) else {}
    assert isinstance(step, dict)
    step_type_slug = str(step.get("type") or "")
    config = step.get("config") if isinstance(step.get("config"), dict) else {}
    assert isinstance(config, dict)
    path = f"{TOOLS_FIELD}.{index}.step.config"
    step_type = step_type_find(step_type_slug)
    if step_type_slug == "flow.subworkflow":
        return [_workflow_field(f"{path}.workflow", config.get("workflow"), workflow_choices)]
    if step_type is None:
        if step_type_slug != "mcp.call":
            return []
        connections = choices.get("connection-mcp")
        connection_field = FormField(
            name=f"{path}.connection",
            label="Connection",
            widget="select" if connections is not None else "text",
            value=config.get("connection") or "",
            required=True,
            help="The MCP server: one of its connections.",
            choices=[("", "Choose a connection"), *(connections or [])],
        )
        return [
            connection_field,
            _mcp_tool_field(f"{path}.tool", str(config.get("connection") or ""), config.get("tool"), user),
        ]
    schema = step_type.config_schema()
    settings = [
        item
        for item in _fields(schema, config, path, schema.get("$defs", {}), choices)
        if not item.advanced and item.name.rsplit(".", 1)[1] not in HIDDEN.get(step_type_slug, set())
    ]
    if step_type_slug == "mcp.call":
        for position, item in enumerate(settings):
            if item.name.endswith(".tool") and item.widget == "text":
                settings[position] = _mcp_tool_field(item.name, str(config.get("connection") or ""), item.value, user)
    return settings


def _parameters_field(tool: dict[str, Any], index: int) -> FormField:
    current = tool.get("parameters")
    form_field = FormField(
        name=f"{TOOLS_FIELD}.{index}.parameters",
        label="Arguments the model gives",
        widget="schema_table",
        help="Each value the tool's settings read as params.<name> is listed here; say what each one is, for the "
        "model.",
    )
    if not schema_table_fits(current):
        form_field.widget, form_field.value = "json", _json(current)
        form_field.help = "These arguments use features the field table cannot show, so they are edited as JSON Schema."
        return form_field
    rows = schema_rows(current)
    form_field.value = [*rows, SchemaRow()]
    return form_field


def _approval_choices(current: Any) -> list[tuple[str, str]]:
    """The policies the config allows (in its order), and a value it does not know kept as it is."""
    values = [str(value) for value in get_args(AgentTool.model_fields["approval"].annotation)]
    choices = [(value, APPROVAL_LABELS.get(value, value)) for value in values]
    if current and current not in values:
        choices.append((str(current), f"{current} (unknown)"))
    return choices


def _json(value: Any) -> str:
    import json

    return "" if value is None else json.dumps(value, indent=2)


def tool_forms(
    config: dict[str, Any],
    choices: dict[str, list[tuple[str, str]]],
    *,
    user: Any = None,
    workflow_choices: list[tuple[str, str]] | None = None,
) -> list[ToolForm]:
    """The panel's editor of every tool of an agent step's `config`."""
    tools = config.get("tools") if isinstance(config.get("tools"), list) else []
    assert isinstance(tools, list)
    forms = []
    queues = choices.get("approval-queue", [])
    for index, tool in enumerate(tools):
        tool = tool if isinstance(tool, dict) else {}
        step = tool.get("step") if isinstance(tool.get("step"), dict) else {}
        step_type = str(step.get("type") or "") if isinstance(step, dict) else ""
        kind = KIND_OF_STEP_TYPE.get(step_type, "other")
        prefix = f"{TOOLS_FIELD}.{index}"
        queue = str(tool.get("approval_queue") or "")
        missing_queue = [] if not queue or queue in {v for v, _ in queues} else [(queue, f"{queue} (missing)")]
        form = ToolForm(
            index=index,
            kind=kind,
            kind_label=TOOL_KINDS[kind][0] if kind in TOOL_KINDS else step_type or "Unknown",
            step_type=step_type,
            name=FormField(
                name=f"{prefix}.name",
                label="Tool name",
                widget="text",
                value=tool.get("name", ""),
                required=True,
                help="What the model calls it: letters, digits, _ and -.",
            ),
            description=FormField(
                name=f"{prefix}.description",
                label="What it does",
                widget="text",
                value=tool.get("description", ""),
                required=True,
                help="For the model: what the tool does and when to use it.",
            ),
            settings=_settings(tool, index, choices, user, workflow_choices or []),
            parameters=None if step_type == "flow.subworkflow" else _parameters_field(tool, index),
            approval=FormField(
                name=f"{prefix}.approval",
                label="Each call",
                widget="select",
                value=tool.get("approval", "run"),
                choices=_approval_choices(tool.get("approval")),
            ),
            approval_queue=FormField(
                name=f"{prefix}.approval_queue",
                label="Approval queue",
                widget="select",
                value=queue,
                help="Used when each call is asked first: its reviewers decide in the inbox.",
                choices=[("", "—"), *queues, *missing_queue],
            ),
            note="The workflow's input fields are the arguments." if step_type == "flow.subworkflow" else "",
            first=index == 0,
            last=index == len(tools) - 1,
        )
        forms.append(form)
    return forms


_LIBRARY_TOOL_MESSAGE = re.compile(r'^tools\[(\d+)\] "[^"]*": (.*)$', re.DOTALL)


def problem_place(field: str, message: str) -> tuple[str, str]:
    """Where a step problem goes in the panel: the step library's words about a tool ('tools[1] "lookup": ...')
    go on that tool; everything else where it says."""
    match = _LIBRARY_TOOL_MESSAGE.match(message) if not field else None
    return (f"tools.{match[1]}", match[2]) if match else (field, message)


def tool_fields_for_errors(forms: list[ToolForm]) -> list[FormField]:
    """One group per tool holding all its controls, so `attach_errors` places "tools.<n>..." problems; a
    problem about the tool as a whole lands on the group."""
    groups = []
    for form in forms:
        group = FormField(
            name=f"{TOOLS_FIELD}.{form.index}", label=form.title, widget="group", children=form.all_fields()
        )
        form.errors = group.errors  # the same list: what lands on the group is shown on the tool
        groups.append(group)
    return groups


def _references(value: Any) -> list[str]:
    """The argument names a setting reads (`params.x`, `params["x-y"]`), in order of first use."""
    found: list[str] = []
    if isinstance(value, str):
        found += [match[0] or match[1] for match in _PARAM_REFERENCE.findall(value)]
    elif isinstance(value, dict):
        for item in value.values():
            found += _references(item)
    elif isinstance(value, list):
        for item in value:
            found += _references(item)
    return list(dict.fromkeys(found))


def _operation_hints(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """For an HTTP tool with an OpenAPI operation: each argument name its templates fill, with the operation's
    type and description for it; and the empty parameters and body fields get a template reading an argument."""
    from apps.connectors.openapi import operation_get

    connection, operation_id = str(config.get("connection") or ""), str(config.get("operation") or "")
    operation = operation_get(connection, operation_id) if connection and operation_id else None
    if operation is None:
        return {}
    hints: dict[str, dict[str, Any]] = {}
    parameters = dict(config.get("parameters") or {})
    for parameter in operation.parameters:
        name = parameter.name if _IDENTIFIER.match(parameter.name) else re.sub(r"\W", "_", parameter.name)
        if not str(parameters.get(parameter.key, "")).strip():
            parameters[parameter.key] = f"{{{{ params.{name} }}}}"
        hints[name] = {**parameter.schema, "description": parameter.description, "required": parameter.required}
    body_fields = dict(config.get("body_fields") or {})
    for item in operation.body.fields() if operation.body is not None else []:
        name = item.name if _IDENTIFIER.match(item.name) else re.sub(r"\W", "_", item.name)
        structured = item.schema.get("type") in ("object", "array")
        if not str(body_fields.get(item.name, "")).strip():
            body_fields[item.name] = f"{{{{ params.{name}{' | tojson' if structured else ''} }}}}"
        hints[name] = {**item.schema, "description": item.description, "required": item.required}
    config["parameters"], config["body_fields"] = parameters, body_fields
    return hints


_TABLE_TYPES = {"string", "number", "integer", "boolean", "array"}


def _arguments(step_type: str, config: dict[str, Any], parameters: Any) -> Any:
    """The tool's argument schema after a save: the person's table, plus every argument its settings read
    that the table lacks (typed from the OpenAPI operation where known). Nothing the person wrote is dropped;
    an argument no setting reads is reported at publish instead."""
    if step_type == "flow.subworkflow":
        return None
    hints = _operation_hints(config) if step_type == "http.request" else {}
    schema = parameters if isinstance(parameters, dict) else None
    if parameters is not None and schema is None:
        return parameters  # JSON that is not an object: kept as typed, reported at publish
    schema = dict(schema or {"type": "object", "properties": {}, "required": []})
    properties = dict(schema.get("properties") or {}) if isinstance(schema.get("properties"), dict) else {}
    required = list(schema.get("required") or []) if isinstance(schema.get("required"), list) else []
    for name in _references(config):
        if name in properties:
            continue
        hint = hints.get(name, {})
        kind = hint.get("type") if hint.get("type") in _TABLE_TYPES else "string"
        spec: dict[str, Any] = {"type": kind}
        if kind == "array":
            spec["items"] = {"type": "string"}
        if hint.get("description"):
            spec["description"] = str(hint["description"])
        properties[name] = spec
        if hint.get("required", True):
            required.append(name)
    # The order as listed: jsonb would otherwise sort the fields by name length (see property_order).
    schema.update(type="object", properties=properties, required=required)
    schema[ORDER_KEY] = [name for name in property_order(schema) if name in properties]
    return schema


def _has_properties(schema: Any) -> bool:
    return isinstance(schema, dict) and bool(schema.get("properties"))


def tools_from_post(
    forms: list[ToolForm], data: QueryDict, current: list[Any], *, user: Any = None
) -> list[dict[str, Any]]:
    """The tools the posted panel describes, over `current` (what the form does not show stays), then the
    tool action of the button that was pressed (add, remove, move up or down)."""
    from apps.workflows.config_form import config_from_post

    tools: list[dict[str, Any]] = []
    for form in forms:
        tool = dict(current[form.index]) if form.index < len(current) and isinstance(current[form.index], dict) else {}
        for item in (form.name, form.description, form.approval, form.approval_queue):
            present, value = _read(item, data)
            if present:
                tool[item.name.rsplit(".", 1)[1]] = value if value is not None else ""
        step = dict(tool.get("step") or {}) if isinstance(tool.get("step"), dict) else {}
        config = dict(step.get("config") or {}) if isinstance(step.get("config"), dict) else {}
        config = config_from_post(form.settings, data, config)
        config.update(FIXED.get(form.step_type, {}))
        if form.step_type == "sql.query":
            config["parameters"] = _sql_parameters(config)
        parameters = tool.get("parameters")
        if form.parameters is not None:
            present, value = _read(form.parameters, data)
            if present:
                parameters = value
        if form.step_type == "mcp.call" and not _has_properties(parameters):
            listed = _mcp_tools(user, str(config.get("connection") or ""))
            chosen = next((item for item in listed or [] if _attr(item, "name") == config.get("tool")), None)
            if chosen is not None and isinstance(_attr(chosen, "input_schema"), dict):
                parameters = _attr(chosen, "input_schema")
        step["config"] = config
        tool["step"] = step
        tool["parameters"] = _arguments(form.step_type, config, parameters)
        tool.setdefault("approval", "run")
        tools.append(tool)
    return tool_action(tools, data.get("tool_action", ""), data.get("tool_kind", ""))


def _sql_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Each placeholder of the statement reads the argument of its name unless the person wrote otherwise."""
    from apps.connectors.sql import DIALECTS, statement_placeholders

    parameters = dict(config.get("parameters") or {}) if isinstance(config.get("parameters"), dict) else {}
    statement = str(config.get("statement") or "")
    names: list[str] = []
    for dialect in DIALECTS:
        try:
            names = statement_placeholders(statement, dialect)
        except TokenError:  # a statement that does not tokenize is reported by the step's own check
            names = []
        if names:
            break
    for name in names:
        if not str(parameters.get(name, "")).strip():
            parameters[name] = f"params.{name}"
    return parameters


def tool_action(tools: list[dict[str, Any]], action: str, kind: str) -> list[dict[str, Any]]:
    """`tools` after "add" (a tool of `kind`), "remove:<n>", "up:<n>" or "down:<n>"; unchanged otherwise."""
    verb, _, argument = action.partition(":")
    if verb == "add" and kind in TOOL_KINDS:
        return [*tools, tool_new(kind, {str(tool.get("name")) for tool in tools})]
    if not argument.isdigit() or int(argument) >= len(tools):
        return tools
    index = int(argument)
    tools = list(tools)
    if verb == "remove":
        del tools[index]
    elif verb == "up" and index > 0:
        tools[index - 1], tools[index] = tools[index], tools[index - 1]
    elif verb == "down" and index < len(tools) - 1:
        tools[index + 1], tools[index] = tools[index], tools[index + 1]
    return tools


def tool_focus(action: str, count: int) -> int | None:
    """The tool that keeps the focus after `action` (the one added or moved), given the tools' `count` after it."""
    verb, _, argument = action.partition(":")
    if verb == "add":
        return count - 1 if count else None
    if not argument.isdigit():
        return None
    index = int(argument) + {"up": -1, "down": 1}.get(verb, 0)
    return index if verb in ("up", "down") and 0 <= index < count else None


def tool_action_message(action: str, kind: str) -> str:
    verb = action.partition(":")[0]
    return {
        "add": f"{TOOL_KINDS.get(kind, ('Tool',))[0]} tool added: name it and say what it does.",
        "remove": "Tool removed (Undo brings it back).",
        "up": "Tool moved up.",
        "down": "Tool moved down.",
    }.get(verb, "")


def workflow_tool_choices(user: Any, *, own_slug: str) -> list[tuple[str, str]]:
    """The workflows `user` may offer as a tool: those she may run that have a published version."""
    from apps.workflows.selectors import workflow_can_run, workflow_list_for_user

    if user is None:
        return []
    return [
        (workflow.slug, f"{workflow.name} ({workflow.slug})")
        for workflow in workflow_list_for_user(user)
        if getattr(workflow, "published_versions", None)
        and workflow.slug != own_slug
        and workflow_can_run(user, workflow)
    ]


# --- publish-time problems ------------------------------------------------------------------------------------


def _config_problem(index: int, message: str) -> str:
    """A tool config problem ("statement: ...") under that setting of the tool, else on its step."""
    head, separator, rest = message.partition(": ")
    if separator and re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*$", head) and head != "config":
        return f"tools.{index}.step.config.{head}: {rest}"
    return f"tools.{index}.step.config: {message}"


def _parameters_problems(index: int, step_type: str, parameters: Any) -> list[str]:
    where = f"tools.{index}.parameters"
    if parameters in (None, {}):
        if step_type == "flow.subworkflow":
            return []
        return [f"{where}: give the arguments the model passes (at least an empty list of fields)"]
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        return [f'{where}: must be a JSON Schema of type "object"']
    try:
        Draft202012Validator.check_schema({k: v for k, v in parameters.items() if k != ORDER_KEY})
    except SchemaError as error:
        return [f"{where}: not a valid JSON Schema ({error.message})"]
    return []


def _runnable_workflow_problem(slug: str, user: Any, own_slug: str) -> str | None:
    from apps.workflows.models import Workflow, WorkflowVersion
    from apps.workflows.selectors import workflow_can_run

    if not slug:
        return None  # reported by the step type's own validation
    if slug == own_slug:
        return "a workflow cannot offer itself as a tool"
    workflow = Workflow.objects.filter(slug=slug).first()
    if workflow is None:
        return f'there is no workflow "{slug}"'
    if not WorkflowVersion.objects.filter(workflow=workflow, state=WorkflowVersion.State.PUBLISHED).exists():
        return f'the workflow "{slug}" has no published version'
    if user is not None and not workflow_can_run(user, workflow):
        return f'you may not run the workflow "{slug}"'
    return None


def agent_config_problems(graph: dict[str, Any], *, own_slug: str = "", user: Any = None) -> list[str]:
    """Every problem of the agent steps' tools in `graph`, each naming its step and the tool's field: names
    unique, step types that may be tools, each tool's config valid for its type, its arguments an object JSON
    Schema (empty only for a workflow tool), an existing approval queue when calls are asked, and (with
    `user`, the publisher) the workflows, connections and collections the tools name usable by that person."""
    from apps.steps.base import QUEUE_CHECKS

    problems: list[str] = []
    for step in graph.get("steps", []) if isinstance(graph.get("steps"), list) else []:
        if (
            not isinstance(step, dict)
            or step.get("type") != AGENT_STEP_TYPE
            or not isinstance(step.get("config"), dict)
        ):
            continue
        tools = step["config"].get("tools")
        if not isinstance(tools, list):
            continue  # reported by the step type's own validation
        key = str(step.get("key"))
        seen: set[str] = set()
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                continue
            found: list[str] = []
            name = str(tool.get("name") or "")
            if name and name in seen:
                found.append(f'tools.{index}.name: another tool is also called "{name}"')
            seen.add(name)
            tool_step = tool.get("step") if isinstance(tool.get("step"), dict) else {}
            assert isinstance(tool_step, dict)
            step_type = str(tool_step.get("type") or "")
            config = tool_step.get("config") if isinstance(tool_step.get("config"), dict) else {}
            assert isinstance(config, dict)
            if step_type not in TOOL_STEP_TYPES:
                found.append(
                    f'tools.{index}.step.type: "{step_type}" cannot be a tool (one of {", ".join(TOOL_STEP_TYPES)})'
                )
            else:
                found += [_config_problem(index, message) for message in step_config_errors(step_type, config)]
                if step_type == "sql.query" and config.get("mode", "read") != "read":
                    found.append(f"tools.{index}.step.config.mode: a tool's SQL only reads")
                if step_type == "flow.subworkflow":
                    problem = _runnable_workflow_problem(str(config.get("workflow") or ""), user, own_slug)
                    if problem:
                        found.append(f"tools.{index}.step.config.workflow: {problem}")
            found += _parameters_problems(index, step_type, tool.get("parameters"))
            if tool.get("approval") == "ask":
                queue = str(tool.get("approval_queue") or "")
                if not queue:
                    found.append(f"tools.{index}.approval_queue: choose the queue that decides the calls")
                else:
                    found += [f"tools.{index}.approval_queue: {p}" for check in QUEUE_CHECKS if (p := check(queue))]
            if user is not None and step_type in TOOL_STEP_TYPES:
                found += _uses_problems(index, step_type, config, user)
            problems += [f'step "{key}": {message}' for message in found]
    return problems


def _uses_problems(index: int, step_type: str, config: dict[str, Any], user: Any) -> list[str]:
    """The connections and collections a tool's (valid) config names that `user` may not use."""
    from apps.workflows.uses import uses_problems

    inner = uses_problems(user, {"steps": [{"key": "tool", "type": step_type, "config": config}]})
    return [f"tools.{index}.step.config: {problem.partition(': ')[2]}" for problem in inner]
