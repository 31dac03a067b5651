"""Wire-level pieces of the TGI/TEI protocol: body extraction, serde-style errors, JSON and SSE bytes.

TGI's router is axum + serde. Clients (and our tests) see its exact rejection texts and framing, so this
module reproduces them:

- axum's `Json` extractor: 415 for a missing/wrong content type, 400 for malformed JSON, 422 for a
  body of the wrong shape, each as `text/plain` with axum's wording, e.g.
  "Failed to deserialize the JSON body into the target type: missing field `inputs` at line 1 column 2".
  Line and column are serde's: the position just after the object (missing field) or value (wrong type)
  at fault. Request structs are declared below with serde's semantics (unknown keys ignored, `Option`
  fields accept null, defaulted fields do not).
- serde_json's compact output (no spaces, UTF-8 kept as is, struct fields in declaration order).
- axum's SSE: `data:` with no space, events ended by a blank line, `:` comments as keep-alive.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SSE_DONE = b"data:[DONE]\n\n"
SSE_KEEP_ALIVE = b":\n\n"

JSON_CONTENT_TYPE = "application/json"
PLAIN_CONTENT_TYPE = "text/plain; charset=utf-8"
SSE_CONTENT_TYPE = "text/event-stream"


def dumps(value: Any) -> bytes:
    """serde_json-style compact JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def sse_event(value: Any) -> bytes:
    """One SSE event carrying `value` as JSON, framed exactly like axum's `Event::json_data`."""
    return b"data:" + dumps(value) + b"\n\n"


def f32_text(value: float) -> str:
    """The shortest decimal that reads back as the same f32, which is how serde prints an `f32`.

    Python floats are f64; printing them directly would show f32 rounding noise
    (`0.10000000149011612`) that a real TEI server never sends.
    """
    packed = struct.pack("<f", value)
    rounded = struct.unpack("<f", packed)[0]
    if rounded == 0:
        return "0.0"
    for digits in range(6, 10):
        text = f"{rounded:.{digits}g}"
        if struct.pack("<f", float(text)) == packed:
            break
    if "e" in text or "E" in text:
        return repr(float(text))
    return text if "." in text else text + ".0"


def embeddings_json(vectors: Iterable[Iterable[float]]) -> bytes:
    """`[[f32, ...], ...]` as TEI writes it."""
    rows = ("[" + ",".join(f32_text(x) for x in vector) + "]" for vector in vectors)
    return ("[" + ",".join(rows) + "]").encode("ascii")


# --------------------------------------------------------------------------------------------------
# Body extraction errors (axum's JsonRejection family)


class Rejection(Exception):
    """A request refused before the handler ran: plain-text body, like axum's rejections."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def check_content_type(content_type: str | None) -> None:
    """axum accepts `application/json` and any `application/*+json`; anything else is a 415."""
    if content_type:
        essence = content_type.split(";", 1)[0].strip().lower()
        if essence == "application/json" or (essence.startswith("application/") and essence.endswith("+json")):
            return
    raise Rejection(415, "Expected request with `Content-Type: application/json`")


_PY_TO_SERDE = (
    ("Expecting value", "expected value"),
    ("Expecting property name enclosed in double quotes", "key must be a string"),
    ("Expecting ':' delimiter", "expected `:`"),
    ("Expecting ',' delimiter", "expected `,` or `}`"),
    ("Extra data", "trailing characters"),
    ("Unterminated string", "EOF while parsing a string"),
    ("Invalid control character", "control character (\\u0000-\\u001F) found while parsing a string"),
    ("Invalid \\escape", "invalid escape"),
)


def parse_json(raw: bytes) -> tuple[Any, str]:
    """The decoded body and its text, or a 400 Rejection worded like axum's `JsonSyntaxError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection(400, f"Failed to parse the request body as JSON: invalid unicode at byte {exc.start}") from exc
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        message = exc.msg
        for python_text, serde_text in _PY_TO_SERDE:
            if message.startswith(python_text):
                message = serde_text
                break
        if exc.pos >= len(text.rstrip()) and message in ("expected value", "EOF while parsing a string"):
            message = "EOF while parsing a value" if message == "expected value" else message
        raise Rejection(
            400, f"Failed to parse the request body as JSON: {message} at line {exc.lineno} column {exc.colno}"
        ) from exc


