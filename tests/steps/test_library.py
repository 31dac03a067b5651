"""The step library without a worker: the registry, expressions and templates, `data.transform`, and
`llm.generate` called directly against the development inference server."""

from __future__ import annotations

import re
from typing import Any

import pytest

from apps.steps.base import StepConfig, StepContext, StepError, StepType
from apps.steps.expressions import (
    MAX_EXPRESSION_LENGTH,
    ExpressionError,
    cel_check,
    cel_evaluate,
    template_check,
    template_render,
)
from apps.steps.library.data_transform import DataTransform
from apps.steps.library.llm_generate import LlmGenerate
from apps.steps.registry import register, step_config_errors, step_config_parse, step_type_get, step_types
from apps.workflows.demo import CLAIM_FIELDS_SCHEMA, SAMPLE_CLAIMS

MARIA_LOPEZ_CLAIM = SAMPLE_CLAIMS[0]["claim_text"]


def context(
    *,
    step_key: str = "step",
    input: dict[str, Any] | None = None,
    steps: dict[str, dict[str, Any]] | None = None,
    emit_tokens: Any = None,
) -> StepContext:
    extra = {"emit_tokens": emit_tokens} if emit_tokens is not None else {}
    return StepContext(
        run_id=1,
        step_key=step_key,
        input=input or {},
        steps=steps or {},
        idempotency_key=f"run-1-{step_key}",
        **extra,
    )


# --- the registry --------------------------------------------------------------------------------------


def test_step_types_lists_the_library_by_slug():
    types = step_types()
    assert {"data.transform", "llm.generate"} <= set(types)
    assert list(types) == sorted(types)
    for slug, step_type in types.items():
        assert step_type.slug == slug
        assert issubclass(step_type.Config, StepConfig)
        assert step_type.name and step_type.description and step_type.__doc__
        assert step_type.config_schema()["type"] == "object"


def test_step_type_get_returns_the_class():
    assert step_type_get("llm.generate") is LlmGenerate
    assert step_type_get("data.transform") is DataTransform
    assert LlmGenerate.queue == "inference" and LlmGenerate.streams_tokens
    assert DataTransform.queue == "engine"


def test_unknown_slug_is_named_in_the_error():
    with pytest.raises(KeyError) as raised:
        step_type_get("text.shout")
    assert raised.value.args[0] == 'unknown step type "text.shout"'
    assert step_config_errors("text.shout", {}) == ['unknown step type "text.shout"']


def test_a_second_class_under_a_taken_slug_is_refused():
    class Impostor(StepType):
        slug = "data.transform"
        name = "Impostor"
        description = "Not the real one."
        Config = StepConfig

    with pytest.raises(RuntimeError, match=re.escape("step type 'data.transform' is registered twice")):
        register(Impostor)
    assert step_type_get("data.transform") is DataTransform
    register(DataTransform)  # registering the same class again is harmless


@pytest.mark.parametrize(
    ("slug", "config", "expected"),
    [
        ("data.transform", {}, ["fields: Field required"]),
        ("data.transform", {"fields": {}}, ["fields: Dictionary should have at least 1 item after validation, not 0"]),
        ("data.transform", {"fields": {"a": "1"}, "feilds": {}}, ["feilds: Extra inputs are not permitted"]),
        ("data.transform", {"fields": {"a": 1}}, ["fields.a: Input should be a valid string"]),
        ("llm.generate", {"prompt": ""}, ["prompt: String should have at least 1 character"]),
        (
            "llm.generate",
            {"prompt": "x", "max_new_tokens": 0, "temperature": 0},
            [
                "max_new_tokens: Input should be greater than or equal to 1",
                "temperature: Input should be greater than 0",
            ],
        ),
        ("llm.generate", {"prompt": "x", "output": "yaml"}, ["output: Input should be 'text' or 'json'"]),
        ("llm.generate", {"prompt": "x", "output": "json"}, ["json_schema: required when output is json"]),
        (
            "llm.generate",
            {"prompt": "x", "output": "json", "json_schema": {"type": "array", "items": {"type": "string"}}},
            ["json_schema: must be an object schema with properties"],
        ),
    ],
)
def test_step_config_errors_are_readable(slug, config, expected):
    assert step_config_errors(slug, config) == expected


def test_valid_configs_have_no_errors_and_parse():
    assert step_config_errors("data.transform", {"fields": {"total": "input.a + input.b"}}) == []
    config = {"prompt": "Claim: {{ input.claim_text }}", "output": "json", "json_schema": CLAIM_FIELDS_SCHEMA}
    assert step_config_errors("llm.generate", config) == []
    parsed = step_config_parse("llm.generate", config)
    assert parsed.max_new_tokens == 256 and parsed.output == "json"


