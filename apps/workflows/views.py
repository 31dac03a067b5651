"""Workflow pages: the list, creating a workflow, its page and settings, the builder, and versions.

Every builder control is a plain form or link that works without JavaScript (post, redirect, render);
htmx swaps only the builder's region when present, and our small static script adds the data picker's
insertion and drag and drop. The builder always renders from the saved draft, so a reload shows the truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts.models import Team
from apps.connectors.selectors import connection_choices_for
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.inference.selectors import endpoint_names_for_steps
from apps.knowledge.selectors import collection_choices_for
from apps.steps.expressions import cel_check, template_check
from apps.steps.registry import step_type_find, step_types
from apps.workflows import agent_tools, blocks
from apps.workflows.blocks import NotBlockStructured
from apps.workflows.config_form import SCHEMA_TYPES, attach_errors, config_from_post, form_fields
from apps.workflows.diagram import diagram_for_graph, diagram_outline
from apps.workflows.diff import version_diff
from apps.workflows.editor import draft_edit
from apps.workflows.exchange import (
    MAX_DOCUMENT_BYTES,
    ImportProblems,
    document_text_from_bytes,
    problem_text,
    workflow_export,
    workflow_import,
)
from apps.workflows.graph import RetryPolicy
from apps.workflows.input_schema import input_form_class, input_validate
from apps.workflows.models import Workflow, WorkflowVersion
from apps.workflows.picker import references_for_step, references_in
from apps.workflows.run_form import KINDS, InputRow, rows_from_schema, sample_added, sample_removed, schema_from_rows
from apps.workflows.selectors import (
    Problem,
    pinned_outputs_for,
    recent_runs_for_testing,
    sample_data_for,
    team_list_assignable,
    workflow_can_edit,
    workflow_can_run,
    workflow_draft_for,
    workflow_get_for_user,
    workflow_list_filtered,
    workflow_list_for_user,
    workflow_version_get,
    workflow_version_list,
    workflow_version_problems,
    workflow_version_published_latest,
)
from apps.workflows.services import (
    DraftConflict,
    PublishGated,
    pinned_output_clear,
    pinned_output_set,
    workflow_archive,
    workflow_create,
    workflow_draft_get_or_create,
    workflow_draft_save,
    workflow_publish_route,
    workflow_update,
    workflow_version_publish,
    workflow_version_restore_as_draft,
)

PAGE_SIZE = 20
CATEGORIES = ("AI", "Data", "Logic", "Flow", "People", "Connectors")


# --- list, create, settings ------------------------------------------------------------------------------------


@login_required
def workflow_list(request: HttpRequest) -> HttpResponse:
    """The workflows the user may see: search by name or description, filter by team, owner and state, paged."""
    query = request.GET.get("q", "").strip()
    team = request.GET.get("team", "")
    owner = request.GET.get("owner", "")
    state = request.GET.get("state", "active")
    workflows = workflow_list_filtered(request.user, q=query, team=team, owner=owner, state=state)
    page = Paginator(workflows, PAGE_SIZE).get_page(request.GET.get("page"))
    filters = {"q": query, "team": team, "owner": owner, "state": state}
    return render(
        request,
        "workflows/workflow_list.html",
        {
            "page": page,
            "workflows": page.object_list,
            "filters": filters,
            "filter_query": urlencode({k: v for k, v in filters.items() if v}),
            "teams": Team.objects.filter(workflows__in=workflow_list_for_user(request.user))
            .distinct()
            .order_by("name"),
            "can_create": request.user.has_perm("workflows.add_workflow"),
        },
    )


def _decimal(value: str, field: str) -> Decimal:
    try:
        return Decimal(value or "0")
    except InvalidOperation:
        raise ValidationFailed(
            "Check the highlighted field.", fields={field: ["Enter a number of minutes, e.g. 12.5."]}
        ) from None


@login_required
def workflow_create_view(request: HttpRequest) -> HttpResponse:
    """New workflow: blank, from a template of the gallery, or from an exported file."""
    if not request.user.has_perm("workflows.add_workflow"):
        raise PermissionDenied("Only analysts create workflows.")
    from apps.workflows.gallery import gallery_templates, workflow_create_from_template

    teams = team_list_assignable(request.user)
    errors: dict[str, list[str]] = {}
    problems: list[dict[str, Any]] = []
    values = {"name": "", "description": "", "team": "", "baseline": "", "template": request.GET.get("template", "")}
    if request.method == "POST":
        values.update(
            {key: request.POST.get(key, "").strip() for key in ("name", "description", "team", "baseline", "template")}
        )
        team = teams.filter(slug=values["team"]).first() if values["team"] else None
        try:
            if values["team"] and team is None:
                raise ValidationFailed("Check the highlighted field.", fields={"team": ["Choose one of your teams."]})
            baseline = _decimal(values["baseline"], "baseline")
            upload = request.FILES.get("file")
            if upload is not None:
                result = workflow_import(
                    actor=request.user,  # type: ignore[arg-type]
                    text=document_text_from_bytes(upload.read(MAX_DOCUMENT_BYTES + 1)),
                    team=team,
                    create_only=True,  # an existing workflow's draft is replaced only from its own page
                )
                assert result.workflow is not None
                messages.success(request, f'Imported "{result.workflow.name}" as a draft.')
                return redirect("workflows:editor", slug=result.workflow.slug)
            if values["template"]:
                workflow = workflow_create_from_template(
                    actor=request.user,  # type: ignore[arg-type]
                    template=values["template"],
                    name=values["name"],
                    team=team,
                )
            else:
                workflow = workflow_create(
                    actor=request.user,  # type: ignore[arg-type]
                    name=values["name"],
                    description=values["description"],
                    team=team,
                    baseline_minutes_per_case=baseline,
                )
        except ValidationFailed as refusal:
            errors = refusal.fields
        except ApplicationError as refusal:
            errors = {"__all__": [refusal.message]}
            problems = list(refusal.extra.get("problems", []))
        else:
            return redirect("workflows:editor", slug=workflow.slug)
    return render(
        request,
        "workflows/workflow_create.html",
        {
            "teams": teams,
            "errors": errors,
            "form_errors": errors.get("__all__", []),
            "values": values,
            "templates": gallery_templates(),
            "problems": problems,
        },
        status=400 if errors else 200,
    )


def _editable(request: HttpRequest, slug: str) -> Workflow:
    workflow = workflow_get_for_user(request.user, slug=slug)
    if not workflow_can_edit(request.user, workflow):
        raise PermissionDenied("You may view this workflow but not change it.")
    return workflow


@login_required
def workflow_settings(request: HttpRequest, slug: str) -> HttpResponse:
    """Rename, describe, team, baseline minutes; archive and restore."""
    workflow = _editable(request, slug)
    teams = team_list_assignable(request.user)
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        action = request.POST.get("action", "save")
        try:
            if action in ("archive", "restore"):
                workflow_archive(actor=request.user, workflow=workflow, archived=action == "archive")  # type: ignore[arg-type]
                messages.success(request, "Archived: it no longer starts runs." if action == "archive" else "Restored.")
                return redirect("workflows:detail", slug=workflow.slug)
            team_slug = request.POST.get("team", "")
            team = teams.filter(slug=team_slug).first() if team_slug else None
            if team_slug and team is None:
                raise ValidationFailed("Check the highlighted field.", fields={"team": ["Choose one of your teams."]})
            workflow_update(
                actor=request.user,  # type: ignore[arg-type]
                workflow=workflow,
                name=request.POST.get("name", ""),
                description=request.POST.get("description", ""),
                team=team,
                baseline_minutes_per_case=_decimal(request.POST.get("baseline", ""), "baseline"),
            )
        except ValidationFailed as refusal:
            errors = refusal.fields
        else:
            messages.success(request, "Saved.")
            return redirect("workflows:detail", slug=workflow.slug)
    return render(
        request,
        "workflows/workflow_settings.html",
        {
            "workflow": workflow,
            "teams": teams,
            "errors": errors,
            "values": request.POST if request.method == "POST" else None,
        },
        status=400 if errors else 200,
    )


# --- the workflow page ---------------------------------------------------------------------------------------


@login_required
def workflow_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """A workflow as a second analyst or a manager reads it: what it does (diagram and outline), its
    versions, and its recent runs."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    version = workflow_version_published_latest(workflow)
    graph = version.graph if version else {"steps": []}
    return render(
        request,
        "workflows/workflow_detail.html",
        {
            "workflow": workflow,
            "version": version,
            "diagram": diagram_for_graph(graph) if version else None,
            "outline": diagram_outline(graph) if version else [],
            "draft": workflow_draft_for(workflow),
            "can_run": workflow_can_run(request.user, workflow) and version is not None and not workflow.archived_at,
            "can_edit": workflow_can_edit(request.user, workflow),
        },
    )