# --------------------------------------------------------------------------------------------------
# serde-style typed decoding


class _Mismatch(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str, *, at_object_end: bool) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.at_object_end = at_object_end


def _describe(value: Any) -> str:
    """serde's `Unexpected` wording for a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return f"string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


class Type:
    """A serde-deserialisable shape. `check` returns the value or raises `_Mismatch`."""

    expected = "a value"

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        return value

    def _wrong(self, value: Any, path: tuple[str | int, ...]) -> _Mismatch:
        return _Mismatch(path, f"invalid type: {_describe(value)}, expected {self.expected}", at_object_end=False)


class AnyValue(Type):
    """`serde_json::Value`: anything goes."""


class Str(Type):
    expected = "a string"

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if not isinstance(value, str):
            raise self._wrong(value, path)
        return value


class Bool(Type):
    expected = "a boolean"

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if not isinstance(value, bool):
            raise self._wrong(value, path)
        return value


class Int(Type):
    _RANGES = {"u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "usize": (0, 2**64 - 1), "i32": (-(2**31), 2**31 - 1)}

    def __init__(self, rust_type: str) -> None:
        self.expected = rust_type
        self.low, self.high = self._RANGES[rust_type]

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(value, path)
        if not self.low <= value <= self.high:
            raise _Mismatch(path, f"invalid value: integer `{value}`, expected {self.expected}", at_object_end=False)
        return value


class Float(Type):
    expected = "f32"

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._wrong(value, path)
        return float(value)


class Opt(Type):
    """`Option<T>`: null is allowed."""

    def __init__(self, inner: Type) -> None:
        self.inner = inner
        self.expected = inner.expected

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        return None if value is None else self.inner.check(value, path)


class Seq(Type):
    expected = "a sequence"

    def __init__(self, inner: Type) -> None:
        self.inner = inner

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if not isinstance(value, list):
            raise self._wrong(value, path)
        return [self.inner.check(item, (*path, index)) for index, item in enumerate(value)]


@dataclass
class Struct(Type):
    """A serde struct: unknown keys ignored, `required` fields must be present (null only if Opt)."""

    name: str
    fields: dict[str, Type]
    required: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"struct {self.name}"

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if not isinstance(value, dict):
            raise self._wrong(value, path)
        result: dict[str, Any] = {}
        for key, item in value.items():
            name = self.aliases.get(key, key)
            if name in self.fields:
                result[name] = self.fields[name].check(item, (*path, key))
        for name in self.required:
            if name not in result:
                raise _Mismatch(path, f"missing field `{name}`", at_object_end=True)
        return result


@dataclass
class Untagged(Type):
    """`#[serde(untagged)]` enum: the first variant that fits wins."""

    name: str
    variants: tuple[Type, ...]

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        for variant in self.variants:
            try:
                return variant.check(value, path)
            except _Mismatch:
                continue
        raise _Mismatch(path, f"data did not match any variant of untagged enum {self.name}", at_object_end=False)


@dataclass
class Tagged(Type):
    """`#[serde(tag = "...")]` enum with `value` content, like TGI's `GrammarType`."""

    name: str
    tag: str
    variants: dict[str, Type]
    listed: tuple[str, ...]

    def check(self, value: Any, path: tuple[str | int, ...]) -> Any:
        if not isinstance(value, dict):
            raise _Mismatch(
                path,
                f"invalid type: {_describe(value)}, expected internally tagged enum {self.name}",
                at_object_end=False,
            )
        if self.tag not in value:
            raise _Mismatch(path, f"missing field `{self.tag}`", at_object_end=True)
        variant = value[self.tag]
        if not isinstance(variant, str) or variant not in self.variants:
            expected = ", ".join(f"`{v}`" for v in self.listed)
            shown = variant if isinstance(variant, str) else _describe(variant)
            raise _Mismatch(path, f"unknown variant `{shown}`, expected one of {expected}", at_object_end=False)
        checked = self.variants[variant].check(value, path)
        return {self.tag: variant, **checked}


