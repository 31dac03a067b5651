"""Validation and "generation" for the development server.

Validation mirrors TGI's router (`router/src/validation.rs`): the same checks, in the same order, with
the same messages, so a request the dev server refuses is one a real TGI refuses, and vice versa.
Generation is a plan, not a model: the reply text (chosen by `scripts.py`) is cut into tokens, stop
sequences and `max_new_tokens` are applied the way TGI's stopping criteria apply them, and the plan is
then paced out with the configured time to first token and time per token.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import tokenizer
from .config import DevServerConfig

# --------------------------------------------------------------------------------------------------
# Errors (router/src/infer/mod.rs `InferError`)


class InferError(Exception):
    """A TGI `InferError`: knows its HTTP status, `error_type` and full message."""

    STATUS = {
        "validation": 422,
        "generation": 424,
        "overloaded": 429,
        "incomplete_generation": 500,
        "incomplete_generation_stream": 500,
        "template_error": 422,
        "tool_error": 422,
        # The development server's own: a script rule that cannot answer this request (see scripts.py).
        "script_error": 422,
    }

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message

    @property
    def status(self) -> int:
        return self.STATUS.get(self.error_type, 500)

    @property
    def metric_label(self) -> str:
        return {"incomplete_generation": "incomplete", "incomplete_generation_stream": "incomplete"}.get(
            self.error_type, self.error_type
        )

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}

    @classmethod
    def validation(cls, message: str) -> InferError:
        return cls("validation", f"Input validation error: {message}")

    @classmethod
    def overloaded(cls) -> InferError:
        return cls("overloaded", "Model is overloaded")

    @classmethod
    def generation(cls, detail: str) -> InferError:
        return cls("generation", f"Request failed during generation: {detail}")

    @classmethod
    def tool(cls, detail: str) -> InferError:
        return cls("tool_error", f"Tool error: {detail}")

    @classmethod
    def script(cls, detail: str) -> InferError:
        return cls("script_error", f"Script error (AIOS development server): {detail}")


# --------------------------------------------------------------------------------------------------
# Parameters


@dataclass
class GenerateParameters:
    """TGI's `GenerateParameters` after deserialisation, with its server-side defaults."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    do_sample: bool = False
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    details: bool = False
    decoder_input_details: bool = False
    return_full_text: bool | None = None
    best_of: int | None = None
    top_n_tokens: int | None = None
    truncate: int | None = None
    watermark: bool = False
    grammar: dict[str, Any] | None = None
    adapter_id: str | None = None

    @classmethod
    def from_request(cls, parameters: dict[str, Any] | None) -> GenerateParameters:
        """Defaults as TGI applies them: an absent `parameters` object means `do_sample: true`."""
        if parameters is None:
            return cls(do_sample=True)
        known = {k: v for k, v in parameters.items() if k in cls.__dataclass_fields__}
        if known.get("stop") is None:
            known.pop("stop", None)
        return cls(**known)


@dataclass(frozen=True)
class Constraint:
    """What the output must satisfy: a JSON schema or a regular expression."""

    kind: str  # "json" | "regex"
    schema: Any = None
    pattern: str = ""


@dataclass
class ValidRequest:
    """A request that passed validation, with everything generation needs."""

    inputs: str
    input_length: int
    max_new_tokens: int
    params: GenerateParameters
    sampling: bool
    seed: int | None
    constraint: Constraint | None