# --- the builder ---------------------------------------------------------------------------------------------


def _palette(query: str) -> list[dict[str, Any]]:
    """Step types grouped by category, filtered by a search over name, description and slug."""
    needle = query.strip().lower()
    groups: dict[str, list[dict[str, str]]] = {category: [] for category in CATEGORIES}
    for slug, step_type in step_types().items():
        text = f"{step_type.name} {step_type.description} {slug}".lower()
        if needle and needle not in text:
            continue
        groups.setdefault(step_type.category, []).append(
            {"slug": slug, "name": step_type.name, "description": step_type.description}
        )
    return [{"category": category, "types": types} for category, types in groups.items() if types]


def _summary(step: dict[str, Any]) -> str:
    """One line saying what a step does, from its settings."""
    config = step.get("config") if isinstance(step.get("config"), dict) else {}
    assert isinstance(config, dict)
    kind = step.get("type")
    if kind == "llm.extract":
        schema = config.get("json_schema") if isinstance(config.get("json_schema"), dict) else {}
        count = len(schema.get("properties") or {}) if isinstance(schema, dict) else 0
        return f"Extract {count} field{'s' if count != 1 else ''}" + (
            f" with {config['model']}" if config.get("model") else ""
        )
    if kind == "llm.generate":
        return (
            "Generate "
            + ("data for a schema" if config.get("output") == "json" else "text")
            + (f" with {config['model']}" if config.get("model") else "")
        )
    if kind == "llm.classify":
        return (
            "Choose one of: " + ", ".join(map(str, config.get("labels") or [])) if config.get("labels") else "Classify"
        )
    if kind == "logic.if":
        return f"If {config.get('condition') or '…'}"
    if kind == "logic.switch":
        return f"{len(config.get('cases') or [])} cases and a default"
    if kind == "data.transform":
        fields = config.get("fields") if isinstance(config.get("fields"), dict) else {}
        return "Compute " + ", ".join(map(str, fields)) if fields else "Compute values"
    if kind == "http.request":
        if config.get("operation"):  # an operation of the connection's OpenAPI document
            return f"Call {config['operation']} on {config.get('connection') or '…'}"
        return f"{config.get('method', 'POST')} {config.get('url') or '…'}"
    if kind == "human.approval":
        return f"Ask the {config.get('queue') or '…'} queue: {config.get('title', 'Approval needed')}"
    if kind == "flow.foreach":
        return f"Run {config.get('workflow') or '…'} for each of {config.get('items') or '…'}"
    if kind == "flow.subworkflow":
        return f"Run {config.get('workflow') or '…'}"
    if kind == "util.delay":
        return f"Wait {config.get('seconds', '…')} seconds"
    if kind == "flow.parallel":
        return "Start the lanes below at once"
    return ""


