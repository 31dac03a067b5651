"""Pages of "Describe it, get a draft" (apps/workflows/drafting.py): the description form, the proposal to review,
and its Accept and Discard.

The form sits on the New workflow page (the `draft_describe_form` tag) and posts here: with htmx the section is
swapped in place (a refusal answers 200 with the section and its errors, since htmx swaps only successful
answers; a refusal past the drafts limit keeps its Retry-After) and success redirects the browser; without
JavaScript the same form is a page of its own (a refusal is 400, or 429 past the limit).
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect

from apps.core.exceptions import ApplicationError, RateLimited, ValidationFailed
from apps.inference.selectors import endpoint_names_for_steps
from apps.steps.registry import step_type_find
from apps.workflows.diagram import diagram_for_graph
from apps.workflows.diff import version_diff
from apps.workflows.drafting import (
    MAX_DESCRIPTION_CHARS,
    MIN_DESCRIPTION_CHARS,
    DraftRefused,
    draft_proposal_accept,
    draft_proposal_discard,
    draft_proposal_get_for_user,
    workflow_draft_propose,
)
from apps.workflows.exchange import ImportProblems, problem_text
from apps.workflows.models import DraftProposal
from apps.workflows.selectors import team_list_assignable
from apps.workflows.services import EMPTY_INPUT_SCHEMA


def describe_context(request: HttpRequest, values: dict[str, str] | None = None) -> dict[str, Any]:
    """What the description form needs: its values (an earlier proposal's description when the analyst comes back
    to edit it), the teams she may give workflows to, and the model endpoints."""
    if values is None:
        values = {"description": "", "team": "", "model": ""}
        earlier = request.GET.get("proposal", "")
        if earlier.isdigit():
            try:
                proposal = draft_proposal_get_for_user(request.user, pk=int(earlier))
            except Http404:  # someone else's or a missing proposal leaves the form empty
                proposal = None
            if proposal is not None and proposal.author_id == request.user.pk:
                values = {
                    "description": proposal.description,
                    "team": proposal.team.slug if proposal.team else "",
                    "model": "",
                }
    return {
        "values": values,
        "teams": team_list_assignable(request.user),
        "endpoints": endpoint_names_for_steps(),
        "min_chars": MIN_DESCRIPTION_CHARS,
        "max_chars": MAX_DESCRIPTION_CHARS,
        "errors": {},
        "problems": [],
        "answer": "",
        "error": "",
    }


@login_required
def draft_propose_view(request: HttpRequest) -> HttpResponse:
    """GET: the description form as a page. POST: ask the model for a draft; open the proposal, or show why not
    beside the description, with the text kept."""
    if not request.user.has_perm("workflows.add_workflow"):
        raise PermissionDenied("Only analysts create workflows.")
    htmx = bool(getattr(request, "htmx", False))
    if request.method != "POST":
        return render(request, "workflows/draft_describe.html", describe_context(request))
    values = {key: request.POST.get(key, "").strip() for key in ("description", "team", "model")}
    context = describe_context(request, values)
    team = context["teams"].filter(slug=values["team"]).first() if values["team"] else None
    try:
        if values["team"] and team is None:
            raise ValidationFailed("Check the highlighted field.", fields={"team": ["Choose one of your teams."]})
        proposal = workflow_draft_propose(
            actor=request.user,  # type: ignore[arg-type]
            description=values["description"],
            team=team,
            endpoint=values["model"] or None,
        )
    except DraftRefused as refusal:
        context.update(errors=refusal.fields, error=refusal.message, problems=refusal.problems, answer=refusal.answer)
    except ValidationFailed as refusal:
        context.update(errors=refusal.fields, error=refusal.message)
    except RateLimited as refusal:
        # Nothing is wrong with the description: the message goes above the form, not on the field.
        context.update(error=refusal.message)
        response = render(
            request,
            "workflows/draft_form.html" if htmx else "workflows/draft_describe.html",
            context,
            status=200 if htmx else 429,
        )
        response["Retry-After"] = str(refusal.retry_after)
        return response
    except ApplicationError as refusal:
        context.update(errors={"description": [refusal.message]}, error=refusal.message)
    else:
        url = reverse("workflows:draft-proposal", args=[proposal.pk])
        return HttpResponseClientRedirect(url) if htmx else redirect(url)
    if htmx:
        return render(request, "workflows/draft_form.html", context)
    return render(request, "workflows/draft_describe.html", context, status=400)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def _schema_fields(schema: Any) -> list[dict[str, Any]]:
    """An extraction's or a reply's JSON Schema as rows: name, type, required, description."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return []
    listed = schema.get("required")
    required: list[Any] = listed if isinstance(listed, list) else []
    return [
        {
            "name": name,
            "type": spec.get("type", "") if isinstance(spec, dict) else "",
            "required": name in required,
            "description": spec.get("description", "") if isinstance(spec, dict) else "",
            "choices": ", ".join(map(str, spec["enum"])) if isinstance(spec, dict) and spec.get("enum") else "",
        }
        for name, spec in schema["properties"].items()
    ]


