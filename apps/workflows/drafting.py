"""Describe it, get a draft: a model turns an analyst's description of a process into a reviewed draft workflow.

`workflow_draft_propose` asks the model for an aios/v1 document (apps/workflows/exchange.py) with one explanation
per step and a summary, checks it as an import and as a publish would, sends the problems back once for a
repair, and keeps what passed as a `DraftProposal`. Nothing else is created until the analyst accepts it
(`draft_proposal_accept`: the import service makes the workflow and its draft, which she then edits and
publishes in the builder); `draft_proposal_discard` keeps the proposal, marked discarded.

What the model is constrained by. Constrained decoders (TGI's outlines grammar, vLLM's xgrammar, llama.cpp's
GBNF) take a subset of JSON Schema: no `if`/`then`, and a document schema with one conditional config schema per
step type grows grammars past what they build quickly. So the reply is constrained by `draft_reply_schema()`:
the envelope, metadata, the input schema's field shapes, steps (key pattern, type one of the registered slugs,
config a free object) and edges, beside the explanations and summary. Each step type's config is described in
the prompt instead (`step_library_text`), and everything the constraint leaves open is checked afterwards by
the full document schema (`document_parse`) and by a publish of the draft in a transaction that is rolled
back (`reply_check`), which also checks that what the graph names exists here and that the analyst may use it.

Model calls go through the inference gateway with no run (`CallScope(run_id=None, step_key="draft")`); their
records are stored as InferenceCall rows (so an endpoint's usage and cost include drafting) whether or not a
proposal comes of them, and the proposal keeps their ids and provenance.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.http import Http404
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import Team, User
from apps.accounts.roles import ADMIN, user_roles
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, Conflict, Forbidden, ValidationFailed
from apps.core.throttling import rate_limit_check
from apps.inference import client
from apps.inference.errors import InferenceError
from apps.inference.gateway import CallRequest, CallScope, Gateway, endpoint_resolve
from apps.inference.models import InferenceCall, ModelEndpoint
from apps.inference.selectors import endpoint_names_for_steps
from apps.steps.guardrails import sanitise_output, sanitise_value
from apps.steps.registry import step_types
from apps.workflows.exchange import (
    API_VERSION,
    KIND,
    ImportProblems,
    document_dump,
    document_parse,
    requires_missing,
    workflow_import,
)
from apps.workflows.models import DraftProposal, Workflow
from apps.workflows.selectors import team_list_assignable
from apps.workflows.services import RESERVED_SLUGS, workflow_version_publish

MIN_DESCRIPTION_CHARS = 20
MAX_DESCRIPTION_CHARS = 4000
# A document of a dozen steps with explanations is 2,000-3,000 tokens; the rest is headroom for a long one. Less
# when the server's context is smaller (`_max_new_tokens`), never below the floor.
DRAFT_MAX_NEW_TOKENS = 4096
DRAFT_MIN_NEW_TOKENS = 1024
# A conservative count of prompt tokens from characters (English and JSON run at 3.5-4.5 per token).
_CHARS_PER_TOKEN = 3
MAX_EXPLANATION_CHARS = 600
MAX_SUMMARY_CHARS = 1500
# What the repair call and the refusal show: enough to fix an answer, not a wall of text.
MAX_PROBLEMS_SHOWN = 25
_SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
_STEP_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_INPUT_TYPES = ["string", "integer", "number", "boolean", "array", "object"]
REPAIR_HEADING = "Your previous answer has these problems"


class DraftProblem(TypedDict):
    """One reason the model's answer is not a workflow yet: `path` is dotted ("document.spec.graph.steps.2.config",
    "" for the whole answer)."""

    path: str
    message: str


class DraftRefused(ValidationFailed):
    """The model's answer was still not a valid workflow after one repair: `problems` says why, `answer` is its
    last answer (YAML when it was a document, else as the model wrote it). Nothing was created."""

    def __init__(self, problems: list[DraftProblem], answer: str) -> None:
        count = len(problems)
        super().__init__(
            f"The model's draft still had {count} {'problem' if count == 1 else 'problems'} after one repair, so "
            "nothing was created. Add detail to the description (the steps, who approves, which systems are "
            "involved) and draft again.",
            fields={"description": ["This description did not give a valid workflow; the problems are listed below."]},
        )
        self.problems = problems[:MAX_PROBLEMS_SHOWN]
        self.answer = answer
        self.extra["problems"] = [problem_text(problem) for problem in self.problems]


def problem_text(problem: DraftProblem) -> str:
    return f"{problem['path']}: {problem['message']}" if problem["path"] else problem["message"]


# --- what the model is told ---------------------------------------------------------------------------------

INSTRUCTIONS = """You draft AIOS workflows. AIOS runs business processes as workflows: a graph of steps that call \
language models, apply rules, wait for people and call outside systems. From the process description you are \
given, draft one workflow as an AIOS workflow document (apiVersion "aios/v1", kind "Workflow") and explain it.

