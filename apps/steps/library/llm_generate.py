"""`llm.generate`: render a prompt, stream the model's reply, optionally as JSON for a schema."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import jsonschema
from django.conf import settings
from pydantic import Field

from apps.inference import client
from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType
from apps.steps.expressions import ExpressionError, template_check, template_render
from apps.steps.registry import register


class LlmGenerateConfig(StepConfig):
    prompt: str = Field(min_length=1, description="Text template; may use {{ input.x }} and {{ steps.key.field }}.")
    system: str = Field("", description="Optional system instruction (chat endpoints).")
    max_new_tokens: int = Field(256, ge=1, le=8192)
    temperature: float | None = Field(None, gt=0, le=5)
    seed: int | None = Field(None, ge=0)
    output: Literal["text", "json"] = Field("text", description="text, or json to get data for json_schema.")
    json_schema: dict[str, Any] | None = Field(
        None, description="Required when output is json: the JSON Schema the reply must satisfy."
    )


@register
class LlmGenerate(StepType):
    """Calls the configured model server, streaming tokens to the run page.

    Output: `{"text": <reply>}`, plus `"data"` (the parsed reply) when `output` is json. On a TGI endpoint
    the JSON schema becomes a `grammar` so decoding is constrained; on OpenAI-compatible endpoints it is
    sent as `response_format`. Either way the reply is validated against the schema before it is accepted.
    """

    slug = "llm.generate"
    name = "Generate text"
    description = "Ask a language model; stream its reply; optionally get JSON for a schema."
    Config = LlmGenerateConfig
    queue = "inference"
    streams_tokens = True

    @staticmethod
    def check_config(config: LlmGenerateConfig) -> list[str]:
        problems = []
        for field in ("prompt", "system"):
            problem = template_check(getattr(config, field))
            if problem:
                problems.append(f"{field}: the template does not parse: {problem}")
        if config.output == "json":
            if not config.json_schema:
                problems.append("json_schema: required when output is json")
            else:
                try:
                    jsonschema.Draft202012Validator.check_schema(config.json_schema)
                except jsonschema.SchemaError as error:
                    problems.append(f"json_schema: not a valid JSON Schema: {error.message}")
                if config.json_schema.get("type") != "object" or not config.json_schema.get("properties"):
                    problems.append("json_schema: must be an object schema with properties")
        return problems

    def execute(self, config: LlmGenerateConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        variables = context.expression_variables()
        try:
            prompt = template_render(config.prompt, variables)
            system = template_render(config.system, variables) if config.system else ""
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": the prompt template failed: {error}') from None
        schema = config.json_schema if config.output == "json" else None
        common: dict[str, Any] = {
            "base_url": settings.AIOS_INFERENCE_URL,
            "token": settings.AIOS_INFERENCE_TOKEN or None,
            "timeout": settings.AIOS_INFERENCE_TIMEOUT,
            "temperature": config.temperature,
            "seed": config.seed,
            "on_token": context.emit_tokens,
        }
        try:
            if settings.AIOS_INFERENCE_KIND == "tgi":
                # TGI does not name its model in a stream; /info does (OpenAI-compatible replies name it).
                model_id = _served_model_id(settings.AIOS_INFERENCE_URL, settings.AIOS_INFERENCE_TOKEN or None)
                full_prompt = f"{system}\n\n{prompt}" if system else prompt
                result = client.generate_stream(
                    prompt=full_prompt,
                    max_new_tokens=config.max_new_tokens,
                    grammar={"type": "json", "value": schema} if schema else None,
                    model_id=model_id,
                    **common,
                )
            else:
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt}
                ]
                result = client.chat_stream(
                    model=settings.AIOS_INFERENCE_MODEL or None,
                    messages=messages,
                    max_tokens=config.max_new_tokens,
                    response_format=(
                        {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}} if schema else None
                    ),
                    **common,
                )
        except client.InferenceError as error:
            raise StepError(str(error), retryable=error.retryable) from None
        output: dict[str, Any] = {"text": result.text}
        if schema is not None:
            output["data"] = _parse_json_reply(result.text, schema, context.step_key)
        usage = {
            "model_id": result.model_id,
            "prompt_tokens": result.prompt_tokens,
            "generated_tokens": result.generated_tokens,
            "finish_reason": result.finish_reason,
            "ttft_ms": result.ttft_ms,
            "latency_ms": result.latency_ms,
            "seed": result.seed,
            "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            "template_sha256": hashlib.sha256((config.system + "\x00" + config.prompt).encode()).hexdigest(),
            "endpoint": client.redact_url(settings.AIOS_INFERENCE_URL),
        }
        return StepOutcome(output=output, usage=usage)


# The model behind an endpoint changes only when the server restarts with another one; asking /info once
# per process per URL keeps that round trip off every step. (Endpoint records with probes arrive with
# model endpoint management.)
_model_ids: dict[str, str] = {}


def _served_model_id(base_url: str, token: str | None) -> str:
    if base_url not in _model_ids:
        info = client.server_info(base_url, token=token)
        revision = info.get("model_sha")
        _model_ids[base_url] = f"{info.get('model_id', 'unknown')}" + (f"@{revision[:12]}" if revision else "")
    return _model_ids[base_url]


def _parse_json_reply(text: str, schema: dict[str, Any], step_key: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise StepError(f'Step "{step_key}": the model\'s reply is not valid JSON ({error.msg}).') from None
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    if errors:
        details = "; ".join(f"{'/'.join(map(str, e.path)) or 'reply'}: {e.message}" for e in errors[:5])
        raise StepError(f'Step "{step_key}": the model\'s reply does not match the schema: {details}.')
    return data
