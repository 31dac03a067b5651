"""`llm.generate`: render a prompt, stream the model's reply, optionally as JSON for a schema."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
from pydantic import Field, field_validator

from apps.steps.base import StepContext, StepError, StepOutcome, StepType
from apps.steps.llm import LlmSession, LlmStepConfig, llm_config_problems
from apps.steps.registry import register


class LlmGenerateConfig(LlmStepConfig):
    output: Literal["text", "json"] = Field("text", description="text, or json to get data for json_schema.")
    json_schema: dict[str, Any] | None = Field(
        None,
        title="Reply fields",
        description="Required when output is json: the fields the reply must have.",
        json_schema_extra={"x-widget": "schema-table"},
    )

    @field_validator("json_schema")
    @classmethod
    def _plain_schema(cls, value: Any) -> Any:
        return schema_for_model(value)


def schema_for_model(schema: Any) -> Any:
    """An output schema without the builder's field order (`x-order`), which only the builder reads: the model
    server, the prompt and validation see plain JSON Schema."""
    if isinstance(schema, dict) and "x-order" in schema:
        return {key: value for key, value in schema.items() if key != "x-order"}
    return schema


def supplied_data_problems(schema: Any, output: dict[str, Any]) -> list[str]:
    """What is wrong with a supplied `{"data": ...}` output against the step's output schema."""
    if "data" not in output:
        return ['data: missing (the step outputs its fields under "data")']
    return [f"data/{problem}" for problem in schema_errors(output["data"], schema_for_model(schema))]


def schema_problems(schema: dict[str, Any] | None, field: str = "json_schema") -> list[str]:
    """Why `schema` cannot be used as an output schema (empty when it can)."""
    if not schema:
        return [f"{field}: required"]
    problems = []
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        problems.append(f"{field}: not a valid JSON Schema: {error.message}")
    if schema.get("type") != "object" or not schema.get("properties"):
        problems.append(f"{field}: must be an object schema with properties")
    return problems


@register
class LlmGenerate(StepType):
    """Calls a model, streaming tokens to the run page.

    Output: `{"text": <reply>}`, plus `"data"` (the parsed reply) when `output` is json. On a TGI endpoint
    the JSON schema becomes a `grammar` so decoding is constrained; on OpenAI-compatible endpoints it is
    sent as `response_format`. Either way the reply is validated against the schema before it is accepted.
    """

    slug = "llm.generate"
    category = "AI"
    name = "Generate text"
    description = "Ask a language model; stream its reply; optionally get JSON for a schema."
    Config = LlmGenerateConfig
    queue = "inference"
    streams_tokens = True

    @classmethod
    def supplied_output_problems(cls, config: dict[str, Any], output: dict[str, Any]) -> list[str]:
        if config.get("output") == "json" and isinstance(config.get("json_schema"), dict):
            return supplied_data_problems(config["json_schema"], output)
        return [] if isinstance(output.get("text"), str) else ["text: missing or not text"]

    @staticmethod
    def check_config(config: LlmGenerateConfig) -> list[str]:
        problems = llm_config_problems(config)
        if config.output == "json":
            problems += [
                p.replace("required", "required when output is json") for p in schema_problems(config.json_schema)
            ]
        return problems

    async def aexecute(self, config: LlmGenerateConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        session = LlmSession(config, context)
        prompt, system = await session.arender(config.prompt), await session.arender(config.system)
        schema = config.json_schema if config.output == "json" else None
        call = await session.acall(session.request(prompt, system, json_schema=schema))
        output: dict[str, Any] = {"text": session.finish_text(call.result.text)}
        if schema is not None:
            output["data"] = session.finish_value(_parse_json_reply(call.result.text, schema, context.step_key))
            restored_problems = schema_errors(output["data"], schema)
            if restored_problems:
                raise StepError(
                    f'Step "{context.step_key}": the reply no longer matches the schema once the masked personal '
                    f"data is restored: {'; '.join(restored_problems)}."
                )
        return session.outcome(output, session.usage(finish_reason=call.result.finish_reason))


def json_reply_errors(text: str, schema: dict[str, Any]) -> tuple[Any, list[str]]:
    """The parsed reply and what is wrong with it against `schema` (empty list when it is valid)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return None, [f"the reply is not valid JSON ({error.msg} at position {error.pos})"]
    return data, schema_errors(data, schema)


def schema_errors(data: Any, schema: dict[str, Any]) -> list[str]:
    """What is wrong with `data` against `schema`, at most eight readable lines (empty when valid)."""
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.path)) or 'reply'}: {e.message}" for e in errors[:8]]


def _parse_json_reply(text: str, schema: dict[str, Any], step_key: str) -> Any:
    data, problems = json_reply_errors(text, schema)
    if problems:
        raise StepError(f'Step "{step_key}": the model\'s reply does not match the schema: {"; ".join(problems)}.')
    return data