Reply with one JSON object and nothing else:
{"document": <the workflow document>, "explanations": {"<step key>": "<one or two sentences: what the step does \
and why it is there>"}, "summary": "<two or three sentences: what the workflow does from start to end>"}

The document:
- "metadata": {"slug": lowercase words joined by hyphens, "name": a short name, "description": one sentence, \
"baseline_minutes_per_case": minutes a person spends on one case today (a number)}. No "version", "requires" or \
"team".
- "spec.input_schema": the run's input fields, {"type": "object", "properties": {"<field>": {"type": "string" | \
"number" | "integer" | "boolean" | "array" (of strings: "items": {"type": "string"}), "title": "...", \
"description": "..."}}, "required": ["<field>", ...]}. Long text fields get "format": "textarea"; a file to read \
is {"type": "object", "format": "document"}.
- "spec.graph": {"steps": [...], "edges": [...]}. A step is {"key": a name of letters, digits and _, "type": one \
of the step types below, "name": a short label for people, "config": its settings}; optional "inputs" maps names \
to expressions whose values the step receives as params (a human.approval shows them to the reviewer).
- Edges: {"from": "<key>", "to": "<key>", "when": "success"}. "when" is "success" (the default), "error" (taken \
when the step fails) or a branch label: logic.if gives "true" and "false"; human.approval gives "approved" and \
"rejected"; llm.classify gives "confident" and "low_confidence"; logic.switch gives its cases' labels and its \
default. Without "edges" the steps run in list order; with them, list every edge. No cycles.
- Expressions (conditions, data.transform fields, inputs, parameters) are CEL over `input.<field>` and \
`steps.<key>.<output field>`, e.g. `steps.extract.data.amount > 1000.0` (numbers from a model are doubles: \
compare with 1000.0, not 1000). Text settings marked "template" are Jinja templates: `{{ input.<field> }}`, \
`{{ steps.<key>.<output field> }}`. A step may only refer to steps that always run before it.
- Leave "model" empty (the default model). Name only the approval queues, connections and knowledge collections \
listed under "Available here"; a workflow that needs something else should do without it.
- Keep it as small as the process allows; every step needs an entry in "explanations".
"""

EXAMPLE = {
    "document": {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "slug": "leave-requests",
            "name": "Leave requests",
            "description": "Read a leave request and ask a manager when it is long.",
            "baseline_minutes_per_case": 5,
        },
        "spec": {
            "input_schema": {
                "type": "object",
                "properties": {"request_text": {"type": "string", "title": "Request", "format": "textarea"}},
                "required": ["request_text"],
            },
            "graph": {
                "steps": [
                    {
                        "key": "extract",
                        "type": "llm.extract",
                        "name": "Read the request",
                        "config": {
                            "prompt": "Extract the employee and the number of days from this request:\n\n"
                            "{{ input.request_text }}",
                            "json_schema": {
                                "type": "object",
                                "properties": {"employee": {"type": "string"}, "days": {"type": "number"}},
                                "required": ["employee", "days"],
                            },
                        },
                    },
                    {
                        "key": "long_leave",
                        "type": "logic.if",
                        "name": "More than 5 days?",
                        "config": {"condition": "steps.extract.data.days > 5.0"},
                    },
                    {
                        "key": "manager",
                        "type": "human.approval",
                        "name": "Manager approval",
                        "config": {"queue": "<a queue listed under Available here>", "title": "Leave request"},
                        "inputs": {"employee": "steps.extract.data.employee", "days": "steps.extract.data.days"},
                    },
                ],
                "edges": [
                    {"from": "extract", "to": "long_leave"},
                    {"from": "long_leave", "to": "manager", "when": "true"},
                ],
            },
        },
    },
    "explanations": {
        "extract": "Reads the employee and the number of days from the request text.",
        "long_leave": "Sends requests of more than five days to a person; shorter ones end here.",
        "manager": "A manager approves or rejects long leave.",
    },
    "summary": "Reads a leave request and asks a manager to approve it when it is longer than five days.",
}


def _first_sentence(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    # "e.g." and "i.e." end no sentence.
    match = re.match(r"(.+?(?<!e\.g)(?<!i\.e)\.)(\s|$)", text)
    sentence = match.group(1) if match else text
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"


def _type_text(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int = 0) -> str:
    """A config field's JSON Schema as a few words: "text (template)", "list of text", "one of: a, b"."""
    if "$ref" in schema and depth < 3:
        target = root.get("$defs", {}).get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        if isinstance(target, Mapping) and isinstance(target.get("properties"), Mapping):
            inner = ", ".join(
                f"{name}: {_type_text(spec, root, depth + 1)}" for name, spec in target["properties"].items()
            )
            return "{" + inner + "}"
        return "object"
    if "anyOf" in schema:
        options = [option for option in schema["anyOf"] if option.get("type") != "null"]
        return _type_text(options[0], root, depth) if len(options) == 1 else "value"
    if "enum" in schema:
        return "one of: " + ", ".join(json.dumps(value) for value in schema["enum"])
    kind = schema.get("type")
    widget = schema.get("x-widget")
    if kind == "string":
        return {"template": "text (template)", "cel": "expression (CEL)"}.get(str(widget), "text")
    if kind == "array":
        items = schema.get("items", {})
        return "list of " + (_type_text(items, root, depth + 1) if isinstance(items, Mapping) else "values")
    if kind == "object":
        if widget == "schema-table":
            return "a JSON Schema object of the fields"
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and extra.get("type") == "string":
            return "object of name → " + ("expression (CEL)" if widget == "cel" else "text (template)")
        return "object"
    return {"number": "number", "integer": "whole number", "boolean": "true/false"}.get(str(kind), "value")