def decode(shape: Type, value: Any, text: str) -> Any:
    """Check `value` against `shape`; a mismatch becomes axum's 422 deserialisation rejection."""
    try:
        return shape.check(value, ())
    except _Mismatch as mismatch:
        where = _position(text, mismatch.path)
        prefix = _format_path(mismatch.path)
        detail = f"{prefix}: {mismatch.message}" if prefix else mismatch.message
        raise Rejection(422, f"Failed to deserialize the JSON body into the target type: {detail}{where}") from None


def _format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _position(text: str, path: tuple[str | int, ...]) -> str:
    """serde's ` at line L column C` for the end of the value at `path` (best effort)."""
    try:
        end = _value_end(text, path)
    except (ValueError, IndexError):
        return ""
    line = text.count("\n", 0, end) + 1
    column = end - (text.rfind("\n", 0, end) + 1)
    return f" at line {line} column {column}"


def _value_end(text: str, path: tuple[str | int, ...]) -> int:
    def skip(index: int) -> int:
        match = _WHITESPACE.match(text, index)
        return match.end() if match else index

    index = skip(0)
    for step in path:
        if isinstance(step, str):
            if text[index] != "{":
                raise ValueError("not an object")
            index = skip(index + 1)
            while True:
                if text[index] != '"':
                    raise ValueError("key not found")
                key, index = json.decoder.scanstring(text, index + 1)  # type: ignore[attr-defined]
                index = skip(index)
                index = skip(index + 1)  # the colon
                if key == step:
                    break
                _, index = _DECODER.raw_decode(text, index)
                index = skip(index)
                if text[index] == ",":
                    index = skip(index + 1)
        else:
            if text[index] != "[":
                raise ValueError("not an array")
            index = skip(index + 1)
            for _ in range(step):
                _, index = _DECODER.raw_decode(text, index)
                index = skip(skip(index) + 1)
    _, end = _DECODER.raw_decode(text, index)
    return int(end)


# --------------------------------------------------------------------------------------------------
# TGI request shapes (router/src/lib.rs), in the subset of serde semantics that clients can observe

_OPT_F32 = Opt(Float())

GRAMMAR = Tagged(
    name="GrammarType",
    tag="type",
    variants={
        "json": Struct("GrammarType", {"value": AnyValue()}, required=("value",)),
        # serde alias used by OpenAI-style clients and huggingface_hub's response_format rewrite.
        "json_object": Struct("GrammarType", {"value": AnyValue()}, required=("value",)),
        "regex": Struct("GrammarType", {"value": Str()}, required=("value",)),
        "json_schema": Struct(
            "GrammarType",
            {"value": Struct("JsonSchemaConfig", {"name": Opt(Str()), "schema": AnyValue()}, required=("schema",))},
            required=("value",),
        ),
    },
    listed=("json", "regex", "json_schema"),
)

GENERATE_PARAMETERS = Struct(
    "GenerateParameters",
    {
        "best_of": Opt(Int("usize")),
        "temperature": _OPT_F32,
        "repetition_penalty": _OPT_F32,
        "frequency_penalty": _OPT_F32,
        "top_k": Opt(Int("i32")),
        "top_p": _OPT_F32,
        "typical_p": _OPT_F32,
        "do_sample": Bool(),
        "max_new_tokens": Opt(Int("u32")),
        "return_full_text": Opt(Bool()),
        "stop": Seq(Str()),
        "truncate": Opt(Int("usize")),
        "watermark": Bool(),
        "details": Bool(),
        "decoder_input_details": Bool(),
        "seed": Opt(Int("u64")),
        "top_n_tokens": Opt(Int("u32")),
        "grammar": Opt(GRAMMAR),
        "adapter_id": Opt(Str()),
    },
)

GENERATE_REQUEST = Struct(
    "GenerateRequest",
    {"inputs": Str(), "parameters": GENERATE_PARAMETERS, "add_special_tokens": Bool()},
    required=("inputs",),
)

