"""What the development server says: scripted rules, schema-shaped values, a deterministic fallback.

A script is a JSON file:

    {"rules": [
        {"name": "claim POL-10442",                     # optional, shows up in logs
         "match": {"contains": "POL-10442",             # str or list of str, all must occur
                   "regex": "collision|accident",       # Python regex, searched (DOTALL)
                   "ignore_case": false},
         "route": ["chat", "generate"],                 # optional: chat | generate | completions
         "response": {"json": {...}},                   # or a plain string, or tool calls (below)
         "fault": "overloaded",                         # optional, one of FAULTS (below)
         "fault_after_tokens": 3,                       # optional, for midstream, server_error, disconnect
         "confidence": {"amount": 0.62},                # optional: how sure the "model" is of a field
         "default_confidence": 0.99}                    # optional: how sure it is of every other token
    ]}

Faults (also selectable per request with the `x-aios-fault` header, and `x-aios-fault-after-tokens`):

- `overloaded`: TGI's 429 `overloaded` (in-band on streams), as when its request semaphore is full;
- `generation`: TGI's 424 `generation` error (in-band on streams), after the prefill on non-stream requests;
- `timeout`: the server stalls silently for `stall_seconds` (no keep-alives), then carries on;
- `midstream`: `fault_after_tokens` tokens, then a `generation` error (a 424 for non-stream requests);
- `unavailable`: a plain-text 503 before anything else, as a load balancer answers for a server that is down;
- `server_error`: TGI's 500 `incomplete_generation` on non-stream requests; on streams (already 200) the
  `incomplete_generation_stream` error event TGI sends when generation ends early, after `fault_after_tokens`;
- `disconnect`: the connection closes after `fault_after_tokens` tokens with no error or final event (and,
  on non-stream requests, with no response at all).

TEI's `/embed` takes the header's overloaded, generation (424), timeout, unavailable, server_error (500)
and disconnect.

Token log-probabilities (`details.tokens`, `top_n_tokens`, chat `logprobs`) are deterministic noise spread
over [-2.01, -0.01] unless the rule scripts its confidence. `confidence` maps top-level fields of a JSON
response to probabilities in (0, 1]: each token that overlaps that field's value (by character offsets in
the reply, as `llm.extract` matches tokens to fields) gets a log-probability around ln(p), with a small
deterministic jitter that keeps the field's geometric-mean probability at p. Every other token of the reply
gets ln(`default_confidence`) with the same jitter (0.99 when only `confidence` is given); the end-of-text
token keeps its usual value. Each token's top alternatives then share what the chosen token leaves, so a
sure token has unlikely alternatives. A reply replaced by a schema-valid value (below) is not the scripted
one, so its tokens keep the usual noise.

Tool calls. On the chat route, a rule may answer as a model that calls tools (OpenAI's `tools` API):

    "response": {"tool_calls": [{"name": "lookup", "arguments": {"claim_id": "C-7"}},
                                {"name": "notify", "arguments": {}}],     # one or more, in this order
                 "content": "Looking that up."}                          # optional text beside the calls

A request that offers `tools` gets an assistant message with exactly those calls and `finish_reason`
"tool_calls"; each call's arguments are the object given (`{}` when left out), and the tokens counted are
those of the content and of the arguments as JSON. A name that is not among the request's tools is TGI's
422 `tool_error`; so is a `tool_choice` naming a function the rule does not call. Such a rule matching a
request without `tools` (or with `tool_choice` "none"), or a /generate or /v1/completions request, is a
422 `script_error` naming the rule: the script is wrong, not the request. When the offered tools meet a
rule with a plain reply (text or json) and `tool_choice` is "auto" (or left out), the model chose not to
call a tool: an ordinary content message, `finish_reason` "stop". With `tool_choice` "required" or a named
function, or when no rule matches, the (first or named) tool is called with schema-shaped arguments (the
matching rule's JSON, when it fits the tool's parameters). The server's `--tool-call-style` decides the
wire shape: `tgi` (arguments as an object, ids "0", "1", ...) or `openai` (arguments as a JSON string, ids
`call_<n>` numbered on from the calls already in the conversation, as vLLM sends them); `--no-tools`
refuses every request with `tools` as vLLM does without `--enable-auto-tool-choice` (HTTP 400).

What a rule matches. On the chat route the text matched is every message of the conversation, one per
line: its content (text parts of a list content), and for an assistant message with `tool_calls` one line
per call, the tool's name, a space and the arguments as JSON (`lookup {"claim_id": "C-7"}`: an arguments
string the client sends is parsed and written again that way, so it reads as the script wrote it). A tool
result (a "tool" message) is matched by its content. An agent's loop is therefore scripted by ordering its
rules latest turn first, since the first matching rule wins and every turn repeats the earlier ones:

    {"rules": [
        {"match": {"contains": ["Triage claim C-7", "RESULT-B"]}, "response": "Done: C-7 is covered."},
        {"match": {"contains": ["Triage claim C-7", "RESULT-A"]},
         "response": {"tool_calls": [{"name": "policy", "arguments": {"claim_id": "C-7"}}]}},
        {"match": {"contains": "Triage claim C-7"},
         "response": {"tool_calls": [{"name": "lookup", "arguments": {"claim_id": "C-7"}}]}}
    ]}

where the `lookup` tool's result contains RESULT-A and the `policy` tool's RESULT-B: the first turn calls
`lookup`, the second (which holds RESULT-A) calls `policy`, the third answers.

A bare list of rules is accepted too. Each rule has an implicit `"kind": "scripted"`; the field is
reserved so that recorded exchanges can join the same file later without a format change.

Selection order for one request: the first matching rule; otherwise, if the request constrains the
output (a JSON schema or regex), a deterministic value that satisfies it; otherwise a fallback text
derived from the prompt. A scripted reply that does not satisfy the request's constraint is replaced
by the constrained value, because a server doing guided decoding could never have produced it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import schema as json_schema
from . import tokenizer
from .engine import Constraint, InferError

ROUTES = ("chat", "generate", "completions")
FAULTS = ("overloaded", "generation", "timeout", "midstream", "unavailable", "server_error", "disconnect")
RULE_KINDS = ("scripted",)
FALLBACK_PREFIX = "[AIOS development server] "
DEFAULT_CONFIDENCE = 0.99
# How far a scripted token's log-probability strays from its group's ln(p), as a fraction of ln(p): each
# stays within [1.5, 0.5] x ln(p), so a sure field never shows a doubtful token, nor a doubtful one a sure token.
JITTER = 0.5


class ScriptError(ValueError):
    """The script file is unusable; the message names the file and the rule."""


@dataclass(frozen=True)
class ToolCall:
    """One scripted tool call: the tool's name and its arguments (a JSON object)."""

    name: str
    arguments: Mapping[str, Any]

    @property
    def arguments_text(self) -> str:
        """The arguments as the "model" writes them: JSON with the default separators, UTF-8 kept."""
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class Rule:
    """One scripted rule, already checked."""

    name: str
    contains: tuple[str, ...]
    regex: re.Pattern[str] | None
    ignore_case: bool
    routes: tuple[str, ...]
    response: str | None
    response_json: Any
    has_json: bool
    fault: str | None
    fault_after_tokens: int | None
    confidence: Mapping[str, float] | None = None
    default_confidence: float | None = None
    # The calls of a tool-call response; `response` then holds its optional content.
    tool_calls: tuple[ToolCall, ...] | None = None
    origin: str = "<inline>"

    @property
    def scripts_confidence(self) -> bool:
        return self.confidence is not None or self.default_confidence is not None

    def matches(self, text: str, route: str) -> bool:
        if self.routes and route not in self.routes:
            return False
        haystack = text.lower() if self.ignore_case else text
        for needle in self.contains:
            if (needle.lower() if self.ignore_case else needle) not in haystack:
                return False
        return not (self.regex is not None and self.regex.search(text) is None)