def _output_text(step_type: Any) -> str:
    doc = " ".join((step_type.__doc__ or "").split())
    match = re.search(r"(?:[Oo]utputs?:?|resumes with)\s+`(\{.*?\})`", doc)
    return f"Output: {match.group(1)}" if match else _first_sentence(doc, 200)


def step_library_text() -> str:
    """Every registered step type in a few lines: slug, what it does, its output, and its main settings (the
    builder's advanced ones are left out: their defaults suit a first draft)."""
    lines = []
    for slug, step_type in step_types().items():
        lines.append(f"- {slug} ({step_type.name}): {step_type.description} {_output_text(step_type)}")
        schema = step_type.config_schema()
        required = set(schema.get("required", []))
        for name, spec in schema.get("properties", {}).items():
            if not isinstance(spec, Mapping) or spec.get("x-advanced"):
                continue
            need = (
                "required"
                if name in required
                else f"default {json.dumps(spec['default'])}"
                if "default" in spec
                else ""
            )
            about = _first_sentence(spec.get("description", ""), 140)
            lines.append(
                f"    {name}: {_type_text(spec, schema)}"
                + (f", {need}" if need else "")
                + (f". {about}" if about else "")
            )
    return "\n".join(lines)


def _choices_for(actor: User) -> dict[str, list[str]]:
    """The names this analyst may use in steps, as the builder offers them: approval queues, connections by kind,
    knowledge collections, model endpoints."""
    # The builder's option providers, which upper apps fill (approval queues come from the approvals app).
    from apps.connectors.selectors import connection_choices_for
    from apps.knowledge.selectors import collection_choices_for
    from apps.workflows.views import CHOICE_PROVIDERS

    found: dict[str, list[str]] = {}
    for widget, options in connection_choices_for(actor).items():
        names = [name for name, _ in options if name]
        if names:
            found[widget.replace("connection-", "") + " connections"] = names
    collections = [name for name, _ in collection_choices_for(actor)]
    if collections:
        found["knowledge collections (rag.retrieve)"] = collections
    for widget, provider in CHOICE_PROVIDERS.items():
        names = [name for name, _ in provider(actor) if name]
        if names:
            found[widget.replace("-", " ") + "s"] = names
    endpoints = endpoint_names_for_steps()
    if endpoints:
        found["model endpoints (leave model empty for the default)"] = endpoints
    return found