def _settings(step: dict[str, Any]) -> list[dict[str, Any]]:
    """A step's settings for people, in its step type's order: the field's title, and its value as text (a field
    table for schemas)."""
    config = step.get("config") if isinstance(step.get("config"), dict) else {}
    assert isinstance(config, dict)
    step_type = step_type_find(str(step.get("type")))
    properties = step_type.config_schema().get("properties", {}) if step_type else {}
    order = [name for name in properties if name in config] + [name for name in config if name not in properties]
    rows = []
    for name in order:
        spec = properties.get(name, {})
        label = spec.get("title") or name.replace("_", " ").capitalize()
        value = config[name]
        fields = _schema_fields(value) if spec.get("x-widget") == "schema-table" else []
        # A mapping of names to expressions or templates (a transform's fields, headers) reads as "name ← value".
        pairs = sorted(value.items()) if isinstance(value, dict) and value and not fields else []
        if not all(isinstance(item, str) for _, item in pairs):
            pairs = []
        rows.append(
            {
                "name": name,
                "label": label,
                "text": "" if fields or pairs else _value_text(value),
                "fields": fields,
                "pairs": pairs,
                "long": not isinstance(value, str) or "\n" in value or len(value) > 80,
            }
        )
    return rows


def proposal_steps(proposal: DraftProposal) -> tuple[list[dict[str, Any]], Any]:
    """Each step of the proposal as the review shows it (type name, position, explanation, settings, inputs), and
    the diff against an empty workflow that gives the positions."""
    spec = proposal.document["spec"]
    graph, input_schema = spec["graph"], spec["input_schema"]
    diff = version_diff({"steps": []}, EMPTY_INPUT_SCHEMA, graph, input_schema)
    changes = {change.key: change for change in diff.steps}
    steps = []
    for step in graph.get("steps", []):
        step_type = step_type_find(str(step.get("type")))
        change = changes.get(step["key"])
        steps.append(
            {
                "key": step["key"],
                "name": step.get("name") or step["key"],
                "type": step.get("type"),
                "type_name": step_type.name if step_type else step.get("type"),
                "type_description": step_type.description if step_type else "",
                "position": change.after_position if change else "",
                "explanation": proposal.explanations.get(step["key"], ""),
                "settings": _settings(step),
                "inputs": sorted((step.get("inputs") or {}).items()),
            }
        )
    return steps, diff


def _input_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = schema.get("required") or []
    rows = []
    for name, spec in (schema.get("properties") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        kind = spec.get("type", "")
        if spec.get("format") == "textarea":
            kind = "long text"
        elif spec.get("format") == "document":
            kind = "document (file)"
        elif kind == "string":
            kind = "text"
        rows.append(
            {
                "name": name,
                "title": spec.get("title") or name,
                "type": kind,
                "required": name in required,
                "description": spec.get("description", ""),
            }
        )
    return rows


@login_required
def draft_proposal_view(request: HttpRequest, pk: int) -> HttpResponse:
    """The proposal to review: summary, diagram, each step explained with its settings, as a diff against an empty
    workflow; Accept, Edit description, Discard. Its author's (and admins', who only read it); 404 for others."""
    proposal = draft_proposal_get_for_user(request.user, pk=pk)
    steps, diff = proposal_steps(proposal)
    metadata = proposal.document["metadata"]
    calls = proposal.calls or []
    return render(
        request,
        "workflows/draft_proposal.html",
        {
            "proposal": proposal,
            "metadata": metadata,
            "steps": steps,
            "diff": diff,
            "diagram": diagram_for_graph(proposal.document["spec"]["graph"]),
            "input_fields": _input_fields(proposal.document["spec"]["input_schema"]),
            "calls": calls,
            "tokens": sum(int(call.get("prompt_tokens", 0)) + int(call.get("generated_tokens", 0)) for call in calls),
            "model": next(
                (call["model_id"] or call["endpoint"] for call in reversed(calls) if call.get("status") == "ok"), ""
            ),
            "is_author": proposal.author_id == request.user.pk,
            "can_decide": proposal.author_id == request.user.pk and proposal.state == DraftProposal.State.PROPOSED,
        },
    )


@login_required
@require_POST
def draft_proposal_accept_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Create the workflow and its draft from the proposal, then open the builder."""
    proposal = draft_proposal_get_for_user(request.user, pk=pk)
    try:
        workflow = draft_proposal_accept(
            actor=request.user,  # type: ignore[arg-type]
            proposal=proposal,
            name=request.POST.get("name", ""),
        )
    except ImportProblems as refusal:
        messages.error(request, f"{refusal.message} " + " ".join(problem_text(p) for p in refusal.problems[:5]))
        return redirect("workflows:draft-proposal", pk=pk)
    except ApplicationError as refusal:
        if refusal.status_code == 403:
            raise PermissionDenied(refusal.message) from None
        messages.error(request, refusal.message)
        return redirect("workflows:draft-proposal", pk=pk)
    messages.success(request, f'Created "{workflow.name}" from the drafted steps. Review its draft, then publish.')
    return redirect("workflows:editor", slug=workflow.slug)


@login_required
@require_POST
def draft_proposal_discard_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Discard the proposal (kept on record as discarded) and go back to New workflow."""
    proposal = draft_proposal_get_for_user(request.user, pk=pk)
    try:
        draft_proposal_discard(actor=request.user, proposal=proposal)  # type: ignore[arg-type]
    except ApplicationError as refusal:
        if refusal.status_code == 403:
            raise PermissionDenied(refusal.message) from None
        messages.error(request, refusal.message)
        return redirect("workflows:draft-proposal", pk=pk)
    messages.success(request, "Discarded the draft. Nothing was created.")
    return redirect("workflows:create")
