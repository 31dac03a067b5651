"""Tool calls on the chat route: what a request offering `tools` gets, and how the calls look on the wire.

Three answers (scripts.py's docstring has the rules): the calls a script rule gives; a plain message, when a
rule gives plain text and `tool_choice` leaves the choice to the model; or one call of the first (or named)
tool with schema-shaped arguments, which is all TGI ever sends.

Two wire styles (`--tool-call-style`):

- `tgi`: arguments as a JSON object, ids "0", "1", ... within a reply; every stream delta repeats the role,
  and each fragment carries the call's index, id and type, its name on the call's first fragment only.
- `openai`: arguments as a JSON string, ids `call_<n>` numbered on from the calls already in the
  conversation (vLLM's and OpenAI's shape); the role comes once, in the first delta, and a call's id, type
  and name only in its first fragment, later ones carrying `{"index", "function": {"arguments"}}`.

A reply's tokens never straddle its segments (content, then each call's arguments; see
`scripts.tool_call_pieces`), so character offsets tell which call a streamed token belongs to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import engine
from .engine import InferError
from .scripts import ToolCall

# vLLM's wording when a request sends tools to a server started without tool calling.
NOT_ENABLED_MESSAGE = (
    'Tool calling is not enabled on this server: "auto" tool choice requires --enable-auto-tool-choice '
    "and --tool-call-parser to be set (AIOS development server started with --no-tools)"
)


def not_enabled_body() -> dict[str, Any]:
    """vLLM's 400 body for tools on a server without tool calling (OpenAI's error object)."""
    return {"error": {"message": NOT_ENABLED_MESSAGE, "type": "BadRequestError", "param": None, "code": 400}}


def call_text(call: Any) -> str:
    """One call of an assistant message as the match text and prompt show it: `name {"arg": ...}`.

    Arguments sent as a JSON string (OpenAI's way) are parsed and written again with the separators the
    server writes them with, so a rule matches what the script (or this server) wrote, whoever echoes it.
    """
    if not isinstance(call, dict):
        return json.dumps(call, ensure_ascii=False)
    nested = call.get("function")
    function: dict[str, Any] = nested if isinstance(nested, dict) else call
    name = function.get("name")
    arguments = function.get("arguments", function.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return f"{name} {arguments}"
    return f"{name} {json.dumps(arguments, ensure_ascii=False)}"


def calls_in(messages: list[dict[str, Any]]) -> int:
    """How many tool calls the conversation's assistant messages already made (numbers openai ids on)."""
    return sum(len(m.get("tool_calls") or ()) for m in messages if m.get("role") == "assistant")


@dataclass(frozen=True)
class ToolCallReply:
    """A reply made of tool calls: whose, where each call's arguments start in the text, in which style.

    `argument_lengths` is None for the schema-shaped call, whose arguments are all of the generated text.
    """

    style: str
    names: tuple[str, ...]
    scripted: bool
    content_length: int = 0
    argument_lengths: tuple[int, ...] | None = None
    first_number: int = 0

    @classmethod
    def from_script(
        cls, style: str, content: str | None, calls: tuple[ToolCall, ...], first_number: int
    ) -> ToolCallReply:
        return cls(
            style=style,
            names=tuple(call.name for call in calls),
            scripted=True,
            content_length=len(content or ""),
            argument_lengths=tuple(len(call.arguments_text) for call in calls),
            first_number=first_number,
        )

    def call_id(self, index: int) -> str:
        return f"call_{self.first_number + index}" if self.style == "openai" else str(index)

    def _bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each call's arguments in the reply text."""
        if self.argument_lengths is None:
            return [(self.content_length, 1 << 62)]
        bounds, start = [], self.content_length
        for length in self.argument_lengths:
            bounds.append((start, start + length))
            start += length
        return bounds

    def segment_at(self, offset: int) -> int | None:
        """The call whose arguments hold character `offset`; None for the content before them."""
        for index, (start, end) in enumerate(self._bounds()):
            if start <= offset < end:
                return index
        return None if offset < self.content_length else len(self.names) - 1

    def split(self, text: str) -> tuple[str, list[str]]:
        """The content and the arguments text of each call the (possibly cut) `text` reaches."""
        arguments = [text[start:end] for start, end in self._bounds() if start < len(text)]
        return text[: self.content_length], arguments

    def finish_reason(self, plan_finish: str) -> str:
        """OpenAI's "tool_calls" for a finished reply (TGI says "stop" for its own schema-shaped call)."""
        if plan_finish == "eos_token" and (self.scripted or self.style == "openai"):
            return "tool_calls"
        return engine.chat_finish_reason(plan_finish)

    def message(self, text: str) -> dict[str, Any]:
        """The assistant message of a non-stream reply; TGI's tool error when arguments do not parse."""
        content, arguments = self.split(text)
        calls = []
        for index, arguments_text in enumerate(arguments):
            value: Any = arguments_text
            if self.style == "tgi":
                try:
                    value = json.loads(arguments_text)
                except json.JSONDecodeError:
                    raise InferError.tool(f"Failed to parse generated text: {text!r}") from None
            calls.append(
                {
                    "id": self.call_id(index),
                    "type": "function",
                    "function": {"name": self.names[index], "arguments": value},
                }
            )
        if self.style == "tgi":
            if not calls:
                raise InferError.tool(f"Failed to parse generated text: {text!r}")
            return {"role": "assistant", **({"content": content} if content else {}), "tool_calls": calls}
        return {"role": "assistant", "content": content or None, "tool_calls": calls}

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self)


@dataclass
class ToolCallStream:
    """Turns a tool-call reply's tokens into stream deltas, one per token, in the reply's style."""

    reply: ToolCallReply
    offset: int = 0
    current: int | None = None
    started: set[int] = field(default_factory=set)
    first_delta: bool = True

    def delta(self, token: engine.GenToken) -> dict[str, Any]:
        if token.special:
            # The end-of-text token adds nothing: an empty fragment of the last call (TGI), an empty delta
            # (OpenAI), beside the finish reason.
            index = self.current if self.current is not None else 0
            text = ""
        else:
            segment = self.reply.segment_at(self.offset)
            self.offset += len(token.text)
            if segment is None:
                return self._content(token.text)
            index, text = segment, token.text
            self.current = index
        first = index not in self.started
        if self.reply.style == "openai" and token.special and not first:
            return self._openai({})
        self.started.add(index)
        name = self.reply.names[index]
        if self.reply.style == "tgi":
            fragment = {
                "index": index,
                "id": self.reply.call_id(index),
                "type": "function",
                "function": {"name": name if first else None, "arguments": text},
            }
            return {"role": "assistant", "tool_calls": [fragment]}
        if first:
            fragment = {
                "index": index,
                "id": self.reply.call_id(index),
                "type": "function",
                "function": {"name": name, "arguments": text},
            }
        else:
            fragment = {"index": index, "function": {"arguments": text}}
        return self._openai({"tool_calls": [fragment]})

    def _content(self, text: str) -> dict[str, Any]:
        if self.reply.style == "tgi":
            return {"role": "assistant", "content": text}
        return self._openai({"content": text})

    def _openai(self, delta: dict[str, Any]) -> dict[str, Any]:
        if self.first_delta:
            self.first_delta = False
            return {"role": "assistant", **delta}
        return delta