@dataclass(frozen=True)
class Reply:
    """The chosen reply text and any fault the rule asks for."""

    text: str
    source: str  # "script" | "schema" | "fallback"
    rule: str | None = None
    fault: str | None = None
    fault_after_tokens: int | None = None
    # One log-probability per piece of `text` (`tokenizer.split`) when the rule scripts its confidence.
    logprobs: tuple[float, ...] | None = None
    # A tool-call reply: its calls, and `text` cut into pieces segment by segment (content, then each
    # call's arguments), so that no token straddles two of them and a stream can tell whose token it is.
    tool_calls: tuple[ToolCall, ...] | None = None
    pieces: tuple[str, ...] | None = None


class Script:
    """An ordered list of rules loaded from a script file (or none)."""

    def __init__(self, rules: list[Rule], origin: str = "<none>") -> None:
        self.rules = rules
        self.origin = origin

    @classmethod
    def empty(cls) -> Script:
        return cls([], "<none>")

    @classmethod
    def load(cls, path: str | Path) -> Script:
        """Read and check a script file; raises ScriptError with a readable reason."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScriptError(f"{path}: cannot read script ({exc.strerror})") from exc
        except json.JSONDecodeError as exc:
            raise ScriptError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        return cls.from_data(data, str(path))

    @classmethod
    def from_data(cls, data: Any, origin: str = "<inline>") -> Script:
        raw_rules = data.get("rules") if isinstance(data, dict) else data
        if not isinstance(raw_rules, list):
            raise ScriptError(f"{origin}: expected a list of rules or an object with a 'rules' list")
        return cls([_parse_rule(raw, index, origin) for index, raw in enumerate(raw_rules)], origin)

    def find(self, text: str, route: str) -> Rule | None:
        for rule in self.rules:
            if rule.matches(text, route):
                return rule
        return None


def _parse_rule(raw: Any, index: int, origin: str) -> Rule:
    where = f"{origin}: rule {index + 1}"
    if not isinstance(raw, dict):
        raise ScriptError(f"{where}: expected an object")
    if isinstance(raw.get("name"), str) and raw["name"]:
        where += f" {json.dumps(raw['name'], ensure_ascii=False)}"
    kind = raw.get("kind", "scripted")
    if kind not in RULE_KINDS:
        raise ScriptError(f"{where}: kind {kind!r} is not supported (known: {', '.join(RULE_KINDS)})")
    match = raw.get("match", {})
    if not isinstance(match, dict):
        raise ScriptError(f"{where}: 'match' must be an object")
    contains = match.get("contains", [])
    if isinstance(contains, str):
        contains = [contains]
    if not isinstance(contains, list) or not all(isinstance(c, str) for c in contains):
        raise ScriptError(f"{where}: 'match.contains' must be a string or a list of strings")
    ignore_case = bool(match.get("ignore_case", False))
    regex = None
    if "regex" in match:
        try:
            regex = re.compile(str(match["regex"]), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
        except re.error as exc:
            raise ScriptError(f"{where}: 'match.regex' is not a valid regular expression ({exc})") from exc
    routes = raw.get("route", [])
    if isinstance(routes, str):
        routes = [routes]
    if not isinstance(routes, list) or any(r not in ROUTES for r in routes):
        raise ScriptError(f"{where}: 'route' must list some of {', '.join(ROUTES)}")
    fault = raw.get("fault")
    if fault is not None and fault not in FAULTS:
        raise ScriptError(f"{where}: 'fault' must be one of {', '.join(FAULTS)}")
    fault_after = raw.get("fault_after_tokens")
    if fault_after is not None and (not isinstance(fault_after, int) or fault_after < 0):
        raise ScriptError(f"{where}: 'fault_after_tokens' must be a non-negative integer")
    response = raw.get("response")
    text: str | None = None
    json_value: Any = None
    has_json = False
    tool_calls: tuple[ToolCall, ...] | None = None
    if isinstance(response, dict) and "tool_calls" in response:
        tool_calls, text = _parse_tool_calls(response, where)
        if routes and "chat" not in routes:
            raise ScriptError(f"{where}: tool calls are answered on the chat route only, but 'route' leaves it out")
        for key in ("confidence", "default_confidence"):
            if raw.get(key) is not None:
                raise ScriptError(f"{where}: '{key}' cannot be scripted for a tool-call response")
    elif isinstance(response, str):
        text = response
    elif isinstance(response, dict) and "json" in response:
        json_value = response["json"]
        has_json = True
    elif isinstance(response, dict) and "text" in response and isinstance(response["text"], str):
        text = response["text"]
    elif response is None and fault is not None:
        text = None
    else:
        raise ScriptError(
            f'{where}: \'response\' must be a string, {{"text": ...}}, {{"json": ...}} or {{"tool_calls": [...]}}'
        )
    confidence = _parse_confidence(raw.get("confidence"), json_value if has_json else None, where)
    default_confidence = raw.get("default_confidence")
    if default_confidence is not None:
        _check_probability(default_confidence, f"{where}: 'default_confidence'")
    return Rule(
        name=str(raw.get("name") or f"rule {index + 1}"),
        contains=tuple(contains),
        regex=regex,
        ignore_case=ignore_case,
        routes=tuple(routes),
        response=text,
        response_json=json_value,
        has_json=has_json,
        fault=fault,
        fault_after_tokens=fault_after,
        confidence=confidence,
        default_confidence=default_confidence,
        tool_calls=tool_calls,
        origin=origin,
    )


def _parse_tool_calls(response: dict[str, Any], where: str) -> tuple[tuple[ToolCall, ...], str | None]:
    """The calls and optional content of `{"tool_calls": [...], "content": "..."}`, checked."""
    unknown = sorted(set(response) - {"tool_calls", "content"})
    if unknown:
        raise ScriptError(
            f"{where}: a tool-call response has 'tool_calls' and an optional 'content', not "
            + ", ".join(repr(key) for key in unknown)
        )
    content = response.get("content")
    if content is not None and not isinstance(content, str):
        raise ScriptError(f"{where}: 'response.content' must be a string")
    raw_calls = response["tool_calls"]
    if not isinstance(raw_calls, list) or not raw_calls:
        raise ScriptError(f"{where}: 'response.tool_calls' must be a non-empty list of calls")
    calls = []
    for number, raw_call in enumerate(raw_calls, start=1):
        label = f"{where}: tool call {number}"
        if not isinstance(raw_call, dict):
            raise ScriptError(f'{label} must be an object {{"name": ..., "arguments": {{...}}}}')
        extra = sorted(set(raw_call) - {"name", "arguments"})
        if extra:
            raise ScriptError(f"{label} has 'name' and 'arguments', not " + ", ".join(repr(key) for key in extra))
        name = raw_call.get("name")
        if not isinstance(name, str) or not name:
            raise ScriptError(f"{label} needs a 'name' (the tool's name, a non-empty string)")
        arguments = raw_call.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ScriptError(f"{label} ({name}): 'arguments' must be a JSON object")
        calls.append(ToolCall(name=name, arguments=arguments))
    return tuple(calls), content


def _parse_confidence(raw: Any, response_json: Any, where: str) -> dict[str, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ScriptError(
            f"{where}: 'confidence' must be an object mapping top-level fields of the JSON response to "
            "probabilities in (0, 1]"
        )
    if not isinstance(response_json, dict):
        raise ScriptError(f"{where}: 'confidence' needs a response of the form {{\"json\": {{...}}}} (an object)")
    for field_name, probability in raw.items():
        if field_name not in response_json:
            known = ", ".join(json.dumps(name, ensure_ascii=False) for name in response_json) or "none"
            raise ScriptError(
                f"{where}: 'confidence' names {json.dumps(field_name, ensure_ascii=False)}, "
                f"which is not a top-level field of the response (its fields: {known})"
            )
        _check_probability(probability, f"{where}: 'confidence.{field_name}'")
    return dict(raw)


def _check_probability(value: Any, label: str) -> None:
    # bool is an int in Python, and json.loads accepts NaN and Infinity: neither is a probability.
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and 0 < value <= 1):
        raise ScriptError(f"{label} must be a probability in (0, 1], not {json.dumps(value)}")


def _top_level_spans(text: str) -> list[tuple[str, int, int]]:
    """(field, start, end) of each top-level value of a JSON object `text`, in order; as far as it parses."""
    decoder = json.JSONDecoder()
    spans: list[tuple[str, int, int]] = []

    def skip(index: int) -> int:
        while index < len(text) and text[index] in " \t\n\r":
            index += 1
        return index

    index = skip(0)
    if not text.startswith("{", index):
        return spans
    index = skip(index + 1)
    try:
        while text.startswith('"', index):
            key, index = decoder.raw_decode(text, index)
            index = skip(index)
            if not text.startswith(":", index):
                break
            start = skip(index + 1)
            _, end = decoder.raw_decode(text, start)
            spans.append((key, start, end))
            index = skip(end)
            if not text.startswith(",", index):
                break
            index = skip(index + 1)
    except json.JSONDecodeError:
        pass
    return spans


def scripted_logprobs(text: str, confidence: Mapping[str, float], default: float) -> tuple[float, ...]:
    """One log-probability per piece of `text`: ln(p) of the field whose value the piece overlaps, else
    ln(`default`), each varied by a deterministic jitter that averages to zero over the field's pieces, so
    the field's geometric-mean probability stays p (to the 4-decimal rounding of each log-probability)."""
    pieces = tokenizer.tokenize(text)
    spans = [(key, start, end) for key, start, end in _top_level_spans(text) if key in confidence]
    groups: dict[str | None, list[int]] = {}
    for index, piece in enumerate(pieces):
        field_name = next((key for key, start, end in spans if piece.start < end and piece.stop > start), None)
        groups.setdefault(field_name, []).append(index)
    logprobs = [0.0] * len(pieces)
    for field_name, members in groups.items():
        target = math.log(confidence[field_name] if field_name is not None else default)
        offsets = [JITTER / 2 * tokenizer.jitter(pieces[i].text, i) for i in members]
        mean = sum(offsets) / len(offsets)
        for i, offset in zip(members, offsets, strict=True):
            # Rounded to 4 decimals like every log-probability here (it prints alike as f32 and float);
            # `+ 0.0` turns the -0.0 of a certain token into 0.0.
            logprobs[i] = min(round(target * (1 + offset - mean), 4), 0.0) + 0.0
    return tuple(logprobs)