def resources_text(actor: User) -> str:
    choices = _choices_for(actor)
    if not choices:
        return "Nothing: no approval queues, connections or knowledge collections are available to you."
    return "\n".join(f"- {kind}: {', '.join(names)}" for kind, names in sorted(choices.items()))


def draft_system_prompt(actor: User) -> str:
    return (
        f"{INSTRUCTIONS}\nStep types:\n{step_library_text()}\n\nAvailable here:\n{resources_text(actor)}\n\n"
        f"An example answer (for another process):\n{json.dumps(EXAMPLE, ensure_ascii=False)}"
    )


def draft_user_prompt(description: str) -> str:
    return f"Process description:\n<<<\n{description}\n>>>\n\nDraft the workflow for this process."


def repair_user_prompt(description: str, answer: str, problems: list[DraftProblem]) -> str:
    listed = "\n".join(f"- {problem_text(problem)}" for problem in problems[:MAX_PROBLEMS_SHOWN])
    return (
        f"{draft_user_prompt(description)}\n\nYour previous answer:\n{answer}\n\n{REPAIR_HEADING}:\n{listed}\n\n"
        "Answer again with the whole corrected JSON object (document, explanations, summary)."
    )


def draft_reply_schema() -> dict[str, Any]:
    """The JSON Schema the model's reply is constrained by (see the module docstring for what it leaves to the
    checks after): only keywords that common constrained decoders take, no `if`/`then`, no `$ref`."""
    text = {"type": "string"}
    field_spec = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": _INPUT_TYPES},
            "title": text,
            "description": text,
            "format": {"type": "string", "enum": ["textarea", "date", "document"]},
            "items": {"type": "object", "properties": {"type": {"type": "string", "enum": ["string"]}}},
            "enum": {"type": "array", "items": text},
        },
        "additionalProperties": False,
    }
    step = {
        "type": "object",
        "required": ["key", "type", "config"],
        "properties": {
            "key": {"type": "string", "pattern": _STEP_KEY_PATTERN, "maxLength": 64},
            "type": {"type": "string", "enum": list(step_types())},
            "name": text,
            "config": {"type": "object"},
            "inputs": {"type": "object", "additionalProperties": text},
        },
        "additionalProperties": False,
    }
    edge = {
        "type": "object",
        "required": ["from", "to"],
        "properties": {"from": text, "to": text, "when": text},
        "additionalProperties": False,
    }
    document = {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"type": "string", "enum": [API_VERSION]},
            "kind": {"type": "string", "enum": [KIND]},
            "metadata": {
                "type": "object",
                "required": ["slug", "name"],
                "properties": {
                    "slug": {"type": "string", "pattern": _SLUG_PATTERN, "maxLength": 120},
                    "name": {"type": "string", "minLength": 1, "maxLength": 120},
                    "description": text,
                    "baseline_minutes_per_case": {"type": "number", "minimum": 0},
                },
                "additionalProperties": False,
            },
            "spec": {
                "type": "object",
                "required": ["input_schema", "graph"],
                "properties": {
                    "input_schema": {
                        "type": "object",
                        "required": ["type", "properties"],
                        "properties": {
                            "type": {"type": "string", "enum": ["object"]},
                            "properties": {"type": "object", "additionalProperties": field_spec},
                            "required": {"type": "array", "items": text},
                        },
                        "additionalProperties": False,
                    },
                    "graph": {
                        "type": "object",
                        "required": ["steps"],
                        "properties": {
                            "steps": {"type": "array", "minItems": 1, "items": step},
                            "edges": {"type": "array", "items": edge},
                        },
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "required": ["document", "explanations", "summary"],
        "properties": {
            "document": document,
            "explanations": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 600}},
            "summary": {"type": "string", "maxLength": MAX_SUMMARY_CHARS},
        },
        "additionalProperties": False,
    }


