"""`llm.extract`: structured data for a JSON Schema the analyst defines, always schema-valid or a failed step."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import Field, field_validator

from apps.inference.client import InferenceResult
from apps.steps.base import StepContext, StepError, StepOutcome, StepType
from apps.steps.library.llm_generate import json_reply_errors, schema_errors, schema_for_model, schema_problems
from apps.steps.llm import LlmSession, LlmStepConfig, llm_config_problems
from apps.steps.registry import register

REPAIR_PROMPT = (
    "Your previous reply did not match the required JSON Schema.\n"
    "Previous reply:\n{reply}\n\nProblems:\n{problems}\n\n"
    "Reply again with only the corrected JSON object."
)


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


@register
class LlmExtract(StepType):
    """Extracts data for the configured JSON Schema.

    Decoding is constrained where the endpoint supports it (TGI `grammar`, OpenAI `response_format`); the
    reply is validated either way, and a reply that fails is shown to the model with its errors up to
    `repair_attempts` times. Still invalid after that: the step fails with the validation errors.
    Output: `{"data": ..., "confidence": {field: p}, "text": <raw reply>}`.
    """

    slug = "llm.extract"
    category = "AI"
    name = "Extract data"
    description = "Turn text into data that fits a JSON Schema, with per-field confidence."
    Config = LlmExtractConfig
    queue = "inference"
    streams_tokens = True

    @staticmethod
    def check_config(config: LlmExtractConfig) -> list[str]:
        return llm_config_problems(config) + schema_problems(config.json_schema)

    async def aexecute(self, config: LlmExtractConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        session = LlmSession(config, context, template_extra=(json.dumps(config.json_schema, sort_keys=True),))
        prompt = session.render(config.prompt) + (
            "\n\nReply with only a JSON object that fits this JSON Schema:\n"
            + json.dumps(config.json_schema, sort_keys=True)
        )
        system = session.render(config.system)
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
        confidence = field_confidence(call.result, data)
        if confidence and session.can_escalate and min(confidence.values()) < (config.routing.escalate_below or 0):  # type: ignore[union-attr]
            escalated = await session.acall(
                session.request(prompt, system, json_schema=schema, logprobs=True, purpose="escalation"),
                large=True,
            )
            escalated_data, escalated_problems = json_reply_errors(escalated.result.text, config.json_schema)
            if not escalated_problems:
                call, data, confidence = escalated, escalated_data, field_confidence(escalated.result, escalated_data)
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
            "text": session.finish_text(call.result.text),
        }
        return StepOutcome(output=output, usage=session.usage(repairs=repairs))