# --- expressions and templates -------------------------------------------------------------------------


def test_cel_check():
    assert cel_check('input.amount > 1000.0 ? "big" : "small"') is None
    problem = cel_check("input.amount >")
    assert problem is not None and "Syntax error" in problem and "\n" not in problem
    assert (
        cel_check("1" * (MAX_EXPRESSION_LENGTH + 1)) == f"expression is longer than {MAX_EXPRESSION_LENGTH} characters"
    )


def test_cel_evaluate_reads_the_variables():
    variables = {"input": {"amount": 850.0, "items": [1, 2, 3]}, "steps": {"extract": {"data": {"name": "Maria"}}}}
    assert cel_evaluate('input.amount <= 1000.0 ? "auto_approve" : "adjuster_queue"', variables) == "auto_approve"
    assert cel_evaluate("size(input.items)", variables) == 3
    assert cel_evaluate('steps.extract.data.name + " Lopez"', variables) == "Maria Lopez"


@pytest.mark.parametrize(
    ("expression", "variables", "words"),
    [
        ("input.missing", {"input": {}}, "no such field: missing"),
        ("nobody.here", {}, "Undefined variable or function: 'nobody'"),
        ("1 + 2.5", {}, "No such overload"),
        ("1 / 0", {}, "division by zero"),
        ("input.amount >", {"input": {}}, "Syntax error"),
    ],
)
def test_cel_evaluate_failures_are_expression_errors(expression, variables, words):
    with pytest.raises(ExpressionError, match=re.escape(words)):
        cel_evaluate(expression, variables)


def test_template_check():
    assert template_check("Claim: {{ input.claim_text }}") is None
    assert template_check("{% for x in input.items %}{{ x }}{% endfor %}") is None
    assert "end of print statement" in (template_check("{{ input.claim_text ") or "")
    assert "Encountered unknown tag 'frobnicate'" in (template_check("{% frobnicate %}") or "")


def test_template_render_substitutes_and_keeps_trailing_newlines():
    text = template_render(
        "Hello {{ input.name }}, {{ steps.a.n + 1 }}\n", {"input": {"name": "Ana"}, "steps": {"a": {"n": 1}}}
    )
    assert text == "Hello Ana, 2\n"


def test_template_render_is_strict_about_undefined_names():
    with pytest.raises(ExpressionError, match="'nobody' is undefined"):
        template_render("{{ nobody }}", {})
    with pytest.raises(ExpressionError, match="has no attribute 'missing'"):
        template_render("{{ input.missing }}", {"input": {}})


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ joiner.__call__.__globals__ }}",
        "{{ input.__class__ }}",
    ],
)
def test_template_sandbox_refuses_python_internals(template):
    with pytest.raises(ExpressionError, match="unsafe"):
        template_render(template, {"input": {}})


def test_lipsum_is_gone_from_templates():
    # It built text as large as its arguments asked in one call, and no business template needs it.
    with pytest.raises(ExpressionError, match="'lipsum' is undefined"):
        template_render("{{ lipsum.__globals__ }}", {"input": {}})


def test_template_sandbox_is_immutable():
    items: list[int] = []
    with pytest.raises(ExpressionError, match="access to attribute 'append' of 'list' object is unsafe"):
        template_render("{{ input.items_list.append(1) }}", {"input": {"items_list": items}})
    assert items == []


def test_template_output_is_bounded():
    # One value that large is refused before it is built; output assembled from smaller pieces is refused as
    # soon as the running length passes the bound.
    with pytest.raises(ExpressionError, match="would build a value of 200,001 characters"):
        template_render("{{ 'x' * 200001 }}", {})
    with pytest.raises(ExpressionError, match="longer than 200000 characters"):
        template_render("{% for i in range(3) %}{{ 'x' * 100000 }}{% endfor %}", {})


# --- data.transform --------------------------------------------------------------------------------------


