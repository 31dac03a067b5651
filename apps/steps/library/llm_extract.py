"""`llm.extract`: structured data for a JSON Schema the analyst defines, always schema-valid or a failed step.

Besides the data, the step says how sure it is of each field and where in the source document each field's
value stands, so a reviewer can check a proposal against the text instead of re-reading the whole document.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import Field, field_validator

from apps.inference.client import InferenceResult
from apps.inference.gateway import CallResult
from apps.steps.base import StepContext, StepError, StepOutcome, StepType
from apps.steps.expressions import ExpressionError, template_check, template_render
from apps.steps.library.llm_generate import (
    json_reply_errors,
    schema_errors,
    schema_for_model,
    schema_problems,
    supplied_data_problems,
)
from apps.steps.llm import LlmSession, LlmStepConfig, llm_config_problems
from apps.steps.registry import register

REPAIR_PROMPT = (
    "Your previous reply did not match the required JSON Schema.\n"
    "Previous reply:\n{reply}\n\nProblems:\n{problems}\n\n"
    "Reply again with only the corrected JSON object."
)

ConfidenceSource = Literal["logprob", "agreement", "none"]

# Sampling needs a temperature: at the server's default a TGI server decodes greedily, every sample repeats the
# first reply, and agreement would always be perfect.
AGREEMENT_TEMPERATURE = 0.7


class LlmExtractConfig(LlmStepConfig):
    json_schema: dict[str, Any] = Field(
        description="The fields to extract: each with a name, a type, and whether it is required.",
        title="Fields to extract",
        json_schema_extra={"x-widget": "schema-table"},
    )

    @field_validator("json_schema")
    @classmethod
    def _plain_schema(cls, value: Any) -> Any:
        return schema_for_model(value)

    source: str = Field(
        "",
        title="Source text",
        description="The document the fields come from (e.g. {{ input.text }}); evidence points into it.",
        json_schema_extra={"x-widget": "template"},
    )
    repair_attempts: int = Field(
        1,
        ge=0,
        le=3,
        description="Extra calls that show the model its validation errors.",
        json_schema_extra={"x-advanced": True},
    )
    constrained: bool = Field(
        True,
        description="Ask the server to constrain decoding to the schema (TGI grammar, response_format).",
        json_schema_extra={"x-advanced": True},
    )
    agreement_samples: int = Field(
        0,
        ge=0,
        le=5,
        description=(
            "When the server gives no token probabilities: ask this many more times and score each field by "
            "how many replies agree."
        ),
        json_schema_extra={"x-advanced": True},
    )
    max_new_tokens: int = Field(
        512, ge=1, le=8192, description="The longest reply, in tokens.", json_schema_extra={"x-advanced": True}
    )


def field_confidence(result: InferenceResult, data: Any) -> dict[str, float]:
    """Per top-level field: the geometric mean probability of the tokens that spell its value.

    Empty when the server gave no log-probabilities (OpenAI-compatible servers often do not stream them).
    Tokens are matched to fields by character offsets in the reply, so it needs the exact reply text.
    """
    tokens = getattr(result, "tokens", ()) or ()
    if not tokens or not isinstance(data, dict) or not any(t.logprob is not None for t in tokens):
        return {}
    text = result.text
    offsets, position = [], 0
    for token in tokens:
        if token.special:
            continue
        offsets.append((position, position + len(token.text), token.logprob))
        position += len(token.text)
    decoder = json.JSONDecoder()
    confidence: dict[str, float] = {}
    for key in data:
        marker = text.find(json.dumps(key))
        colon = text.find(":", marker + 1) if marker >= 0 else -1
        if colon < 0:
            continue
        start = colon + 1
        while start < len(text) and text[start].isspace():
            start += 1
        try:
            _, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        logprobs = [lp for a, b, lp in offsets if a < end and b > start and lp is not None]
        if logprobs:
            confidence[key] = round(math.exp(sum(logprobs) / len(logprobs)), 4)
    return confidence


def _canonical(value: Any) -> str:
    # 850 and 850.0 are one JSON Schema number; sorted keys make objects compare regardless of order.
    def plain(item: Any) -> Any:
        if isinstance(item, float) and item.is_integer():
            return int(item)
        if isinstance(item, dict):
            return {key: plain(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [plain(inner) for inner in item]
        return item

    return json.dumps(plain(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def field_agreement(chosen: dict[str, Any], samples: list[Any]) -> dict[str, float]:
    """Per top-level field of `chosen`: the fraction of all replies (`chosen` itself and each of `samples`)
    whose value for the field equals chosen's, compared as canonical JSON (key order and 850 vs 850.0 do not
    matter).

    A sample that is not a dict (pass None for a reply that was invalid JSON or failed the schema) disagrees on
    every field, and a sample without the field disagrees on it. Rounded to 4 places; empty when `chosen` has
    no fields.
    """
    confidence: dict[str, float] = {}
    for key, value in chosen.items():
        wanted = _canonical(value)
        agreeing = 1 + sum(
            1 for sample in samples if isinstance(sample, dict) and key in sample and _canonical(sample[key]) == wanted
        )
        confidence[key] = round(agreeing / (1 + len(samples)), 4)
    return confidence


# -- evidence -------------------------------------------------------------------------------------------------

# How far before an occurrence a field's name still labels it ("Amount: 1,200", "Date of loss was 3 May").
LABEL_WINDOW = 40
# Occurrences weighed per field: a value that occurs more often than this (a "1" in a long table) is found at
# one of its first ones, and a large document costs a bounded amount of work per field.
MAX_OCCURRENCES = 200

_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_CURRENCY = r"(?:[$€£¥]\s?)?"


def _bounded(pattern: str, value: str) -> str:
    """`pattern` (matching `value`) kept from starting or ending inside a word, where `value` itself starts or
    ends with a word character: "Ana" is not evidence in "Banana"."""
    before = r"(?<!\w)" if re.match(r"\w", value) else ""
    after = r"(?!\w)" if re.search(r"\w$", value) else ""
    return before + pattern + after


def _string_patterns(value: str) -> Iterator[re.Pattern[str]]:
    """Exact, then ignoring case, then also ignoring how the whitespace runs: the first that matches wins."""
    words = value.split()
    if not words:
        return
    yield re.compile(_bounded(re.escape(value), value))
    yield re.compile(_bounded(re.escape(value), value), re.IGNORECASE)
    # Possessive: a run of whitespace in a document is read once, never re-split while backtracking.
    yield re.compile(_bounded(r"\s++".join(re.escape(word) for word in words), value.strip()), re.IGNORECASE)


def _number_renderings(number: float) -> list[str]:
    """The ways people write `number`: 1234.5 as 1234.5, 1234.50, 1,234.5, 1,234.50, 1234,50 and 1.234,50."""
    try:
        exact = Decimal(repr(number)) if isinstance(number, float) else Decimal(number)
    except InvalidOperation:
        return []
    digits = format(abs(exact), "f")
    whole, _, fraction = digits.partition(".")
    fraction = fraction.rstrip("0")
    sign = "-" if exact < 0 else ""
    grouped = f"{int(whole):,}"
    dotted = grouped.replace(",", ".")
    fractions = [fraction, fraction + "0"] if len(fraction) == 1 else [fraction] if fraction else ["", "00", "0"]
    renderings = set()
    for part in fractions:
        if not part:
            renderings.update({whole, grouped})
            continue
        renderings.update({f"{whole}.{part}", f"{grouped}.{part}"})
        if len(part) <= 2:  # a decimal comma before three digits reads as a thousands separator (1,234)
            renderings.update({f"{whole},{part}", f"{dotted},{part}"})
    return [sign + rendering for rendering in sorted(renderings, key=lambda r: (-len(r), r))]


def _number_pattern(number: float) -> re.Pattern[str] | None:
    renderings = _number_renderings(number)
    if not renderings:
        return None
    alternatives = "|".join(re.escape(rendering) for rendering in renderings)
    # Never part of a longer number: 850 is not evidence in 1850, 850.75 or 8,850.
    return re.compile(rf"(?<![\w.,]){_CURRENCY}(?:{alternatives})(?![.,]?\d)")


def _date_pattern(value: str) -> re.Pattern[str] | None:
    """For an ISO date: the ISO form, day/month/year and month/day/year with `/`, `.` or `-`, and the month
    named in English ("5 March 2024", "Mar 5th, 2024"), any case."""
    iso = _ISO_DATE.fullmatch(value)
    if not iso:
        return None
    year, month, day = iso.group(1), int(iso.group(2)), int(iso.group(3))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    d, m = rf"0?{day}", rf"0?{month}"
    forms = [re.escape(value)]
    for sep in (r"/", r"\.", r"-"):
        forms += [rf"{d}{sep}{m}{sep}{year}", rf"{m}{sep}{d}{sep}{year}", rf"{year}{sep}0?{month}{sep}0?{day}"]
    name = _MONTHS[month - 1]
    abbreviations = rf"{name[:3]}\.?|sept\.?" if month == 9 else rf"{name[:3]}\.?"
    named = rf"(?:{name}|{abbreviations})"
    ordinal = r"(?:st|nd|rd|th)?"
    forms += [rf"{d}{ordinal}\s{{1,3}}{named},?\s{{1,3}}{year}", rf"{named}\s{{1,3}}{d}{ordinal},?\s{{1,3}}{year}"]
    return re.compile(rf"(?<![\w./-])(?:{'|'.join(forms)})(?!\w|[./-]\d)", re.IGNORECASE)


def _name_words(name: str) -> list[str]:
    """The words of a field name: `claim_amount`, `claimAmount` and `Claim amount` are "claim" and "amount"."""
    words: list[str] = []
    for part in re.split(r"[\W_]+", name):
        if part.isascii():
            words += re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", part)
        elif part:
            words.append(part)
    words = [word.lower() for word in words]
    # Short words ("of", "id" beside "customer") label little; keep them only when they are all there is.
    long_words = [word for word in words if len(word) >= 3]
    return list(dict.fromkeys(long_words or words))


def _best_occurrence(source: str, pattern: re.Pattern[str], labels: list[re.Pattern[str]]) -> re.Match[str] | None:
    best: re.Match[str] | None = None
    best_score = -1
    for index, match in enumerate(pattern.finditer(source)):
        if index >= MAX_OCCURRENCES:
            break
        if match.end() == match.start():
            continue
        window = source[max(0, match.start() - LABEL_WINDOW) : match.start()]
        score = sum(1 for label in labels if label.search(window))
        if score > best_score:  # strictly greater: among equals, the first occurrence stays
            best, best_score = match, score
    return best


def _patterns_for(value: Any) -> list[re.Pattern[str]]:
    """The patterns that find `value`, in order of preference; empty for values evidence does not cover."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return []
        pattern = _number_pattern(value)
        return [pattern] if pattern else []
    if isinstance(value, str):
        date = _date_pattern(value.strip())
        return [date] if date else list(_string_patterns(value))
    return []