def satisfies(text: str, constraint: Constraint) -> bool:
    """Whether a finished reply meets the request's grammar."""
    if constraint.kind == "regex":
        try:
            return re.fullmatch(constraint.pattern, text, re.DOTALL) is not None
        except re.error:
            return False
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return json_schema.is_valid(value, constraint.schema)


def constrained_text(constraint: Constraint, fallback: str) -> str:
    """A deterministic reply that satisfies `constraint`."""
    if constraint.kind == "regex":
        generated = json_schema.regex_example(constraint.pattern)
        return generated if generated is not None else fallback
    try:
        value = json_schema.example_value(constraint.schema)
    except json_schema.SchemaError:
        value = {}
    return json.dumps(value, ensure_ascii=False)


def fallback_text(prompt_tail_source: str) -> str:
    """The deterministic reply when nothing is scripted: labelled, and derived from the prompt."""
    lines = [line.strip() for line in prompt_tail_source.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if len(last) > 120:
        last = last[:117].rstrip() + "..."
    words = len(prompt_tail_source.split())
    if not last:
        return FALLBACK_PREFIX + "No language model runs here; this is a deterministic placeholder reply."
    return FALLBACK_PREFIX + f'This is a deterministic placeholder reply to a {words}-word prompt ending with: "{last}"'


def tool_call_pieces(content: str | None, calls: tuple[ToolCall, ...]) -> tuple[str, ...]:
    """The tokens of a tool-call reply: its content's, then each call's arguments', never merged."""
    segments = [content or "", *(call.arguments_text for call in calls)]
    return tuple(piece for segment in segments for piece in tokenizer.split(segment))


def wrong_tool_call_rule(rule: Rule, why: str) -> InferError:
    """The error for a tool-call rule that matched a request it cannot answer."""
    return InferError.script(
        f"rule {json.dumps(rule.name, ensure_ascii=False)} of {rule.origin} answers with tool calls, but {why}"
    )


def choose_reply(
    script: Script,
    *,
    route: str,
    match_text: str,
    tail_source: str,
    constraint: Constraint | None,
    tool_calls_allowed: bool = False,
) -> Reply:
    """Pick the reply for one request (see the module docstring for the order).

    A rule's tool calls are the reply only where the caller allows them (the chat route with `tools`);
    anywhere else such a rule raises InferError (`script_error`).
    """
    rule = script.find(match_text, route)
    fallback = fallback_text(tail_source)
    if rule is not None and rule.tool_calls is not None:
        if not tool_calls_allowed:
            where = {"generate": "TGI's generate routes", "completions": "/v1/completions"}.get(route, route)
            if route == "chat":
                raise wrong_tool_call_rule(rule, "the request offers no tools")
            raise wrong_tool_call_rule(rule, f"tool calls are answered on /v1/chat/completions only, not on {where}")
        pieces = tool_call_pieces(rule.response, rule.tool_calls)
        return Reply(
            "".join(pieces),
            "script",
            rule.name,
            rule.fault,
            rule.fault_after_tokens,
            tool_calls=rule.tool_calls,
            pieces=pieces,
        )
    if rule is not None:
        if rule.has_json:
            text = json.dumps(rule.response_json, ensure_ascii=False)
        elif rule.response is not None:
            text = rule.response
        else:
            text = fallback
        if constraint is not None and not satisfies(text, constraint):
            text = constrained_text(constraint, fallback)
            return Reply(text, "schema", rule.name, rule.fault, rule.fault_after_tokens)
        logprobs = None
        if rule.scripts_confidence:
            default = rule.default_confidence if rule.default_confidence is not None else DEFAULT_CONFIDENCE
            logprobs = scripted_logprobs(text, rule.confidence or {}, default)
        return Reply(text, "script", rule.name, rule.fault, rule.fault_after_tokens, logprobs)
    if constraint is not None:
        return Reply(constrained_text(constraint, fallback), "schema")
    return Reply(fallback, "fallback")