def _autofocus(control: str, *, first: bool, last: bool) -> str:
    """Which control of the card just changed gets the focus back, so a keyboard user carries on where they
    were: the same button, unless it is now disabled (then the card's name, which says where it landed)."""
    if (control == "up" and not first) or (control == "down" and not last) or control == "moveto":
        return control
    return "title"


def _cards(tree: blocks.Tree, problems: list[Problem], focus: str = "", control: str = "") -> list[dict[str, Any]]:
    """The outline as nested dicts for the template: each card with its lanes, problems and summary."""
    types = step_types()
    by_step: dict[str, list[Problem]] = {}
    for problem in problems:
        if problem.step:
            by_step.setdefault(problem.step, []).append(problem)

    def card(block: blocks.Block, lane: str, index: int, siblings: int) -> dict[str, Any]:
        step_type = types.get(block.type)
        lanes = []
        for position, lane_item in enumerate(block.lanes or []):
            address = blocks.lane_id(block, lane_item, index=position)
            label = f'"{lane_item.label}"' if lane_item.label else f"Lane {position + 1}"
            lanes.append({"id": address, "label": label, "cards": sequence(lane_item.blocks, address)})
        _, always, fans_out = blocks.branching(block.step)
        labels = step_type.branch_labels(block.step.get("config") or {}) if step_type else ()
        first, last = index == 0 and lane == blocks.ROOT, index == siblings - 1 and lane == blocks.ROOT
        return {
            "autofocus": _autofocus(control, first=first, last=last) if block.key == focus else "",
            "key": block.key,
            "name": block.step.get("name") or block.key,
            "type": block.type,
            "type_name": step_type.name if step_type else f"Unknown type {block.type}",
            "category": step_type.category if step_type else "Data",
            "summary": _summary(block.step),
            "problems": by_step.get(block.key, []),
            "lanes": lanes,
            "fans_out": fans_out,
            "new_lane": blocks.lane_id(block, blocks.Lane(""), index=len(block.lanes or [])) if fans_out else "",
            "can_branch": bool(labels) and block.lanes is None and not always and not fans_out,
            "branch_labels": labels,
            "error_lane": {"id": f"{block.key}/error", "cards": sequence(block.on_error, f"{block.key}/error")}
            if block.on_error is not None
            else None,
            "error_mode": blocks.block_error_mode(block),
            "wait": block.wait,
            "lane": lane,
            "index": index,
            "first": first,
            "last": last,
            "retry": (block.step.get("retry") or {}).get("max_attempts", 1)
            if isinstance(block.step.get("retry"), dict)
            else 1,
        }

    def sequence(items: list[blocks.Block], lane: str) -> list[dict[str, Any]]:
        return [card(block, lane, index, len(items)) for index, block in enumerate(items)]

    return sequence(tree.blocks, blocks.ROOT)


# Upper apps add options for settings that name their things, per person (the approvals app: the approval
# queues she may use), keyed by the setting's `x-widget`.
CHOICE_PROVIDERS: dict[str, Callable[[Any], list[tuple[str, str]]]] = {}


def _choices(user: Any = None) -> dict[str, list[tuple[str, str]]]:
    """Options for step settings that name things: the text-generation model endpoints, and whatever the
    upper apps provide for `user`."""
    endpoints = endpoint_names_for_steps()
    choices = {"model-endpoint": [("", "Default endpoint"), *((name, name) for name in endpoints)]}
    # The connections `user` may use, per kind ("connection-http", "connection-sql", ...).
    choices.update(connection_choices_for(user))
    # The knowledge collections `user` may name (a retrieval step searches several: one checkbox each).
    choices["collection"] = collection_choices_for(user)
    for widget, provider in CHOICE_PROVIDERS.items():
        choices[widget] = provider(user)
    return choices


