"""What a model call returns: `InferenceResult` and its `TokenLogprob`s, and the small readings of a
server's reply (finish reason, model name, log-probability, elapsed time) that both protocols share.

The result is also the record: `to_dict` / `from_dict` round-trip exactly, so a recorded call replays
byte for byte.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

# The caller's per-token callback: a plain function or a coroutine function.
OnToken = Callable[[str], "Awaitable[None] | None"]
# The model names huggingface_hub puts in chat payloads when it has none; TGI echoes them back.
PLACEHOLDER_MODELS = {"dummy", "tgi", ""}


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability and the likeliest alternatives at its position.

    `logprob` is None only when the server sent none. `top` holds `(text, logprob)` pairs as the server
    ranked them, likeliest first (TGI's list includes the chosen token itself). `special` marks tokens
    that add no text, such as TGI's end-of-sequence `</s>`; only TGI's native protocol says which tokens
    are special, so on the chat protocol it is always False, even for the end token TGI reports there.
    """

    text: str
    logprob: float | None
    top: tuple[tuple[str, float | None], ...] = ()
    special: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-native (lists, not tuples), so `to_dict()` equals its own JSON round trip."""
        return {
            "text": self.text,
            "logprob": self.logprob,
            "top": [[text, logprob] for text, logprob in self.top],
            "special": self.special,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenLogprob:
        """The inverse of `to_dict`."""
        return cls(
            text=data["text"],
            logprob=data["logprob"],
            top=tuple((text, logprob) for text, logprob in data.get("top", ())),
            special=data.get("special", False),
        )


@dataclass(frozen=True)
class InferenceResult:
    """The outcome of one model call, with the numbers provenance needs.

    `finish_reason` uses one vocabulary for every server: "stop" (the model ended, TGI's `eos_token`),
    "length" (hit max tokens) or "stop_sequence" (TGI: a stop string matched); other values (such as
    OpenAI's "tool_calls") pass through. `prompt_tokens` is None when the server reported no usage.
    `ttft_ms` is the time to the first token event (None if none came, and always None for the
    non-streamed calls, whose reply arrives whole); `latency_ms` the whole call. Both are measured on this
    side of the wire from the start of the call, so they include any failed attempts and the waits
    between them: what the user waited. `model_id` is what the server said it ran (None when it did not
    say). `tokens` is filled only when log-probabilities were asked for; `tool_calls` holds the chat
    protocol's tool calls as `{"id", "name", "arguments"}` with `arguments` parsed from JSON (the raw text
    when it is not valid JSON). `attempts` counts the requests made, 1 when the first succeeded.
    """

    text: str
    generated_tokens: int
    prompt_tokens: int | None
    finish_reason: str
    model_id: str | None
    ttft_ms: float | None
    latency_ms: float
    seed: int | None
    tokens: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-native dict (for Celery results and provenance records); see `from_dict`."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        values["tokens"] = [token.to_dict() for token in self.tokens]
        # A copy: the record must not change if a caller later edits the parsed arguments it was given.
        values["tool_calls"] = [copy.deepcopy(call) for call in self.tool_calls]
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceResult:
        """Rebuild a result from `to_dict()`, also after a JSON round trip: `from_dict(r.to_dict()) == r`
        and `from_dict(d).to_dict() == d`, so a replayed call serialises byte for byte like the recorded
        one. Records made before `tokens`, `tool_calls` and `attempts` existed load with their defaults;
        unknown keys raise ValueError, because a replay that silently dropped part of a record would not
        be the same call."""
        names = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Not fields of an InferenceResult: {', '.join(unknown)}")
        values = dict(data)
        values["tokens"] = tuple(TokenLogprob.from_dict(token) for token in data.get("tokens", ()))
        values["tool_calls"] = tuple(copy.deepcopy(dict(call)) for call in data.get("tool_calls", ()))
        return cls(**values)


def normalise_finish_reason(reason: str | None) -> str:
    if reason is None:
        return ""
    return "stop" if reason == "eos_token" else str(reason)


def model_from_server(model: str | None) -> str | None:
    return None if model is None or model in PLACEHOLDER_MODELS else model


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def logprob_value(value: Any) -> float | None:
    # TGI serialises a NaN log-probability (a first prefill token) as null; keep results valid JSON.
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