def field_evidence(source: str, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Where each top-level field of `data` stands in `source`: `{field: {"start", "end", "quote"}}`, with
    `source[start:end] == quote`. Fields whose value is not found are left out. Pure and deterministic.

    - A string is looked for exactly, then ignoring case, then also ignoring how whitespace runs; the first
      way that finds it wins. A value that starts or ends with a letter or digit is not found inside a word.
    - A number is found as people write it: 1234.5 also as 1234.50, 1,234.5, 1,234.50, 1.234,50 or 1234,50,
      never as part of a longer number; a currency sign directly before it is part of the quote.
    - An ISO date (2024-03-05) is also found as 05/03/2024, 3/5/2024, 05.03.2024, "5 March 2024",
      "Mar 5th, 2024" and the like.
    - A list is found at its first string item that is found; booleans, nulls, objects and other lists are not
      looked for.

    Among the occurrences found, the first wins, unless the field's name (or words of it: "claim_amount" is
    "claim" and "amount") stands within `LABEL_WINDOW` characters before another: the occurrence with the most
    such words wins, so "Amount: 1,200" beats an earlier unrelated "1,200".
    """
    evidence: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        labels = [re.compile(rf"(?<!\w){re.escape(word)}", re.IGNORECASE) for word in _name_words(str(key))]
        candidates = [item for item in value if isinstance(item, str)] if isinstance(value, list) else [value]
        for candidate in candidates:
            match = next(
                (found for p in _patterns_for(candidate) if (found := _best_occurrence(source, p, labels))), None
            )
            if match is not None:
                evidence[key] = {"start": match.start(), "end": match.end(), "quote": match.group()}
                break
    return evidence


@register
class LlmExtract(StepType):
    """Extracts data for the configured JSON Schema.

    Decoding is constrained where the endpoint supports it (TGI `grammar`, OpenAI `response_format`); the
    reply is validated either way, and a reply that fails is shown to the model with its errors up to
    `repair_attempts` times. Still invalid after that: the step fails with the validation errors.

    Each field's confidence comes from the log-probabilities of the tokens that spell it; where the server
    gives none and `agreement_samples` is set, from how many of that many more replies agree with it. With a
    `source` template, each field found in the rendered source has its evidence there (`field_evidence`).
    Output: `{"data": ..., "confidence": {field: p}, "confidence_source": "logprob" | "agreement" | "none",
    "evidence": {field: {"start", "end", "quote"}}, "source_text": <rendered source, "" without one>,
    "text": <raw reply>}`.
    """

    slug = "llm.extract"
    category = "AI"
    name = "Extract data"
    description = "Turn text into data that fits a JSON Schema, with per-field confidence and evidence."
    Config = LlmExtractConfig
    queue = "inference"
    streams_tokens = True

    @classmethod
    def supplied_output_problems(cls, config: dict[str, Any], output: dict[str, Any]) -> list[str]:
        schema = config.get("json_schema")
        return supplied_data_problems(schema, output) if isinstance(schema, dict) else []

    @staticmethod
    def check_config(config: LlmExtractConfig) -> list[str]:
        problems = llm_config_problems(config) + schema_problems(config.json_schema)
        problem = template_check(config.source)
        if problem:
            problems.append(f"source: the template does not parse: {problem}")
        return problems

    async def aexecute(self, config: LlmExtractConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        session = LlmSession(config, context, template_extra=(json.dumps(config.json_schema, sort_keys=True),))
        prompt = await session.arender(config.prompt) + (
            "\n\nReply with only a JSON object that fits this JSON Schema:\n"
            + json.dumps(config.json_schema, sort_keys=True)
        )
        system = await session.arender(config.system)
        # Rendered after the prompt, so the placeholders the model sees are numbered as they always were, and
        # before any call, so a broken source costs no tokens.
        source = await asyncio.to_thread(self._render_source, session, config, context)
        schema = config.json_schema if config.constrained else None
        call = await session.acall(session.request(prompt, system, json_schema=schema, logprobs=True))
        data, problems = json_reply_errors(call.result.text, config.json_schema)
        repairs = 0
        while problems and repairs < config.repair_attempts:
            repairs += 1
            repair = REPAIR_PROMPT.format(reply=call.result.text, problems="\n".join(f"- {p}" for p in problems))
            request = session.request(
                f"{prompt}\n\n{repair}", system, json_schema=schema, logprobs=True, purpose="repair"
            )
            call = await session.acall(request)
            data, problems = json_reply_errors(call.result.text, config.json_schema)
        if problems:
            raise StepError(
                f'Step "{context.step_key}": the extracted data does not match the schema after '
                f"{repairs} repair attempt(s): {'; '.join(problems)}."
            )
        confidence, confidence_source = await self._confidence(session, config, prompt, system, call, data)
        if confidence and session.can_escalate and min(confidence.values()) < (config.routing.escalate_below or 0):  # type: ignore[union-attr]
            escalated = await session.acall(
                session.request(prompt, system, json_schema=schema, logprobs=True, purpose="escalation"),
                large=True,
            )
            escalated_data, escalated_problems = json_reply_errors(escalated.result.text, config.json_schema)
            if not escalated_problems:
                call, data = escalated, escalated_data
                confidence, confidence_source = await self._confidence(
                    session, config, prompt, system, call, data, large=True
                )
        data = session.finish_value(data)
        restored_problems = schema_errors(data, config.json_schema)
        if restored_problems:
            # Valid while masked, invalid once the personal data is back (a maxLength, a pattern): say so.
            raise StepError(
                f'Step "{context.step_key}": the extracted data no longer matches the schema once the masked '
                f"personal data is restored: {'; '.join(restored_problems)}."
            )
        output = {
            "data": data,
            "confidence": confidence,
            "confidence_source": confidence_source,
            # Both sides are finished the same way (sanitised, restored or not), so the offsets found in the
            # text the reviewer is shown point at the values the step outputs.
            "evidence": field_evidence(source, data) if source else {},
            "source_text": source,
            "text": session.finish_text(call.result.text),
        }
        return session.outcome(output, session.usage(repairs=repairs))

    @staticmethod
    def _render_source(session: LlmSession, config: LlmExtractConfig, context: StepContext) -> str:
        """The source as the reviewer reads it: masked and restored exactly as the output's text is, so that
        with `restore_pii` off it shows the same placeholders as the data, and personal data never reaches
        the output by this road."""
        if not config.source:
            return ""
        try:
            text = template_render(config.source, context.expression_variables())
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": the source template failed: {error}') from None
        return session.finish_text(session.mask(text))

    @staticmethod
    async def _confidence(
        session: LlmSession,
        config: LlmExtractConfig,
        prompt: str,
        system: str,
        call: CallResult,
        data: dict[str, Any],
        *,
        large: bool = False,
    ) -> tuple[dict[str, float], ConfidenceSource]:
        """Per-field confidence for the reply in `call` and where it came from: its token log-probabilities,
        else (with `agreement_samples`) the agreement of that many more sampled replies to the same request."""
        confidence = field_confidence(call.result, data)
        if confidence:
            return confidence, "logprob"
        if not config.agreement_samples or not data:
            return {}, "none"
        schema = config.json_schema if config.constrained else None
        base_seed = config.seed if config.seed is not None else 0
        samples: list[Any] = []
        for index in range(config.agreement_samples):
            # Seeds derived from the configured one keep the samples distinct from the first reply and from
            # each other, yet the same on every execution, which replay needs to match recorded calls. Not
            # streamed: the live text is the reply, not the samples checking it.
            request = session.request(
                prompt,
                system,
                json_schema=schema,
                temperature=config.temperature or AGREEMENT_TEMPERATURE,
                seed=base_seed + index + 1,
                purpose="agreement",
                stream=False,
            )
            sample = await session.acall(request, large=large)
            sample_data, sample_problems = json_reply_errors(sample.result.text, config.json_schema)
            samples.append(None if sample_problems else sample_data)
        return field_agreement(data, samples), "agreement"