def _step_panel(
    draft: WorkflowVersion,
    key: str,
    *,
    sample: dict[str, Any] | None = None,
    pinned: Any = None,
    problems: list[Problem] | None = None,
    tree: blocks.Tree | None = None,
    user: Any = None,
    focus_tool: str = "",
) -> dict[str, Any] | None:
    """The side panel of one step: its generated form with errors under each field, and the data picker."""
    step = next((s for s in draft.graph.get("steps", []) if isinstance(s, dict) and s.get("key") == key), None)
    if step is None:
        return None
    step_type = step_types().get(str(step.get("type")))
    config = step.get("config") if isinstance(step.get("config"), dict) else {}
    assert isinstance(config, dict)
    choices = _choices(user)
    fields = form_fields(step_type.config_schema(), config, choices) if step_type else []
    tools: list[agent_tools.ToolForm] | None = None
    if step.get("type") == agent_tools.AGENT_STEP_TYPE:
        # The agent's tools have an editor of their own: each is edited with its step type's form.
        fields = [item for item in fields if item.name != agent_tools.TOOLS_FIELD]
        tools = agent_tools.tool_forms(
            config,
            choices,
            user=user,
            workflow_choices=agent_tools.workflow_tool_choices(user, own_slug=draft.workflow.slug),
        )
        for tool in tools:
            tool.focused = str(tool.index) == focus_tool
    problems = [p for p in (workflow_version_problems(draft) if problems is None else problems) if p.step == key]
    unplaced = attach_errors(
        [*fields, *agent_tools.tool_fields_for_errors(tools or [])],
        [agent_tools.problem_place(p.field, p.message) for p in problems if not p.field.startswith("@")],
    )
    option_problems = {p.field[1:].split(".")[0]: p.message for p in problems if p.field.startswith("@")}
    references = references_for_step(draft.graph, draft.input_schema, key, sample=sample)
    last_output = ((sample or {}).get("steps") or {}).get(key)
    _decorate(fields, draft)
    for tool in tools or []:
        _decorate(tool.settings, draft)
    retry = step.get("retry") if isinstance(step.get("retry"), dict) else {}
    assert isinstance(retry, dict)

    def has_errors(items: list[Any]) -> bool:
        return any(item.errors or has_errors(item.children) for item in items)

    advanced = [item for item in fields if item.advanced]
    return {
        "step": step,
        "type": step_type,
        "fields": fields,
        "basic_fields": [item for item in fields if not item.advanced],
        "advanced_fields": advanced,
        "advanced_open": has_errors(advanced),
        "unplaced": unplaced,
        "option_problems": option_problems,
        "references": references,
        "reference_groups": _group(references),
        "retry": {**RetryPolicy().model_dump(), **retry},
        "schema_types": SCHEMA_TYPES,
        "pinned": pinned,
        "pin_text": json.dumps(pinned.output if pinned else last_output or {}, indent=2, ensure_ascii=False),
        "sample_run": (sample or {}).get("run"),
        "calls_out": bool(step_type and step_type.side_effects),
        "tools": tools,
        "focus_tool": any(tool.focused for tool in tools or []),
        "tool_kinds": agent_tools.TOOL_KINDS,
        **_block_options(tree, key),
    }


def _block_options(tree: blocks.Tree | None, key: str) -> dict[str, Any]:
    """A step's place-dependent options for its panel: what a failure does, and how a parallel step's lanes
    join."""
    try:
        block, _ = blocks.find(tree, key) if tree is not None else (None, None)
    except blocks.BlockEditError:
        block = None
    if block is None:
        return {"error_mode": "fail", "fans_out": False, "wait": "all"}
    return {
        "error_mode": blocks.block_error_mode(block),
        "fans_out": blocks.branching(block.step)[2],
        "wait": block.wait,
    }


def _decorate(fields: list[Any], draft: WorkflowVersion) -> None:
    """Chips under template and expression fields: the data each one uses, in readable words."""
    for form_field in fields:
        if form_field.widget in ("template", "cel"):
            form_field.chips = references_in(form_field.value, draft.graph, draft.input_schema)
        elif form_field.widget == "keyvalue":
            form_field.chips = [
                chip
                for _, value, _ in form_field.value
                for chip in references_in(value, draft.graph, draft.input_schema)
            ]
        _decorate(form_field.children, draft)


def _group(references: list[Any]) -> list[dict[str, Any]]:
    groups: dict[str, list[Any]] = {}
    for reference in references:
        groups.setdefault(reference.group, []).append(reference)
    return [{"name": name, "items": items} for name, items in groups.items()]


def _builder_context(
    request: HttpRequest, workflow: Workflow, draft: WorkflowVersion, params: Any = None
) -> dict[str, Any]:
    """Everything the builder page renders. `params` are the page's query parameters (the request's own, or
    those of the page an htmx edit answers with directly)."""
    params = request.GET if params is None else params
    problems = workflow_version_problems(draft)  # once per request: cards, panel and publish all read it
    try:
        tree = blocks.tree_from_graph(draft.graph)
        read_only_reason = ""
    except NotBlockStructured as error:
        tree, read_only_reason = blocks.Tree(blocks=[]), str(error)
    lanes = blocks.lanes_of(tree)
    selected, insert, moving = params.get("step", ""), params.get("insert", ""), params.get("move", "")
    panel: dict[str, Any] = {"kind": "help"}
    pinned = pinned_outputs_for(workflow)
    if selected:
        step_panel = _step_panel(
            draft,
            selected,
            sample=sample_data_for(request.user, workflow),
            pinned=pinned.get(selected),
            problems=problems,
            tree=tree,
            user=request.user,
            focus_tool=params.get("tool", ""),
        )
        if step_panel is not None:
            panel = {"kind": "step", **step_panel}
    elif insert:
        lane, _, index = insert.rpartition(":")
        panel = {
            "kind": "palette",
            "lane": lane,
            "index": index,
            "query": params.get("q", ""),
            "groups": _palette(params.get("q", "")),
            "where": {address: name for address, _, _, name in lanes}.get(lane, "the workflow"),
        }
    elif moving:
        try:
            block, place = blocks.find(tree, moving)
        except blocks.BlockEditError:
            block = None
        if block is not None:
            inside = {id(items) for items, _ in blocks.lists_under(block)}
            panel = {
                "kind": "move",
                "key": block.key,
                "name": block.step.get("name") or block.key,
                "lane": place.lane,
                "lanes": [(address, name) for address, items, _, name in lanes if id(items) not in inside],
            }
    return {
        "workflow": workflow,
        "draft": draft,
        "editor_url": reverse("workflows:editor", args=[workflow.slug]),
        "operation_url": reverse("workflows:editor-operation", args=[workflow.slug]),
        "cards": _cards(tree, problems, params.get("focus", ""), params.get("control", "")),
        "read_only_reason": read_only_reason,
        "problems": problems,
        "workflow_problems": [p for p in problems if not p.step],
        "panel": panel,
        "focus": params.get("focus", ""),
        "diagram": diagram_for_graph(draft.graph) if read_only_reason else None,
        "published": workflow_version_published_latest(workflow),
        "publish_route": workflow_publish_route(workflow),
        "error_modes": blocks.ERROR_MODES,
        "sortable_available": (settings.SORTABLE_DIR / "Sortable.min.js").is_file(),
        "pinned_keys": set(pinned),
        "samples": [s for s in draft.input_schema.get("examples", []) if isinstance(s, dict)]
        if isinstance(draft.input_schema, dict)
        else [],
        "recent_runs": recent_runs_for_testing(request.user, workflow),
        "calling_steps": [
            step
            for step in draft.graph.get("steps", [])
            if isinstance(step, dict) and getattr(step_type_find(str(step.get("type"))), "side_effects", False)
        ],
    }