# --- checking an answer -------------------------------------------------------------------------------------


@dataclass
class CheckedAnswer:
    """One answer of the model, read and checked: `problems` empty means `document` may become a draft as it is."""

    document: dict[str, Any] | None
    explanations: dict[str, str]
    summary: str
    problems: list[DraftProblem]
    shown: str  # the answer as the analyst and the repair call see it (canonical YAML of a document)
    explanation_problems: list[DraftProblem] = field(default_factory=list)


_MISSING_THING = re.compile(r'(model endpoint|approval queue|connection|collection|workflow) "(?P<name>[^"]+)"')


def answer_check(*, actor: User, text: str, team: Team | None) -> CheckedAnswer:
    """Read the model's reply and report every problem: not JSON, not the reply's shape, not an aios/v1 document
    (the import's checks), what the draft's publish would refuse (a dry run, rolled back), what it requires that
    this instance lacks, and steps without an explanation."""
    try:
        reply = json.loads(text)
    except ValueError as error:
        return CheckedAnswer(None, {}, "", [{"path": "", "message": f"The answer is not valid JSON ({error})."}], text)
    if not isinstance(reply, dict) or not isinstance(reply.get("document"), dict):
        problem: DraftProblem = {"path": "", "message": 'The answer must be an object with a "document" object.'}
        return CheckedAnswer(None, {}, "", [problem], text)
    reply = sanitise_value(reply)
    document: dict[str, Any] = reply["document"]
    # What the reviewer decides on: the team comes from the form, the version block and requires from this
    # instance. A missing or malformed slug is derived from the name rather than sent back for a repair.
    document.pop("version", None)
    document.pop("requires", None)
    metadata = document.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("team", None)
        slug = metadata.get("slug")
        if (not isinstance(slug, str) or not re.match(_SLUG_PATTERN, slug)) and isinstance(metadata.get("name"), str):
            metadata["slug"] = slugify(metadata["name"])[:120] or "drafted-workflow"
    given = reply.get("explanations") if isinstance(reply.get("explanations"), dict) else {}
    explanations = {
        str(key): " ".join(value.split())[:MAX_EXPLANATION_CHARS]
        for key, value in given.items()
        if isinstance(value, str) and value.strip()
    }
    summary = sanitise_output(str(reply.get("summary") or "")).strip()[:MAX_SUMMARY_CHARS]
    try:
        shown = document_dump(document)
    except Exception:
        shown = json.dumps(document, ensure_ascii=False, indent=2)
    try:
        document_parse(shown)
    except ImportProblems as refusal:
        problems: list[DraftProblem] = [
            {"path": _path("document", item["path"]), "message": item["message"]} for item in refusal.problems
        ]
        return CheckedAnswer(document, explanations, summary, problems, shown)
    problems = [
        {"path": _path("document", "spec.graph"), "message": message}
        for message in _publish_problems(actor, shown, team)
    ]
    mentioned = " ".join(problem["message"] for problem in problems)
    for kind, names in requires_missing(document).items():
        for name in names:
            if f'"{name}"' not in mentioned:
                problems.append(
                    {"path": "document.requires", "message": f'{kind.replace("_", " ")}: "{name}" does not exist here.'}
                )
    steps = document["spec"]["graph"]["steps"]
    unexplained: list[DraftProblem] = [
        {"path": f"explanations.{step['key']}", "message": f'Step "{step["key"]}" has no explanation.'}
        for step in steps
        if step["key"] not in explanations
    ]
    explanations = {step["key"]: explanations[step["key"]] for step in steps if step["key"] in explanations}
    return CheckedAnswer(document, explanations, summary, problems, shown, unexplained)


def _path(prefix: str, path: str) -> str:
    return f"{prefix}.{path}" if path else prefix