def transform(fields: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    config = step_config_parse("data.transform", {"fields": fields})
    return DataTransform().execute(config, context(**kwargs)).output


def test_transform_evaluates_fields_against_input_and_steps():
    output = transform(
        {
            "route": 'steps.extract.data.amount <= 1000.0 ? "auto_approve" : "adjuster_queue"',
            "claimant": "steps.extract.data.claimant",
            "doubled": "input.count * 2",
        },
        input={"count": 21},
        steps={"extract": {"data": {"amount": 850.0, "claimant": "Maria Lopez"}}},
    )
    assert output == {"route": "auto_approve", "claimant": "Maria Lopez", "doubled": 42}


def test_transform_failure_names_step_field_and_expression():
    with pytest.raises(StepError) as raised:
        transform(
            {"ok": "1", "amount": "steps.extract.data.amount * 2"}, step_key="decide", steps={"extract": {"data": {}}}
        )
    error = raised.value
    assert error.message == (
        'Step "decide", field "amount": the expression `steps.extract.data.amount * 2` failed: no such field: amount'
    )
    assert str(error) == error.message and not error.retryable


def test_transform_field_names_must_be_identifiers():
    errors = step_config_errors("data.transform", {"fields": {"claim amount": "1", "ok_name": "1 +"}})
    assert errors[0] == 'fields: "claim amount" is not a valid field name (letters, digits and _)'
    assert errors[1].startswith("fields.ok_name: the expression does not parse: ")
    assert len(errors) == 2


# --- llm.generate against the development inference server ----------------------------------------------


def generate(config: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    assert step_config_errors("llm.generate", config) == []
    tokens: list[str] = []
    outcome = LlmGenerate().execute(
        step_config_parse("llm.generate", config), context(emit_tokens=tokens.append, **kwargs)
    )
    assert outcome.wait is None
    return outcome.output, outcome.usage, tokens


CLAIM_EXTRACTION = {
    "system": "You extract structured fields from insurance claims. Reply with JSON only.",
    "prompt": "Extract the fields of this claim.\n\nClaim:\n{{ input.claim_text }}",
    "max_new_tokens": 300,
    "output": "json",
    "json_schema": CLAIM_FIELDS_SCHEMA,
}


@pytest.mark.django_db
def test_generate_text_streams_every_token(settings):
    settings.AIOS_TOKEN_FLUSH_SECONDS = 0.01  # tokens are coalesced per interval: a short one shows several chunks
    output, usage, tokens = generate(
        {"prompt": "Say hello to {{ input.name }}.", "max_new_tokens": 64}, input={"name": "Ana"}
    )
    assert output["text"].startswith("[AIOS development server]")
    assert "Say hello to Ana." in output["text"]
    assert len(tokens) > 1 and "".join(tokens) == output["text"]
    assert usage["generated_tokens"] >= len(tokens)
    # No endpoint configured: the server in AIOS_INFERENCE_URL, as the "default" endpoint.
    assert usage["endpoint"] == "default" and usage["calls"] == 1
    assert usage["model_id"].startswith("aios/dev-model")
    assert usage["prompt_tokens"] > 0 and usage["finish_reason"] in ("stop", "length")
    assert len(usage["input_sha256"]) == 64 and len(usage["template_sha256"]) == 64


@pytest.mark.django_db
def test_generate_json_matches_the_claim_schema(settings):
    output, _, tokens = generate(CLAIM_EXTRACTION, input={"claim_text": MARIA_LOPEZ_CLAIM})
    assert "POL-10442" in MARIA_LOPEZ_CLAIM
    assert output["data"]["claimant"] == "Maria Lopez"
    assert output["data"]["policy_number"] == "POL-10442"
    assert output["data"]["amount"] == 850.0
    assert "".join(tokens) == output["text"]


@pytest.mark.django_db
def test_generate_over_the_openai_compatible_chat_route(settings):
    settings.AIOS_INFERENCE_KIND = "openai-compatible"
    output, usage, tokens = generate(CLAIM_EXTRACTION, input={"claim_text": MARIA_LOPEZ_CLAIM})
    assert output["data"]["claimant"] == "Maria Lopez"
    assert "".join(tokens) == output["text"]
    assert usage["generated_tokens"] > 0 and usage["finish_reason"] in ("stop", "length")

    output, _, tokens = generate(
        {"prompt": "Say hello to {{ input.name }}.", "max_new_tokens": 64}, input={"name": "Ana"}
    )
    assert output["text"].startswith("[AIOS development server]") and "".join(tokens) == output["text"]


@pytest.mark.django_db
def test_generate_template_failure_is_a_step_error(settings):
    with pytest.raises(StepError, match=r'Step "extract": the prompt template failed: .*claim_text'):
        generate(CLAIM_EXTRACTION, step_key="extract", input={})


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            {
                "prompt": "x",
                "output": "json",
                "json_schema": {"type": "object", "properties": {"a": {"type": "wrong"}}},
            },
            "not a valid JSON Schema",
        ),
        (
            {"prompt": "x", "output": "json", "json_schema": {"type": "object"}},
            "must be an object schema with properties",
        ),
        ({"prompt": "{{ input.x ", "output": "text"}, "prompt: the template does not parse"),
        ({"prompt": "x", "system": "{% if %}"}, "system: the template does not parse"),
    ],
)
def test_check_config_refuses_bad_schemas_and_templates(config, words):
    problems = LlmGenerate.check_config(step_config_parse("llm.generate", config))
    assert any(words in problem for problem in problems), problems