@login_required
def workflow_editor(request: HttpRequest, slug: str) -> HttpResponse:
    """The builder: the outline of step cards, the side panel (palette, a step's settings), the problems."""
    workflow = _editable(request, slug)
    draft = workflow_draft_get_or_create(actor=request.user, workflow=workflow)  # type: ignore[arg-type]
    return render(request, "workflows/editor.html", _builder_context(request, workflow, draft))


def _revision(request: HttpRequest) -> int | None:
    raw = request.POST.get("revision", "")
    return int(raw) if raw.isdigit() and not request.POST.get("overwrite") else None


def _back(
    request: HttpRequest, workflow: Workflow, draft: WorkflowVersion | None = None, **params: str
) -> HttpResponse:
    """Back to the builder, with the changed card focused. A plain form post gets a redirect (post, redirect,
    get); an htmx one gets the builder page in the same response, with its address, which saves a request
    per edit. No #fragment: a page whose address targets an element never honours `autofocus`, and the
    focused control is scrolled into view anyway."""
    query = {key: value for key, value in params.items() if value}
    url = reverse("workflows:editor", args=[workflow.slug]) + (f"?{urlencode(query)}" if query else "")
    if not getattr(request, "htmx", False):
        return redirect(url)
    if draft is None:
        draft = workflow_draft_get_or_create(actor=request.user, workflow=workflow)  # type: ignore[arg-type]
    response = render(request, "workflows/editor.html", _builder_context(request, workflow, draft, query))
    response["HX-Replace-Url"] = url
    return response


def _conflict(request: HttpRequest, workflow: Workflow, error: DraftConflict) -> HttpResponse:
    """The builder again, with the other person's change, and the refused request ready to re-send."""
    draft = workflow_draft_get_or_create(actor=request.user, workflow=workflow)  # type: ignore[arg-type]
    context = _builder_context(request, workflow, draft)
    context["conflict"] = {
        "message": error.message,
        "action": request.path,
        "fields": [
            (name, value)
            for name, values in request.POST.lists()
            for value in values
            if name not in ("csrfmiddlewaretoken", "revision")
        ],
    }
    if not getattr(request, "htmx", False):
        return render(request, "workflows/editor.html", context, status=409)
    # htmx does not swap an error response into the page: answer the builder's own requests with 200 so the
    # conflict is shown, at the builder's address (a reload shows the other person's draft).
    response = render(request, "workflows/editor.html", context)
    response["HX-Replace-Url"] = reverse("workflows:editor", args=[workflow.slug])
    return response


@login_required
@require_POST
def workflow_editor_operation(request: HttpRequest, slug: str) -> HttpResponse:
    """One outline operation (insert, move, move to, duplicate, delete, error handling, join, undo)."""
    workflow = _editable(request, slug)
    operation = request.POST.get("operation", "")
    data = {
        name: request.POST.get(name)
        for name in ("key", "lane", "index", "type", "direction", "mode", "wait", "new_key")
    }
    if request.POST.get("do"):
        # A card's button of the shared form: "operation:argument:key" ("move:up:extract", "delete::extract").
        operation, argument, key = [*request.POST["do"].split(":", 2), "", ""][:3]
        data.update(key=key, direction=argument or None)
    try:
        result = draft_edit(
            actor=request.user,  # type: ignore[arg-type]
            workflow=workflow,
            operation=operation,
            data=data,
            expected_revision=_revision(request),
        )
    except DraftConflict as error:
        return _conflict(request, workflow, error)
    except ApplicationError as error:
        messages.error(request, error.message)
        return _back(request, workflow, focus=str(data.get("key") or ""))
    messages.success(request, result.message)
    panel_step = result.focus if operation in ("insert", "duplicate") else request.POST.get("panel_step", "")
    control = request.POST.get("control") or data.get("direction") or ""
    return _back(request, workflow, result.draft, focus=result.focus or "", step=panel_step or "", control=control)