def _publish_problems(actor: User, text: str, team: Team | None) -> list[str]:
    """What publishing the document as a new workflow's draft would refuse, found by doing it in a savepoint that
    is always rolled back: the import, then every publish check (the step configs, what they name and whether
    the analyst may use it, the upper apps' checks and gates) exactly as the builder's Publish would run them."""
    temporary = f"draft-check-{uuid.uuid4().hex[:12]}"
    document = json.loads(json.dumps(document_parse(text)))
    document["metadata"]["slug"] = temporary
    problems: list[str] = []
    with transaction.atomic():
        try:
            result = workflow_import(actor=actor, text=document_dump(document), team=team, create_only=True)
            assert result.draft is not None
            workflow_version_publish(actor=actor, version=result.draft)
        except ImportProblems as refusal:
            problems = [problem["message"] for problem in refusal.problems]
        except ApplicationError as refusal:
            problems = [str(problem) for problem in refusal.extra.get("problems", [])] or [refusal.message]
        transaction.set_rollback(True)
    return [problem.replace(temporary, "this workflow") for problem in problems]


# --- the services -------------------------------------------------------------------------------------------


def _call_summary(call: InferenceCall) -> dict[str, Any]:
    return {
        "id": call.pk,
        "purpose": call.purpose,
        "endpoint": call.endpoint_name,
        "model_id": call.model_id,
        "revision": call.revision,
        "status": call.status,
        "prompt_tokens": call.prompt_tokens,
        "generated_tokens": call.generated_tokens,
        "latency_ms": round(call.latency_ms, 1),
        "cost": str(call.cost),
        "input_sha256": call.input_sha256,
        "output_sha256": call.output_sha256,
        "template_sha256": call.template_sha256,
        "error": call.error,
    }


_context_sizes: dict[str, int | None] = {}


def _max_new_tokens(endpoint: ModelEndpoint, prompt_chars: int) -> int:
    """As many new tokens as the server's context leaves beside the prompt, up to DRAFT_MAX_NEW_TOKENS: TGI refuses
    a request whose prompt and `max_new_tokens` together exceed its `max_total_tokens` (a 422), whatever the reply's
    real length. The limit is the endpoint's probed one, else the server's (asked once per process)."""
    limit = endpoint.max_total_tokens
    if limit is None:
        if endpoint.url not in _context_sizes:
            try:
                token = endpoint.token or None
                info = (
                    client.server_info(endpoint.url, token=token)
                    if endpoint.kind == ModelEndpoint.Kind.TGI
                    else client.served_model_info(endpoint.url, token=token, served_model=endpoint.served_model or None)
                )
                found = info.get("max_total_tokens")
                _context_sizes[endpoint.url] = int(found) if isinstance(found, int) else None
            except (InferenceError, ApplicationError, ValueError):
                _context_sizes[endpoint.url] = None
        limit = _context_sizes[endpoint.url]
    if limit is None:
        return DRAFT_MAX_NEW_TOKENS
    left = limit - prompt_chars // _CHARS_PER_TOKEN - 64
    return max(DRAFT_MIN_NEW_TOKENS, min(DRAFT_MAX_NEW_TOKENS, left))


@transaction.atomic
def _calls_store(calls: list[InferenceCall]) -> list[InferenceCall]:
    return InferenceCall.objects.bulk_create(calls) if calls else []


def draft_rate_check(*, actor: User) -> None:
    """Refuse with RateLimited (429, Retry-After) when `actor` asked for more than settings.AIOS_DRAFTS_PER_MINUTE
    drafts in the current minute. A draft holds a web thread for as long as the model takes (half a minute or
    more) and spends model time, so one person clicking again and again, or a script, must not hold them all."""
    limit = settings.AIOS_DRAFTS_PER_MINUTE
    rate_limit_check(
        scope="draft",
        key=str(actor.pk),
        limit=limit,
        refusal=lambda wait: (
            f"You have asked for {limit} draft{'s' if limit != 1 else ''} in the last minute, the most allowed; "
            f"your description is kept here, so ask again in {wait} s."
        ),
    )