def _grammar_constraint(grammar: dict[str, Any]) -> Constraint:
    kind = grammar.get("type")
    value = grammar.get("value")
    if kind == "regex":
        try:
            re.compile(str(value))
        except re.error as exc:
            raise InferError.validation(f"grammar is not valid: {exc}") from exc
        return Constraint(kind="regex", pattern=str(value))
    schema = value
    if kind == "json_schema":
        schema = value.get("schema") if isinstance(value, dict) else None
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise InferError.validation(
                f"grammar is not valid: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from exc
    if not isinstance(schema, dict):
        raise InferError.validation("grammar is not supported")
    # TGI's outlines backend needs `properties`; the router refuses schemas without them up front.
    if "properties" not in schema:
        raise InferError.validation("grammar is not valid: Grammar must have a 'properties' field")
    return Constraint(kind="json", schema=schema)


def validate(inputs: str, params: GenerateParameters, config: DevServerConfig, *, streaming: bool) -> ValidRequest:
    """TGI's validation, in TGI's order; raises `InferError` (422) with TGI's message."""
    best_of = params.best_of if params.best_of is not None else 1
    sampling = (
        params.do_sample
        or (params.temperature is not None and params.temperature != 1.0)
        or (params.top_k is not None and params.top_k != 0)
        or (params.top_p is not None and params.top_p < 1.0)
        or (params.typical_p is not None and params.typical_p < 1.0)
    )
    if params.best_of is not None:
        if best_of == 0 or best_of > config.max_best_of:
            raise InferError.validation(f"`best_of` must be > 0 and <= {config.max_best_of}. Given: {best_of}")
        if best_of > 1 and not sampling:
            raise InferError.validation("you must use sampling when `best_of` is > 1")
    if streaming and best_of != 1:
        raise InferError.validation("`best_of` != 1 is not supported when streaming tokens")
    if streaming and params.decoder_input_details:
        raise InferError.validation("`decoder_input_details` == true is not supported when streaming tokens")
    if params.temperature is not None and params.temperature <= 0:
        raise InferError.validation("`temperature` must be strictly positive")
    if params.repetition_penalty is not None and params.repetition_penalty <= 0:
        raise InferError.validation("`repetition_penalty` must be strictly positive")
    if params.frequency_penalty is not None and not -2.0 <= params.frequency_penalty <= 2.0:
        raise InferError.validation("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if params.top_p is not None and not 0.0 < params.top_p < 1.0:
        raise InferError.validation("`top_p` must be > 0.0 and < 1.0")
    if params.typical_p is not None and not 0.0 < params.typical_p < 1.0:
        raise InferError.validation("`typical_p` must be > 0.0 and < 1.0")
    if params.top_k is not None and params.top_k <= 0:
        raise InferError.validation("`top_k` must be strictly positive")
    if params.max_new_tokens is not None and params.max_new_tokens == 0:
        raise InferError.validation("`max_new_tokens` must be strictly positive")
    if len(params.stop) > config.max_stop_sequences:
        raise InferError.validation(
            f"`stop` supports up to {config.max_stop_sequences} stop sequences. Given: {len(params.stop)}"
        )
    if params.seed is not None and best_of > 1:
        raise InferError.validation("`seed` must not be set when `best_of` > 1")
    if params.top_n_tokens is not None and params.top_n_tokens > config.max_top_n_tokens:
        raise InferError.validation(
            f"`top_n_tokens` must be >= 0 and <= {config.max_top_n_tokens}. Given: {params.top_n_tokens}"
        )
    constraint = _grammar_constraint(params.grammar) if params.grammar is not None else None
    if not inputs:
        raise InferError.validation("`inputs` cannot be empty")
    if params.truncate is not None and (params.truncate == 0 or params.truncate > config.max_input_tokens):
        raise InferError.validation(
            f"`truncate` must be strictly positive and less than {config.max_input_tokens}. Given: {params.truncate}"
        )

    input_length = tokenizer.count(inputs)
    if params.truncate is not None:
        input_length = min(input_length, params.truncate)
    if input_length > config.max_input_tokens:
        raise InferError.validation(f"`inputs` tokens must be <= {config.max_input_tokens}. Given: {input_length}")
    # TGI fills the rest of the context when max_new_tokens is unset (the spec's "1024" is not used).
    max_new_tokens = (
        params.max_new_tokens if params.max_new_tokens is not None else config.max_total_tokens - input_length
    )
    if input_length + max_new_tokens > config.max_total_tokens:
        raise InferError.validation(
            f"`inputs` tokens + `max_new_tokens` must be <= {config.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )

    seed: int | None = None
    if sampling:
        # A real server draws a random seed; the dev server derives one so runs are reproducible.
        seed = params.seed if params.seed is not None else _stable_seed(inputs)
    return ValidRequest(
        inputs=inputs,
        input_length=input_length,
        max_new_tokens=max_new_tokens,
        params=params,
        sampling=sampling,
        seed=seed,
        constraint=constraint,
    )


def _stable_seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") >> 1


# --------------------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class GenToken:
    """One generated token, as it appears in `details.tokens` and stream events."""

    id: int
    text: str
    logprob: float
    special: bool

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": self.special}


@dataclass
class Plan:
    """Everything a response will say, decided before the first byte is paced out."""

    tokens: list[GenToken]
    finish_reason: str  # TGI's: "eos_token" | "length" | "stop_sequence"
    generated_text: str
    input_length: int
    seed: int | None
    top_tokens: list[list[GenToken]] | None
    prefill: list[dict[str, Any]]

    @property
    def generated_tokens(self) -> int:
        return len(self.tokens)


_ALTERNATIVES = (" the", " a", " and", " of", " to", " in")


def build_plan(
    reply: str,
    valid: ValidRequest,
    logprobs: Sequence[float] | None = None,
    pieces: Sequence[str] | None = None,
) -> Plan:
    """Cut `reply` into tokens and stop where TGI's stopping criteria would.

    `logprobs`, one per piece of `reply` (a rule's scripted confidence), replace the tokenizer's noise.
    `pieces`, which join to `reply`, replace the tokenizer's cut (a tool-call reply's, segment by segment).
    """
    stops = [s for s in valid.params.stop if s]
    tokens: list[GenToken] = []
    produced = ""
    finish_reason = ""
    for position, piece in enumerate(tokenizer.split(reply) if pieces is None else pieces):
        piece_logprob = logprobs[position] if logprobs is not None else tokenizer.token_logprob(piece, position)
        if len(tokens) >= valid.max_new_tokens:
            finish_reason = "length"
            break
        candidate = produced + piece
        cut: int | None = None
        for stop in stops:
            found = candidate.find(stop, max(0, len(produced) - len(stop) + 1))
            if found != -1:
                end = found + len(stop)
                cut = end if cut is None else min(cut, end)
        if cut is not None:
            # The stop sequence ends inside this piece: emit the piece up to the end of the stop
            # sequence, which stays in the text as TGI leaves it (with the whole piece's log-probability).
            piece = candidate[len(produced) : cut]
            tokens.append(_token(piece, piece_logprob))
            produced += piece
            finish_reason = "stop_sequence"
            break
        tokens.append(_token(piece, piece_logprob))
        produced = candidate
    else:
        if len(tokens) >= valid.max_new_tokens:
            finish_reason = "length"
        else:
            tokens.append(GenToken(id=tokenizer.EOS_ID, text=tokenizer.EOS_TEXT, logprob=-0.0123, special=True))
            finish_reason = "eos_token"
    if not finish_reason:
        finish_reason = "length"

    top_tokens = None
    if valid.params.top_n_tokens:
        top_tokens = [
            _top_tokens(token, valid.params.top_n_tokens, share_the_rest=logprobs is not None) for token in tokens
        ]

    prefill: list[dict[str, Any]] = []
    if valid.params.decoder_input_details:
        prompt_pieces = tokenizer.tokenize(valid.inputs)[-valid.input_length :]
        for position, prompt_piece in enumerate(prompt_pieces):
            # The first prompt token has no preceding context; TGI's NaN logprob serialises as null.
            logprob = None if position == 0 else tokenizer.token_logprob(prompt_piece.text, position)
            prefill.append({"id": prompt_piece.id, "text": prompt_piece.text, "logprob": logprob})

    return Plan(
        tokens=tokens,
        finish_reason=finish_reason,
        generated_text="".join(t.text for t in tokens if not t.special),
        input_length=valid.input_length,
        seed=valid.seed,
        top_tokens=top_tokens,
        prefill=prefill,
    )


def _token(piece: str, logprob: float) -> GenToken:
    return GenToken(id=tokenizer.token_id(piece), text=piece, logprob=logprob, special=False)


def _top_tokens(chosen: GenToken, n: int, *, share_the_rest: bool = False) -> list[GenToken]:
    """The chosen token, then alternatives each less likely than the one before.

    With `share_the_rest` (scripted confidence) the k-th alternative also gets at most 2^-k of what the
    chosen token leaves, so the row's probabilities sum to at most 1 and a 0.99 token's runner-up is unlikely.
    """
    result = [chosen]
    rest = max(1.0 - math.exp(chosen.logprob), 1e-9)
    for offset, text in enumerate(t for t in _ALTERNATIVES if t != chosen.text):
        if len(result) >= n:
            break
        logprob = round(chosen.logprob - 0.5 * (offset + 1), 4)
        if share_the_rest:
            logprob = min(logprob, round(math.log(rest * 0.5 ** (offset + 1)), 4))
        result.append(GenToken(id=tokenizer.token_id(text), text=text, logprob=logprob, special=False))
    return result


def stream_details(plan: Plan) -> dict[str, Any]:
    """`StreamDetails` for the final stream event."""
    return {
        "finish_reason": plan.finish_reason,
        "generated_tokens": plan.generated_tokens,
        "seed": plan.seed,
        "input_length": plan.input_length,
    }


def details(plan: Plan, best_of: int, full_text_prefix: str) -> dict[str, Any]:
    """`Details` for a non-stream `GenerateResponse` (fields in TGI's declaration order)."""
    result: dict[str, Any] = {
        "finish_reason": plan.finish_reason,
        "generated_tokens": plan.generated_tokens,
        "seed": plan.seed,
        "prefill": plan.prefill,
        "tokens": [t.wire() for t in plan.tokens],
    }
    if plan.top_tokens:
        result["top_tokens"] = [[t.wire() for t in row] for row in plan.top_tokens]
    if best_of > 1:
        # Deterministic server: every candidate sequence is the same one.
        result["best_of_sequences"] = [
            {
                "generated_text": full_text_prefix + plan.generated_text,
                "finish_reason": plan.finish_reason,
                "generated_tokens": plan.generated_tokens,
                "seed": plan.seed,
                "prefill": plan.prefill,
                "tokens": [t.wire() for t in plan.tokens],
                **({"top_tokens": result["top_tokens"]} if "top_tokens" in result else {}),
            }
            for _ in range(best_of - 1)
        ]
    return result


def chat_finish_reason(finish_reason: str) -> str:
    """TGI's `FinishReason::format(true)`: only `eos_token` becomes OpenAI's `stop`."""
    return "stop" if finish_reason == "eos_token" else finish_reason