@login_required
@require_POST
def workflow_editor_step(request: HttpRequest, slug: str, key: str) -> HttpResponse:
    """Save a step's settings from its side panel. Values that fail validation are saved as typed and shown
    with their problem under the field."""
    workflow = _editable(request, slug)
    draft = workflow_draft_get_or_create(actor=request.user, workflow=workflow)  # type: ignore[arg-type]
    step = next((s for s in draft.graph.get("steps", []) if isinstance(s, dict) and s.get("key") == key), None)
    if step is None:
        raise Http404("No such step in the draft.")
    step_type = step_types().get(str(step.get("type")))
    current = step.get("config") if isinstance(step.get("config"), dict) else {}
    assert isinstance(current, dict)
    choices = _choices(request.user)
    fields = form_fields(step_type.config_schema(), current, choices) if step_type else []
    tool_action = request.POST.get("tool_action", "")
    if step.get("type") == agent_tools.AGENT_STEP_TYPE:
        fields = [item for item in fields if item.name != agent_tools.TOOLS_FIELD]
    config = config_from_post(fields, request.POST, current) if step_type else dict(current)
    if step.get("type") == agent_tools.AGENT_STEP_TYPE:
        forms = agent_tools.tool_forms(current, choices, user=request.user)
        tools = current.get("tools") if isinstance(current.get("tools"), list) else []
        config["tools"] = agent_tools.tools_from_post(forms, request.POST, tools or [], user=request.user)
    new_step: dict[str, Any] = {"config": config, "name": request.POST.get("name", "").strip()[:120]}
    attempts, backoff, timeout = (
        request.POST.get(n, "").strip() for n in ("retry_attempts", "retry_backoff", "timeout_seconds")
    )
    retry = dict(step.get("retry") or {}) if isinstance(step.get("retry"), dict) else {}
    if attempts:
        retry["max_attempts"] = int(attempts) if attempts.isdigit() else attempts
    if backoff:
        try:
            retry["backoff_seconds"] = float(backoff)
        except ValueError:
            retry["backoff_seconds"] = backoff
    new_step["retry"] = retry or None
    if timeout:
        try:
            new_step["timeout_seconds"] = float(timeout)
        except ValueError:
            new_step["timeout_seconds"] = timeout
    else:
        new_step["timeout_seconds"] = None
    new_key = request.POST.get("key", "").strip()
    if new_key and new_key != key:
        new_step["key"] = new_key
    try:
        result = draft_edit(
            actor=request.user,  # type: ignore[arg-type]
            workflow=workflow,
            operation="configure",
            data={"key": key, "step": {k: v for k, v in new_step.items()}},
            expected_revision=_revision(request),
        )
    except DraftConflict as error:
        return _conflict(request, workflow, error)
    except ApplicationError as error:
        messages.error(request, error.message)
        return _back(request, workflow, focus=key, step=key)
    problems = [p for p in workflow_version_problems(result.draft) if p.step == result.focus]
    if tool_action:
        messages.success(request, agent_tools.tool_action_message(tool_action, request.POST.get("tool_kind", "")))
    elif problems:
        messages.warning(
            request,
            f"Saved, with {len(problems)} problem{'s' if len(problems) != 1 else ''} to fix (shown under the fields).",
        )
    else:
        messages.success(request, result.message)
    # After a tool button, the tool it moved or added keeps the keyboard's focus (its name field).
    tools_now = (config.get("tools") if isinstance(config.get("tools"), list) else None) or []
    tool = agent_tools.tool_focus(tool_action, len(tools_now)) if tool_action else None
    return _back(
        request,
        workflow,
        result.draft,
        focus=result.focus or key,
        step=result.focus or key,
        tool="" if tool is None else str(tool),
    )


@login_required
@require_POST
def workflow_publish(request: HttpRequest, slug: str) -> HttpResponse:
    """Publish the draft with a change note; refused with every problem while any remain."""
    workflow = _editable(request, slug)
    draft = workflow_draft_for(workflow)
    if draft is None:
        messages.error(request, "There is no draft to publish.")
        return redirect("workflows:detail", slug=slug)
    try:
        version = workflow_version_publish(
            actor=request.user,  # type: ignore[arg-type]
            version=draft,
            note=request.POST.get("note", ""),
            expected_revision=_revision(request),
        )
    except DraftConflict as error:
        return _conflict(request, workflow, error)
    except PublishGated as error:
        messages.error(request, " ".join(error.extra.get("problems", [error.message])))
        return _back(request, workflow)
    except ApplicationError as error:
        count = len(error.extra.get("problems", []))
        messages.error(request, f"{error.message} Fix the {count} problem{'s' if count != 1 else ''} listed first.")
        return _back(request, workflow)
    messages.success(request, f"Published version {version.number}. New runs use it; running ones keep theirs.")
    return redirect("workflows:versions", slug=slug)


# --- versions ------------------------------------------------------------------------------------------------


@login_required
def workflow_versions(request: HttpRequest, slug: str) -> HttpResponse:
    """Every version: who published what and when, with its note and run count; compare any two."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    versions = list(workflow_version_list(workflow))
    rows = [
        {"version": version, "previous": versions[index + 1].number if index + 1 < len(versions) else None}
        for index, version in enumerate(versions)
    ]
    live = next((version.number for version in versions if version.is_published), None)
    return render(
        request,
        "workflows/versions.html",
        {
            "workflow": workflow,
            "versions": versions,
            "rows": rows,
            "live": live,
            "can_edit": workflow_can_edit(request.user, workflow),
        },
    )


def _number(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@login_required
def workflow_compare(request: HttpRequest, slug: str) -> HttpResponse:
    """The semantic diff between two versions (steps added, removed, moved; fields before and after)."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    versions = list(workflow_version_list(workflow))
    if len(versions) < 2:
        return render(request, "workflows/compare.html", {"workflow": workflow, "versions": versions, "diff": None})
    first, second = _number(request.GET.get("from")), _number(request.GET.get("to"))
    before = workflow_version_get(workflow, number=first) if first else versions[1]
    after = workflow_version_get(workflow, number=second) if second else versions[0]
    diff = version_diff(before.graph, before.input_schema, after.graph, after.input_schema)
    types = step_types()
    return render(
        request,
        "workflows/compare.html",
        {
            "workflow": workflow,
            "versions": versions,
            "before": before,
            "after": after,
            "diff": diff,
            "type_names": {slug: t.name for slug, t in types.items()},
            "before_diagram": diagram_for_graph(before.graph),
            "after_diagram": diagram_for_graph(after.graph),
        },
    )


