"""Run data for people: inputs, step outputs and results as labelled fields, tables and text.

Pure functions from JSON values (plus what the builder knows about them: the input schema, a step's type and
configuration) to a few small display structures that `templates/runs/_value.html` renders. Every text here is
plain text that the template engine escapes; model output is untrusted, so nothing is ever marked safe.

Value kinds (each has a `kind` the template switches on):

- `Text`    one value as words: "Yes", "12,400", "3 November 2024", a paragraph with its line breaks kept;
- `Fields`  labelled rows (a two-column Field | Value table), optionally with a confidence per row;
- `Table`   rows of records that share their keys, one column per key;
- `Bullets` a list of values.

Nesting stops at `MAX_DEPTH` levels; anything deeper is shown as compact JSON text. Long lists and texts are
cut with a note, since the page's "View raw" toggle always holds the whole value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any, ClassVar

from apps.workflows.input_schema import property_order

MAX_DEPTH = 3  # tables inside tables inside tables; below that, compact JSON text
MAX_ITEMS = 50  # rows of a table, entries of a list, fields of a record
MAX_CHARS = 10_000  # of one text
LONG_TEXT_CHARS = 120  # longer texts (or any with a line break) are shown as a paragraph
LOW_CONFIDENCE = 0.7

NOT_GIVEN = "Not given"
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


@dataclass(frozen=True)
class Text:
    """One value in words. `long`: a paragraph whose line breaks are kept; `muted`: a placeholder such as
    "Not given", not data."""

    text: str
    long: bool = False
    muted: bool = False
    kind: ClassVar[str] = "text"


@dataclass(frozen=True)
class Confidence:
    """How sure the model was of one value (0..1); `low` below LOW_CONFIDENCE (or the step's threshold)."""

    value: float
    low: bool
    # True where the row's value already is the percentage (a classification): only "low" is added.
    in_value: bool = False

    @property
    def percent(self) -> str:
        return f"{round(self.value * 100)}%"


@dataclass(frozen=True)
class Field:
    """One labelled row: `label` from the schema's title (else the humanised name), `description` as help."""

    label: str
    value: Value
    description: str = ""
    confidence: Confidence | None = None


@dataclass(frozen=True)
class Fields:
    """Labelled rows; `more` counts the rows left out (MAX_ITEMS)."""

    rows: tuple[Field, ...]
    more: int = 0
    kind: ClassVar[str] = "fields"


@dataclass(frozen=True)
class Table:
    """Records with the same keys: `columns` are their labels, `rows` their values in column order."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Value, ...], ...]
    more: int = 0
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Bullets:
    entries: tuple[Value, ...]
    more: int = 0
    kind: ClassVar[str] = "bullets"


Value = Text | Fields | Table | Bullets


@dataclass(frozen=True)
class Section:
    """A part of a run's result: the output of one of its final steps (`heading` "" when there is one)."""

    heading: str
    value: Value


# --- values ------------------------------------------------------------------------------------------------


def humanise(name: str) -> str:
    """A field name as a label: "policy_number" and "policyNumber" → "Policy number"."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(name)).replace("_", " ").replace("-", " ")
    words = " ".join(words.split())
    return words[:1].upper() + words[1:].lower() if words else str(name)


def _schema(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _properties(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    properties = schema.get("properties")
    return properties if isinstance(properties, Mapping) else {}


def _label(name: str, schema: Mapping[str, Any]) -> str:
    title = schema.get("title")
    return title.strip() if isinstance(title, str) and title.strip() else humanise(name)


def _description(schema: Mapping[str, Any]) -> str:
    description = schema.get("description")
    return description.strip() if isinstance(description, str) else ""


def format_number(value: int | float) -> str:
    """Thousands separators; whole floats without decimals (850.0 → "850"), others as given (0.25)."""
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1e15 or abs(value) < 1e-6:
        return f"{value:g}"
    return f"{round(value, 6):,}"


def format_date_text(text: str, schema_format: str = "") -> str | None:
    """An ISO date or date-time as words ("3 November 2024", "3 November 2024, 14:05 UTC"); None when the
    text is not one."""
    try:
        if schema_format == "date" or (not schema_format and ISO_DATE.match(text)):
            day = date.fromisoformat(text)
            return f"{day.day} {day:%B %Y}"
        if schema_format == "date-time" or (not schema_format and ISO_DATETIME.match(text)):
            moment = datetime.fromisoformat(text)
            words = f"{moment.day} {moment:%B %Y}, {moment:%H:%M}"
            offset, zone = moment.utcoffset(), f"{moment:%z}"  # "+0200"
            if offset is not None:
                words += " UTC" if not offset else f" UTC{zone[:3]}:{zone[3:5]}"
            return words
    except ValueError:
        return None
    return None


def _text(text: str) -> Text:
    cut = len(text) > MAX_CHARS
    shown = text[:MAX_CHARS] + " … (shortened: the whole text is under View raw)" if cut else text
    return Text(shown, long=cut or "\n" in text or len(text) > LONG_TEXT_CHARS)


def _compact_json(value: Any) -> Text:
    return _text(json.dumps(value, ensure_ascii=False, sort_keys=False, default=str))


def present_value(value: Any, schema: Any = None, *, depth: int = 0) -> Value:
    """Any JSON value for people, guided by its JSON Schema where there is one: booleans as Yes/No, numbers
    with thousands separators, ISO dates in words, objects as labelled fields, lists of records with the
    same keys as a table, other lists as bullets. Containers deeper than MAX_DEPTH become compact JSON."""
    spec = _schema(schema)
    if value is None:
        return Text(NOT_GIVEN, muted=True)
    if isinstance(value, bool):
        return Text("Yes" if value else "No")
    if isinstance(value, int | float):
        return Text(format_number(value))
    if isinstance(value, str):
        if not value.strip():
            return Text("Empty", muted=True)
        schema_format = spec.get("format") if isinstance(spec.get("format"), str) else ""
        as_date = format_date_text(value, schema_format if schema_format in ("date", "date-time") else "")
        return Text(as_date) if as_date else _text(value)
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            return _compact_json(value)
        return present_fields(value, spec, depth=depth)
    if isinstance(value, list):
        return _present_list(value, spec, depth)
    return _text(str(value))


def _present_list(items: list[Any], schema: Mapping[str, Any], depth: int) -> Value:
    if not items:
        return Text("None", muted=True)
    if depth >= MAX_DEPTH:
        return _compact_json(items)
    item_schema = _schema(schema.get("items"))
    shown, more = items[:MAX_ITEMS], max(0, len(items) - MAX_ITEMS)
    first = shown[0]
    if (
        isinstance(first, Mapping)
        and first
        and all(isinstance(item, Mapping) and item.keys() == first.keys() for item in shown)
    ):
        columns = _ordered_keys(first, item_schema)
        specs = _properties(item_schema)
        return Table(
            columns=tuple(_label(key, _schema(specs.get(key))) for key in columns),
            rows=tuple(
                tuple(present_value(item[key], specs.get(key), depth=depth + 1) for key in columns) for item in shown
            ),
            more=more,
        )
    return Bullets(entries=tuple(present_value(item, item_schema, depth=depth + 1) for item in shown), more=more)


def schema_order(schema: Mapping[str, Any]) -> list[str]:
    """The schema's fields in the order the analyst designed them (see `property_order`)."""
    return property_order(dict(schema))


def _ordered_keys(data: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """The schema's order first (what the analyst designed), then whatever else the data has."""
    known = [key for key in schema_order(schema) if key in data]
    return known + [key for key in data if key not in known]


def present_fields(
    data: Mapping[str, Any],
    schema: Any = None,
    *,
    depth: int = 0,
    confidence: Any = None,
    low_below: float = LOW_CONFIDENCE,
    include_missing: bool = False,
) -> Fields | Text:
    """An object as labelled rows, labels and help from the schema's properties. `confidence` maps field
    names to 0..1 (shown beside the value, "low" below `low_below`); `include_missing` lists the schema's
    fields that the data lacks as "Not given" (a form's view of its fields)."""
    spec_of = _schema(schema)
    properties = _properties(spec_of)
    keys = schema_order(spec_of) if include_missing else _ordered_keys(data, spec_of)
    keys += [key for key in data if key not in keys]
    if not keys:
        return Text("No fields", muted=True)
    scores = confidence if isinstance(confidence, Mapping) else {}
    rows = []
    for key in keys[:MAX_ITEMS]:
        spec = _schema(properties.get(key))
        score = scores.get(key)
        rows.append(
            Field(
                label=_label(str(key), spec),
                value=present_value(data.get(key), spec, depth=depth + 1),
                description=_description(spec),
                confidence=_confidence(score, low_below),
            )
        )
    return Fields(rows=tuple(rows), more=max(0, len(keys) - MAX_ITEMS))


def _confidence(score: Any, low_below: float, *, in_value: bool = False) -> Confidence | None:
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        return None
    score = min(max(float(score), 0.0), 1.0)
    return Confidence(value=score, low=score < low_below, in_value=in_value)


# --- run inputs ------------------------------------------------------------------------------------------


def run_inputs_display(input_schema: Any, inputs: Any) -> Value:
    """A run's inputs as the fields of its start form: every field of the version's input schema, in its
    order, with its title (a field left empty says so)."""
    if isinstance(inputs, Mapping):
        return present_fields(inputs, input_schema, include_missing=True)
    return present_value(inputs)


# --- step outputs ----------------------------------------------------------------------------------------

Presenter = Callable[[Mapping[str, Any], Mapping[str, Any]], Value | None]
PRESENTERS: dict[str, Presenter] = {}


def presenter(slug: str) -> Callable[[Presenter], Presenter]:
    """Register how a step type's output reads; a presenter returns None for a shape it does not know (the
    generic rendering takes over), since a person can skip a step with any output of their own."""

    def add(function: Presenter) -> Presenter:
        PRESENTERS[slug] = function
        return function

    return add


def step_output_display(step_type: str, config: Any, output: Any) -> Value:
    """A step's output for people: its type's presenter where the shape is the one it knows, else generic."""
    function = PRESENTERS.get(step_type)
    if function is not None and isinstance(output, Mapping):
        shown = function(_schema(config), output)
        if shown is not None:
            return shown
    return present_value(output)


@presenter("llm.extract")
def _llm_extract(config: Mapping[str, Any], output: Mapping[str, Any]) -> Value | None:
    if "data" not in output:
        return None
    data, schema = output["data"], config.get("json_schema")
    if isinstance(data, Mapping):
        return present_fields(data, schema, confidence=output.get("confidence"))
    return present_value(data, schema)


@presenter("llm.generate")
def _llm_generate(config: Mapping[str, Any], output: Mapping[str, Any]) -> Value | None:
    if "data" in output:
        return _llm_extract(config, output)
    text = output.get("text")
    if isinstance(text, str) and set(output) == {"text"}:
        return (
            Text(_text(text).text, long=True) if text.strip() else Text("The model replied with no text.", muted=True)
        )
    return None


@presenter("llm.classify")
def _llm_classify(config: Mapping[str, Any], output: Mapping[str, Any]) -> Value | None:
    if "label" not in output or "branch" not in output:
        return None
    label, branch = output.get("label"), output.get("branch")
    # "Low" here means below the step's own threshold: the one that chose the route.
    configured = config.get("threshold", LOW_CONFIDENCE)
    usable = isinstance(configured, int | float) and not isinstance(configured, bool)
    threshold = float(configured) if usable else LOW_CONFIDENCE
    confidence = _confidence(output.get("confidence"), threshold, in_value=True)
    at = f"{round(threshold * 100)}%"
    if branch == "confident":
        route = f"Confident: at or above the {at} threshold, so the run goes on along the “confident” path."
    elif branch == "low_confidence":
        route = f"Low confidence: below the {at} threshold, so the run takes the “low confidence” path."
    else:
        route = str(branch)
    rows = [
        Field("Label", Text(str(label)) if label is not None else Text("None of the labels fitted", muted=True)),
        Field(
            "Confidence",
            Text(confidence.percent if confidence else NOT_GIVEN, muted=confidence is None),
            confidence=confidence,
        ),
        Field("Route", Text(route)),
    ]
    scores = output.get("scores")
    if isinstance(scores, Mapping) and len(scores) > 1:
        rows.append(
            Field(
                "Scores",
                Fields(rows=tuple(Field(str(name), Text(_percent(score))) for name, score in scores.items())),
                description="How often each label was chosen, or its probability.",
            )
        )
    return Fields(rows=tuple(rows))


def _percent(score: Any) -> str:
    if isinstance(score, bool) or not isinstance(score, int | float):
        return str(score)
    return f"{round(float(score) * 100)}%"


DECISIONS = {
    "approved": "Approved",
    "rejected": "Rejected",
    "expired": "Expired: nobody decided in time",
}


@presenter("human.approval")
def _human_approval(config: Mapping[str, Any], output: Mapping[str, Any]) -> Value | None:
    if "decision" not in output:
        return None
    decision = output.get("decision")
    reason, decided_by, edits = output.get("reason"), output.get("decided_by"), output.get("edits")
    rows = [
        Field("Decision", Text(DECISIONS.get(str(decision), str(decision)))),
        Field(
            "Reason",
            _text(reason) if isinstance(reason, str) and reason.strip() else Text("No reason given", muted=True),
        ),
        Field("Decided by", Text(str(decided_by)) if decided_by else Text("Nobody", muted=True)),
    ]
    if isinstance(edits, Mapping) and edits:
        rows.append(Field("Changes made", present_value(edits, depth=1)))
    return Fields(rows=tuple(rows))


@presenter("http.request")
def _http_request(config: Mapping[str, Any], output: Mapping[str, Any]) -> Value | None:
    status = output.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        return None
    try:
        status_text = f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        status_text = str(status)
    body = output.get("body")
    if body is None or body == "":
        body_value: Value = Text("No body", muted=True)
    else:
        body_value = present_value(body, depth=1)
    return Fields(rows=(Field("Status", Text(status_text)), Field("Response", body_value)))


@presenter("data.transform")
def _data_transform(config: Mapping[str, Any], output: Mapping[str, Any]) -> Value | None:
    order = config.get("fields")
    ordered = list(order) if isinstance(order, Mapping) else []
    data = {key: output[key] for key in ordered if key in output} | dict(output)
    return present_fields(data)


# --- the run's result ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepFacts:
    """What the result display needs to know of a step of the version: its type, name and configuration."""

    step_type: str
    name: str
    config: Mapping[str, Any]


def run_result_display(
    output: Any, *, result_keys: list[str], steps: Mapping[str, StepFacts], step_outputs: Mapping[str, Any]
) -> list[Section]:
    """The run's output read the way its producing step's output reads. `result_keys` are the steps whose
    outputs make the result (the version's named output step, else its final steps); as in the engine, one
    such step with an output gives its output as it is, several give an object keyed by step."""
    producing = [key for key in result_keys if step_outputs.get(key) is not None]
    if len(producing) == 1 and producing[0] in steps:
        facts = steps[producing[0]]
        return [Section("", step_output_display(facts.step_type, facts.config, output))]
    if len(producing) > 1 and isinstance(output, Mapping) and set(output) <= set(steps):
        sections = []
        for key, value in output.items():
            facts = steps[key]
            sections.append(
                Section(facts.name or humanise(key), step_output_display(facts.step_type, facts.config, value))
            )
        return sections
    return [Section("", present_value(output))]


# --- an agent step's turns (llm.agent) ---------------------------------------------------------------------


@presenter("llm.agent")
def _llm_agent(config: Mapping[str, Any], output: Mapping[str, Any]) -> Value | None:
    """The agent's final answer: its data as fields (output "data"), else its text."""
    if "data" in output and output["data"] is not None:
        return _llm_extract(config, output)
    text = output.get("text")
    if not isinstance(text, str):
        return None
    return Text(_text(text).text, long=True) if text.strip() else Text("The agent gave no answer text.", muted=True)


TOOL_STATE_WORDS = {
    "pending": "queued",
    "queued": "queued",
    "running": "running",
    "waiting": "waiting",
    "succeeded": "succeeded",
    "failed": "failed",
    "skipped": "skipped",
    "cancelled": "cancelled",
}
REJECTED_PREFIX = "Rejected by"
_LEADING_DIGITS = re.compile(r"^\d+")


@dataclass(frozen=True)
class ToolCallView:
    """One tool call of an agent turn, for people: its tool, arguments, state in words, result and error.

    `state` is the CSS/badge state ("rejected" for a call a person refused); `note` is what an upper app says
    about it (the approvals app: who decides, and the inbox link)."""

    key: str
    tool: str
    step_type: str
    state: str
    state_words: str
    arguments: Value
    arguments_raw: Any
    result: Value | None
    result_raw: Any
    error: str
    note: Mapping[str, Any] | None
    duration_seconds: float | None
    # A call that waits for the person who started the run to confirm or decline it (the page offers both).
    awaits_confirmation: bool = False
    run_id: int = 0
    # The call's open incident (an at-most-once call whose outcome is unknown, or the restart cap reached): the
    # page offers retry, skip with a result, and abort, as it does for a step.
    incident: Any = None


@dataclass(frozen=True)
class AgentTurn:
    """One model reply of an agent: its text, the tool calls it asked for, and the model call's provenance."""

    number: int
    text: str
    finish: str
    calls: tuple[ToolCallView, ...]
    provenance: Mapping[str, Any] | None


@dataclass(frozen=True)
class AgentView:
    """An agent step's turns in order, the calls no turn names yet, and its totals."""

    turns: tuple[AgentTurn, ...]
    unlisted: tuple[ToolCallView, ...]
    totals: Mapping[str, Any]
    thinking: bool  # the step runs and its next reply is being written (the live stream belongs to it)


def tool_call_view(call: Any, note: Mapping[str, Any] | None = None, incident: Any = None) -> ToolCallView:
    """A tool call's StepRun as people read it."""
    definition = call.definition if isinstance(call.definition, Mapping) else {}
    state = str(call.state)
    words = TOOL_STATE_WORDS.get(state, state)
    if state == "waiting" and call.waiting_for == "approval":
        words = "waiting for approval"
    elif state == "waiting" and call.waiting_for == "confirm":
        words = "waiting for the person who started the run to confirm"
    elif state == "waiting" and call.waiting_for:
        words = f"waiting for {call.waiting_for}"
    if state == "failed" and str(call.error or "").startswith(REJECTED_PREFIX):
        state, words = "rejected", "rejected"
    elif state == "failed" and str(call.error or "").startswith("Not done: ") and "declined it" in str(call.error):
        state, words = "rejected", "declined"
    arguments = call.input if call.input is not None else {}
    shows_result = state == "succeeded" and call.output not in (None, {}, [], "")
    return ToolCallView(
        key=str(call.step_key),
        tool=str(definition.get("tool") or call.name or call.step_key),
        step_type=str(call.step_type),
        state=state,
        state_words=words,
        arguments=present_value(arguments) if arguments != {} else Text("No arguments.", muted=True),
        arguments_raw=arguments,
        result=step_output_display(call.step_type, definition.get("config") or {}, call.output)
        if shows_result
        else None,
        result_raw=call.output,
        error=str(call.error or ""),
        note=note,
        duration_seconds=call.duration_seconds,
        awaits_confirmation=str(call.state) == "waiting" and call.waiting_for == "confirm",
        run_id=int(call.run_id or 0),
        incident=incident,
    )


def model_call_provenance(call: Any) -> dict[str, Any]:
    """An InferenceCall in the shape of an LLM step's usage, for the shared provenance partial."""
    return {
        "calls": 1,
        "endpoint": call.endpoint_name,
        "model_id": call.model_id,
        "revision": call.revision,
        "prompt_version": call.template_sha256[:12],
        "parameters": call.parameters if isinstance(call.parameters, Mapping) else {},
        "seed": call.seed,
        "prompt_tokens": call.prompt_tokens,
        "generated_tokens": call.generated_tokens,
        "cost": call.cost,
        "ttft_ms": call.ttft_ms,
        "latency_ms": call.latency_ms,
        "input_sha256": call.input_sha256,
        "output_sha256": call.output_sha256,
        "replayed": call.status == "replayed",
        "status": call.status,
        "error": call.error,
    }


def agent_view(
    step: Any,
    tool_calls: list[Any],
    model_calls: list[Any],
    notes: Mapping[int, Mapping[str, Any]],
    incidents: Mapping[int, Any] | None = None,
) -> AgentView:
    """An agent step's transcript with its tool calls (StepRuns whose parent is `step`) and its model calls
    (InferenceCalls keyed "<agent key>~m<turn>", perhaps with a protocol mark after the number; a retried turn's
    last call is the one shown)."""
    incidents = incidents or {}
    calls = {call.step_key: tool_call_view(call, notes.get(call.pk), incidents.get(call.pk)) for call in tool_calls}
    by_turn: dict[int, Any] = {}
    prefix = f"{step.step_key}~m"
    for call in model_calls:
        # "agent~m3", or with the protocol's mark after the number ("agent~m3j").
        turn = _LEADING_DIGITS.match(str(call.step_key).removeprefix(prefix))
        if str(call.step_key).startswith(prefix) and turn:
            by_turn[int(turn[0])] = call  # ordered by attempt and sequence: the last one wins
    turns = []
    listed: set[str] = set()
    transcript = step.transcript if isinstance(step.transcript, list) else []
    for position, entry in enumerate(transcript, start=1):
        if not isinstance(entry, Mapping):
            continue
        turn_number = entry.get("turn")
        number = turn_number if isinstance(turn_number, int) else position
        keys = [str(key) for key in entry.get("calls") or [] if isinstance(key, str | int)]
        listed.update(keys)
        model_call = by_turn.get(number)
        turns.append(
            AgentTurn(
                number=number,
                text=str(entry.get("text") or ""),
                finish=str(entry.get("finish") or ""),
                calls=tuple(calls[key] for key in keys if key in calls),
                provenance=model_call_provenance(model_call) if model_call is not None else None,
            )
        )
    usage = step.usage if isinstance(step.usage, Mapping) else {}
    output = step.output if isinstance(step.output, Mapping) else {}
    # Tokens and cost over every turn: the step's usage holds only its latest execution's (one turn, once the
    # agent has woken up after its tool calls), so the recorded model calls are summed where there are any.
    totals = {
        "turns": output.get("turns", len(turns)),
        "tool_calls": usage.get("tool_calls", output.get("tool_calls", len(calls))),
        "argument_errors": usage.get("argument_errors", 0),
        "prompt_tokens": sum(call.prompt_tokens for call in model_calls)
        if model_calls
        else usage.get("prompt_tokens", 0),
        "generated_tokens": sum(call.generated_tokens for call in model_calls)
        if model_calls
        else usage.get("generated_tokens", 0),
        "cost": format(sum((call.cost for call in model_calls), Decimal(0)).normalize(), "f")
        if model_calls
        else usage.get("cost", 0),
        "seconds": step.duration_seconds,
    }
    thinking = str(step.state) == "running" and not any(
        call.state in ("queued", "running", "waiting") for call in calls.values()
    )
    return AgentView(
        turns=tuple(turns),
        unlisted=tuple(view for key, view in calls.items() if key not in listed),
        totals=totals,
        thinking=thinking,
    )