COMPAT_GENERATE_REQUEST = Struct(
    "CompatGenerateRequest",
    {"inputs": Str(), "parameters": GENERATE_PARAMETERS, "stream": Bool()},
    required=("inputs",),
)

_MESSAGE_CHUNK = Tagged(
    name="MessageChunk",
    tag="type",
    variants={
        "text": Struct("MessageChunk", {"text": Str()}, required=("text",)),
        "image_url": Struct(
            "MessageChunk", {"image_url": Struct("Url", {"url": Str()}, required=("url",))}, required=("image_url",)
        ),
    },
    listed=("text", "image_url"),
)

_MESSAGE = Struct(
    "Message",
    {
        "role": Str(),
        # Null content is what OpenAI clients send beside an assistant's `tool_calls`.
        "content": Opt(Untagged("MessageContent", (Str(), Seq(_MESSAGE_CHUNK)))),
        "tool_calls": Opt(Seq(AnyValue())),
        "name": Opt(Str()),
        "tool_call_id": Opt(Str()),
    },
    required=("role",),
)

_TOOL = Struct(
    "Tool",
    {
        "type": Str(),
        "function": Struct(
            "FunctionDefinition",
            {"name": Str(), "description": Opt(Str()), "arguments": AnyValue()},
            required=("name", "arguments"),
            aliases={"parameters": "arguments"},
        ),
    },
    required=("type", "function"),
)

CHAT_REQUEST = Struct(
    "ChatRequest",
    {
        "model": Opt(Str()),
        "messages": Seq(_MESSAGE),
        "frequency_penalty": _OPT_F32,
        "logit_bias": Opt(Seq(Float())),
        "logprobs": Opt(Bool()),
        "top_logprobs": Opt(Int("u32")),
        "max_tokens": Opt(Int("u32")),
        "n": Opt(Int("u32")),
        "presence_penalty": _OPT_F32,
        "stream": Bool(),
        "seed": Opt(Int("u64")),
        "temperature": _OPT_F32,
        "top_p": _OPT_F32,
        "tools": Opt(Seq(_TOOL)),
        "tool_prompt": Opt(Str()),
        "tool_choice": Opt(AnyValue()),
        "stop": Opt(Seq(Str())),
        "response_format": Opt(GRAMMAR),
        # Not an Option in TGI: `null` is rejected, only an object or absence is accepted.
        "stream_options": Struct("StreamOptions", {"include_usage": Bool()}, required=("include_usage",)),
    },
    required=("messages",),
    aliases={"max_completion_tokens": "max_tokens"},
)

COMPLETION_REQUEST = Struct(
    "CompletionRequest",
    {
        "model": Opt(Str()),
        "prompt": Untagged("Prompt", (Str(), Seq(Str()))),
        "max_tokens": Opt(Int("u32")),
        "temperature": _OPT_F32,
        "top_p": _OPT_F32,
        "stream": Bool(),
        "seed": Opt(Int("u64")),
        "suffix": Opt(Str()),
        "repetition_penalty": _OPT_F32,
        "frequency_penalty": _OPT_F32,
        "stop": Opt(Seq(Str())),
    },
    required=("prompt",),
)

# TEI (router/src/http/types.rs)
_INPUT_TYPE = Untagged("InputType", (Str(), Seq(Int("u32"))))
EMBED_REQUEST = Struct(
    "EmbedRequest",
    {
        "inputs": Untagged("Input", (_INPUT_TYPE, Seq(_INPUT_TYPE))),
        "truncate": Opt(Bool()),
        "truncation_direction": AnyValue(),
        "prompt_name": Opt(Str()),
        "normalize": Bool(),
        "dimensions": Opt(Int("usize")),
    },
    required=("inputs",),
)

OPENAI_EMBED_REQUEST = Struct(
    "OpenAICompatRequest",
    {
        "input": Untagged("Input", (_INPUT_TYPE, Seq(_INPUT_TYPE))),
        "model": Opt(Str()),
        "encoding_format": AnyValue(),
        "dimensions": Opt(Int("usize")),
    },
    required=("input",),
)