@login_required
@require_POST
def workflow_version_restore(request: HttpRequest, slug: str, number: int) -> HttpResponse:
    """Make an earlier version the draft (the draft before is one undo away)."""
    workflow = _editable(request, slug)
    version = workflow_version_get(workflow, number=number)
    try:
        workflow_version_restore_as_draft(actor=request.user, version=version)  # type: ignore[arg-type]
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("workflows:versions", slug=slug)
    messages.success(request, f"Version {number} is now the draft. Undo brings back the draft you had.")
    return redirect("workflows:editor", slug=slug)


# --- the run form designer ---------------------------------------------------------------------------------


def _rows_from_post(data: QueryDict, schema: dict[str, Any]) -> list[InputRow]:
    """The designer's rows as posted; settings the designer does not show come from the field as it was."""
    count = int(data.get("rows", "0") or 0) if (data.get("rows", "0") or "0").isdigit() else 0
    before = {row.original: row for row in rows_from_schema(schema)}
    rows = []
    for index in range(min(count, 200)):
        original = data.get(f"row.{index}.original", "")
        rows.append(
            InputRow(
                name=data.get(f"row.{index}.name", ""),
                label=data.get(f"row.{index}.label", ""),
                kind=data.get(f"row.{index}.kind", "short_text"),
                required=f"row.{index}.required" in data,
                help=data.get(f"row.{index}.help", ""),
                default=data.get(f"row.{index}.default", ""),
                choices=data.get(f"row.{index}.choices", ""),
                original=original,
                extra=dict(before[original].extra) if original in before else {},
            )
        )
    return rows


def _inputs_panel(
    draft: WorkflowVersion, rows: list[InputRow] | None = None, preview_data: Any = None
) -> dict[str, Any]:
    schema = draft.input_schema if isinstance(draft.input_schema, dict) else {}
    rows = rows if rows is not None else rows_from_schema(schema)
    preview_schema, _ = schema_from_rows([InputRow(**{**row.__dict__, "errors": []}) for row in rows])
    try:
        preview = (
            input_form_class(preview_schema)(data=preview_data)
            if preview_data is not None
            else input_form_class(preview_schema)()
        )
    except (TypeError, ValueError):
        preview = None
    samples = [example for example in schema.get("examples", []) if isinstance(example, dict)]
    return {
        "kind": "inputs",
        "rows": [*rows, InputRow()],
        "kinds": KINDS,
        "preview": preview,
        "samples": samples,
    }


@login_required
def workflow_editor_inputs(request: HttpRequest, slug: str) -> HttpResponse:
    """The run form designer: the input fields as rows, a live preview, and saved sample inputs."""
    workflow = _editable(request, slug)
    draft = workflow_draft_get_or_create(actor=request.user, workflow=workflow)  # type: ignore[arg-type]
    if request.method != "POST":
        context = _builder_context(request, workflow, draft)
        context["panel"] = _inputs_panel(draft)
        return render(request, "workflows/editor.html", context)
    action = request.POST.get("action", "fields")
    schema = dict(draft.input_schema) if isinstance(draft.input_schema, dict) else {}
    rows: list[InputRow] | None = None
    label = "Change the run form"
    if action == "fields":
        rows = _rows_from_post(request.POST, schema)
        schema, valid = schema_from_rows(rows, examples=schema.get("examples"))
        if not valid:
            label = "Change the run form (with problems)"
    elif action == "add_sample":
        values, errors = input_validate(schema, _preview_values(request.POST, schema))
        if errors:
            context = _builder_context(request, workflow, draft)
            context["panel"] = _inputs_panel(draft, preview_data=request.POST)
            messages.error(request, "The sample was not saved: fix the fields marked in the preview.")
            return render(request, "workflows/editor.html", context, status=400)
        schema, label = sample_added(schema, request.POST.get("sample_label", ""), values)
    elif action == "delete_sample":
        schema, label = sample_removed(schema, _number(request.POST.get("sample")))
    try:
        workflow_draft_save(
            actor=request.user,  # type: ignore[arg-type]
            workflow=workflow,
            graph=draft.graph,
            input_schema=schema,
            expected_revision=_revision(request),
            label=label,
        )
    except DraftConflict as error:
        return _conflict(request, workflow, error)
    if rows is not None and any(row.errors for row in rows):
        draft.refresh_from_db()
        context = _builder_context(request, workflow, draft)
        context["panel"] = _inputs_panel(draft, rows=rows)
        messages.warning(request, "Saved the valid fields; fix the fields marked below.")
        return render(request, "workflows/editor.html", context, status=400)
    messages.success(
        request, label.replace("Change", "Changed").replace("Save", "Saved").replace("Delete", "Deleted") + "."
    )
    return redirect(reverse("workflows:editor-inputs", args=[slug]) + "#panel")