def _description_clean(description: str) -> str:
    text = (description or "").strip()
    if len(text) < MIN_DESCRIPTION_CHARS:
        raise ValidationFailed(
            "Describe the process in a few sentences.",
            fields={
                "description": [
                    f"At least {MIN_DESCRIPTION_CHARS} characters: what arrives, what is decided, who approves, "
                    "what happens at the end."
                ]
            },
        )
    if len(text) > MAX_DESCRIPTION_CHARS:
        raise ValidationFailed(
            "The description is too long.",
            fields={"description": [f"At most {MAX_DESCRIPTION_CHARS} characters (this one has {len(text)})."]},
        )
    return text


def workflow_draft_propose(
    *, actor: User, description: str, team: Team | None = None, endpoint: str | None = None
) -> DraftProposal:
    """Ask the model for a workflow that does what `description` says, check it, repair it once, and keep it as a
    `DraftProposal` for `actor` to review (audited as `draft_proposal.created`).

    Refuses (ValidationFailed, naming the field) a description shorter than MIN_DESCRIPTION_CHARS or longer than
    MAX_DESCRIPTION_CHARS, a team the actor may not give workflows to, and an unknown model endpoint; Forbidden
    when the actor may not create workflows; RateLimited past `draft_rate_check`'s limit (counted only once the
    request is otherwise fine, so a mistyped form costs none of it); ApplicationError when the model cannot be
    reached; `DraftRefused`
    listing the problems when the answer is still invalid after one repair. Nothing but the model calls' records
    is written unless a proposal is made.

    Not one transaction: a model call can take a minute, and no row lock or transaction is held across it. The
    checks run in savepoints that are rolled back; the proposal, its calls and its audit event commit together.
    """
    if not actor.has_perm("workflows.add_workflow"):
        raise Forbidden("Only analysts may draft workflows.")
    text = _description_clean(description)
    if team is not None and not team_list_assignable(actor).filter(pk=team.pk).exists():
        raise ValidationFailed("Check the highlighted field.", fields={"team": ["Choose one of your teams."]})
    try:
        endpoints = [endpoint_resolve(endpoint or None)]
    except ApplicationError as error:
        raise ValidationFailed("Check the highlighted field.", fields={"model": [error.message]}) from None
    draft_rate_check(actor=actor)

    system = draft_system_prompt(actor)
    template_sha256 = hashlib.sha256((INSTRUCTIONS + json.dumps(EXAMPLE, sort_keys=True)).encode()).hexdigest()
    gateway = Gateway(CallScope(run_id=None, step_run_id=None, step_key="draft"))
    schema = draft_reply_schema()

    def ask(prompt: str, purpose: str) -> str:
        request = CallRequest(
            prompt=prompt,
            system=system,
            json_schema=schema,
            max_new_tokens=_max_new_tokens(endpoints[0], len(system) + len(prompt)),
            purpose=purpose,
            template_sha256=template_sha256,
        )
        try:
            return async_to_sync(gateway.acall)(request, endpoints).result.text
        except InferenceError as error:
            _calls_store(gateway.scope.calls)
            raise ApplicationError(f"The model could not draft the workflow: {error}") from None

    first = answer_check(actor=actor, text=ask(draft_user_prompt(text), "draft"), team=team)
    checked, repaired = first, []
    if first.problems or first.explanation_problems:
        repaired = first.problems + first.explanation_problems
        checked = answer_check(
            actor=actor, text=ask(repair_user_prompt(text, first.shown, repaired), "draft-repair"), team=team
        )
        if checked.problems and not first.problems:
            # The repair was asked only for missing explanations and broke the workflow: the first answer stands.
            checked, repaired = first, []
    if checked.problems or checked.document is None:
        _calls_store(gateway.scope.calls)
        raise DraftRefused(checked.problems, checked.shown)
    # A step the repair still left unexplained is shown as such; it is no reason to throw a valid draft away.
    return _proposal_store(
        actor=actor,
        team=team,
        description=text,
        checked=checked,
        repaired=repaired,
        calls=gateway.scope.calls,
    )