def _preview_values(data: QueryDict, schema: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in (schema.get("properties") or {}).items():
        if isinstance(spec, dict) and spec.get("type") == "boolean":
            values[name] = name in data
        elif name in data:
            values[name] = data.get(name)
    return values


# --- live checks -------------------------------------------------------------------------------------------


@login_required
def workflow_check_expression(request: HttpRequest, slug: str, key: str) -> HttpResponse:
    """Check an expression or template as it is typed: whether it parses, and whether the steps it reads
    always run before this one. Answers a short sentence (plain text) for the field's live region."""
    workflow = _editable(request, slug)
    draft = workflow_draft_for(workflow)
    text = request.GET.get("text", "")[:20000]
    widget = request.GET.get("widget", "cel")
    problem = cel_check(text) if widget == "cel" else template_check(text)
    if problem:
        return HttpResponse(f"Does not parse: {problem}", content_type="text/plain; charset=utf-8")
    if draft is not None and text.strip():
        allowed = {reference.expression.split(".")[1] for reference in references_for_step(draft.graph, {}, key)}
        steps = {str(s.get("key")) for s in draft.graph.get("steps", []) if isinstance(s, dict)}
        for expression, _ in references_in(text, draft.graph, draft.input_schema):
            root, name = expression.split(".")[:2]
            if root == "steps" and name not in steps:
                return HttpResponse(f'There is no step "{name}".', content_type="text/plain; charset=utf-8")
            if root == "steps" and name not in allowed:
                return HttpResponse(
                    f'Step "{name}" does not always run before this one, so its output may be missing.',
                    content_type="text/plain; charset=utf-8",
                )
    return HttpResponse("✓ Looks right." if text.strip() else "", content_type="text/plain; charset=utf-8")


# --- pinned test data ----------------------------------------------------------------------------------------


@login_required
@require_POST
def workflow_pin(request: HttpRequest, slug: str, key: str) -> HttpResponse:
    """Pin (or, with action=unpin, unpin) the output a step gives in test runs of the draft."""
    workflow = _editable(request, slug)

    def back() -> HttpResponse:
        return _back(request, workflow, step=key, focus=key)

    if request.POST.get("action") == "unpin":
        pinned_output_clear(actor=request.user, workflow=workflow, step_key=key)  # type: ignore[arg-type]
        messages.success(request, f'Unpinned the test data of "{key}": tests execute it again.')
        return back()
    text = request.POST.get("output", "")
    try:
        output = json.loads(text)
    except json.JSONDecodeError as error:
        messages.error(
            request, f"The pinned data is not valid JSON ({error.msg} at line {error.lineno}); nothing was pinned."
        )
        return back()
    try:
        pinned_output_set(actor=request.user, workflow=workflow, step_key=key, output=output)  # type: ignore[arg-type]
    except ValidationFailed as refusal:
        messages.error(request, " ".join(m for ms in refusal.fields.values() for m in ms))
        return back()
    messages.success(request, f'Pinned test data for "{key}": test runs use it instead of executing the step.')
    return back()


# --- export and import in the pages ---------------------------------------------------------------------------


@login_required
def workflow_export_download(request: HttpRequest, slug: str) -> HttpResponse:
    """Download the workflow as its YAML file: a published version (?version=N), else the draft, else the newest
    published version."""
    workflow = workflow_get_for_user(request.user, slug=slug)
    number = _number(request.GET.get("version"))
    try:
        text = workflow_export(actor=request.user, workflow=workflow, version_number=number)  # type: ignore[arg-type]
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("workflows:versions", slug=slug)
    response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
    suffix = f"-v{number}" if number else ""
    response["Content-Disposition"] = f'attachment; filename="{workflow.slug}{suffix}.aios.yaml"'
    return response


@login_required
def workflow_import_into(request: HttpRequest, slug: str) -> HttpResponse:
    """Import a file into this workflow as its draft: "Preview" shows what would change (nothing is written),
    "Import" writes the draft. Refusals list each problem with its line."""
    workflow = _editable(request, slug)
    context: dict[str, Any] = {"workflow": workflow}
    status = 200
    if request.method == "POST":
        upload = request.FILES.get("file")
        text = request.POST.get("document", "")
        try:
            if upload is not None:
                text = document_text_from_bytes(upload.read(MAX_DOCUMENT_BYTES + 1))
            if not text.strip():
                raise ValidationFailed(
                    "Choose a file to import.", fields={"file": ["Choose an exported .aios.yaml file."]}
                )
            dry_run = request.POST.get("action") != "import"
            result = workflow_import(actor=request.user, text=text, workflow=workflow, dry_run=dry_run)  # type: ignore[arg-type]
        except ImportProblems as refusal:
            context.update(error=refusal.message, problems=[problem_text(p) for p in refusal.problems])
            status = 400
        except ApplicationError as refusal:
            context.update(error=refusal.message)
            status = 400
        else:
            if not dry_run:
                messages.success(request, f"Imported as the draft ({result.diff.summary()}). Review it, then publish.")
                return redirect("workflows:editor", slug=slug)
            types = step_types()
            context.update(
                preview=result,
                document=text,
                type_names={key: value.name for key, value in types.items()},
            )
    return render(request, "workflows/import.html", context, status=status)


# --- gallery sample files (the claims template's sample claims) -------------------------------------------------


@login_required
def gallery_sample_download(request: HttpRequest, name: str) -> FileResponse:
    """A gallery template's sample file (e.g. a claim PDF to upload on the template's Run form), for anyone
    signed in: the files are the product's own examples. 404 for any name that is not a file of the samples
    folder."""
    from apps.workflows.gallery.samples import sample_file_get

    sample = sample_file_get(name)
    if sample is None:
        raise Http404("There is no such sample file.")
    return FileResponse(
        sample.path.open("rb"), as_attachment=True, filename=sample.name, content_type=sample.content_type
    )