@transaction.atomic
def _proposal_store(
    *,
    actor: User,
    team: Team | None,
    description: str,
    checked: CheckedAnswer,
    repaired: list[DraftProblem],
    calls: list[InferenceCall],
) -> DraftProposal:
    stored = _calls_store(calls)
    assert checked.document is not None
    proposal = DraftProposal.objects.create(
        author=actor,
        team=team,
        description=description,
        document=checked.document,
        explanations=checked.explanations,
        summary=checked.summary,
        problems_repaired=[problem_text(problem) for problem in repaired[:MAX_PROBLEMS_SHOWN]],
        calls=[_call_summary(call) for call in stored],
    )
    audit_record(
        actor=actor,
        verb="draft_proposal.created",
        target=proposal,
        data={
            "name": checked.document["metadata"]["name"],
            "steps": len(checked.document["spec"]["graph"]["steps"]),
            "repaired": bool(repaired),
            "calls": [call.pk for call in stored],
            "team": team.slug if team else None,
        },
    )
    return proposal


def _proposal_locked(actor: User, proposal: DraftProposal) -> DraftProposal:
    locked = DraftProposal.objects.select_for_update().get(pk=proposal.pk)
    if locked.author_id != actor.pk:
        raise Forbidden("Only the analyst who asked for this draft may accept or discard it.")
    if locked.state != DraftProposal.State.PROPOSED:
        raise Conflict(f"This draft was {locked.get_state_display().lower()} already.")
    return locked


def _free_slug(name: str) -> str:
    base = slugify(name)[:100] or "drafted-workflow"
    if base in RESERVED_SLUGS:
        base = f"{base}-workflow"
    slug, number = base, 2
    while Workflow.objects.filter(slug=slug).exists():
        slug, number = f"{base}-{number}", number + 1
    return slug


@transaction.atomic
def draft_proposal_accept(*, actor: User, proposal: DraftProposal, name: str = "") -> Workflow:
    """Create the proposal's workflow, with the document as its draft, through the import service (which checks
    and audits it as `workflow.imported`); the workflow is named `name` (else the model's name) with a slug
    free now. Only the author, while the proposal is proposed. Audited as `draft_proposal.accepted`."""
    proposal = _proposal_locked(actor, proposal)
    document = json.loads(json.dumps(proposal.document))
    chosen = " ".join(name.split()) or str(document["metadata"]["name"])
    if len(chosen) > 120:
        raise ValidationFailed("The name is too long.", fields={"name": ["At most 120 characters."]})
    document["metadata"]["name"] = chosen
    team = proposal.team
    if team is not None and not team_list_assignable(actor).filter(pk=team.pk).exists():
        raise Conflict(f'You are no longer on the team "{team.name}": draft again, for another team or none.')
    document["metadata"]["slug"] = _free_slug(chosen)
    result = workflow_import(actor=actor, text=document_dump(document), team=team, create_only=True)
    assert result.workflow is not None
    proposal.state, proposal.workflow, proposal.decided_at = (
        DraftProposal.State.ACCEPTED,
        result.workflow,
        timezone.now(),
    )
    proposal.save(update_fields=["state", "workflow", "decided_at"])
    audit_record(
        actor=actor,
        verb="draft_proposal.accepted",
        target=proposal,
        data={"workflow": result.workflow.slug, "checksum": result.checksum},
    )
    return result.workflow


@transaction.atomic
def draft_proposal_discard(*, actor: User, proposal: DraftProposal) -> DraftProposal:
    """Mark the proposal discarded (it is kept, so what was proposed stays on record). Only the author, while the
    proposal is proposed. Audited as `draft_proposal.discarded`."""
    proposal = _proposal_locked(actor, proposal)
    proposal.state, proposal.decided_at = DraftProposal.State.DISCARDED, timezone.now()
    proposal.save(update_fields=["state", "decided_at"])
    audit_record(actor=actor, verb="draft_proposal.discarded", target=proposal, data={})
    return proposal


# --- the reads ----------------------------------------------------------------------------------------------


def draft_proposal_get_for_user(user: Any, *, pk: int) -> DraftProposal:
    """The proposal if `user` asked for it, or is an admin; Http404 otherwise (its existence is not revealed)."""
    proposal = DraftProposal.objects.select_related("author", "team", "workflow").filter(pk=pk).first()
    if proposal is None or not getattr(user, "is_authenticated", False):
        raise Http404("No such draft.")
    if proposal.author_id != user.pk and not (user.is_superuser or ADMIN in user_roles(user)):
        raise Http404("No such draft.")
    return proposal
