"""The development server's building blocks, without HTTP: tokenizer, schemas, scripts, config, bytes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devserver import DEMO_SCRIPT, tokenizer
from devserver.config import DevServerConfig, config_from_args
from devserver.embeddings import cosine, embed
from devserver.engine import Constraint, GenerateParameters, InferError, build_plan, validate
from devserver.protocol import GENERATE_REQUEST, Rejection, decode, f32_text, parse_json
from devserver.schema import example_value, is_valid, regex_example
from devserver.scripts import FALLBACK_PREFIX, Script, ScriptError, choose_reply

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text", ["", "Hello world", "  leading\n\ttabs and, punctuation!!  ", "naïve café — ok", '{"a": [1, 2]}']
)
def test_tokenizer_round_trips_and_is_stable(text: str) -> None:
    pieces = tokenizer.tokenize(text)
    assert "".join(p.text for p in pieces) == text
    assert [p.id for p in pieces] == [p.id for p in tokenizer.tokenize(text)]
    assert tokenizer.count(text) == len(pieces)
    assert all(tokenizer.FIRST_ORDINARY_ID <= p.id < tokenizer.VOCAB_SIZE for p in pieces)
    assert all(-2.1 < tokenizer.token_logprob(p.text, i) < 0 for i, p in enumerate(pieces))


SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"a": {"type": "string", "minLength": 12}, "b": {"type": "integer", "exclusiveMinimum": 5}},
    },
    {"type": "object", "properties": {"n": {"type": "number", "minimum": -3, "maximum": -1}, "e": {"enum": [3, "x"]}}},
    {"type": "object", "properties": {"list": {"type": "array", "items": {"type": "boolean"}, "minItems": 3}}},
    {"type": "object", "properties": {"u": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]}}},
    {"type": "object", "properties": {"t": {"type": ["null", "integer"], "maximum": -4}}},
    {
        "type": "object",
        "properties": {"c": {"const": "fixed"}, "p": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
    },
    {
        "type": "object",
        "properties": {
            "ref": {"$ref": "#/definitions/Inner"},
            "all": {"allOf": [{"$ref": "#/definitions/Inner"}, {"required": ["k"]}]},
        },
        "definitions": {"Inner": {"type": "object", "properties": {"k": {"type": "string", "maxLength": 3}}}},
        "additionalProperties": False,
    },
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_example_values_are_valid(schema: dict[str, Any]) -> None:
    value = example_value(schema)
    jsonschema.validate(value, schema)
    assert is_valid(value, schema)
    assert set(value) == set(schema["properties"]), "every declared property is present"


def test_is_valid_agrees_with_jsonschema_on_invalid_values() -> None:
    cases = [
        ({"a": 1}, SCHEMAS[0]),
        ({"n": 0}, SCHEMAS[1]),
        ({"list": [True]}, SCHEMAS[2]),
        ({"t": "x"}, SCHEMAS[4]),
        ({"p": "ab-123"}, SCHEMAS[5]),
        ({"extra": 1}, SCHEMAS[6]),
        ({"x": True}, {"type": "object", "properties": {"x": {"type": "integer"}}}),
    ]
    for value, schema in cases:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, schema)
        assert not is_valid(value, schema), value


@pytest.mark.parametrize(
    "pattern", [r"\d{4}-\d{2}", r"(approve|reject): .+", r"[^x]{2,}Z?", r"(?:ab)+c", r"\w+@\w+\.(com|org)"]
)
def test_regex_examples_match(pattern: str) -> None:
    text = regex_example(pattern)
    assert text is not None and re.fullmatch(pattern, text)


def test_demo_script_loads_and_answers_every_claim() -> None:
    script = Script.load(DEMO_SCRIPT)
    schema = {
        "type": "object",
        "properties": {
            "claimant": {"type": "string"},
            "policy_number": {"type": "string"},
            "incident_type": {"enum": ["auto", "property", "injury", "theft", "other"]},
            "amount": {"type": "number"},
            "injury_reported": {"type": "boolean"},
            "summary": {"type": "string"},
        },
        "required": ["claimant", "policy_number", "incident_type", "amount", "injury_reported", "summary"],
        "additionalProperties": False,
    }
    for policy in ("POL-10442", "POL-20917", "POL-31808", "POL-48230"):
        reply = choose_reply(
            script, route="chat", match_text=f"claim {policy}", tail_source="x", constraint=Constraint("json", schema)
        )
        assert reply.source == "script"
        value = json.loads(reply.text)
        jsonschema.validate(value, schema)
        assert value["policy_number"] == policy


def test_reply_selection_order() -> None:
    script = Script.from_data(
        [
            {"match": {"contains": ["alpha", "beta"]}, "response": "both"},
            {"match": {"regex": r"\bgamma\b"}, "route": "generate", "response": '{"n": 1}'},
        ]
    )
    schema = Constraint("json", {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5}}})
    assert choose_reply(script, route="chat", match_text="alpha beta", tail_source="", constraint=None).text == "both"
    assert (
        choose_reply(script, route="chat", match_text="alpha", tail_source="hi", constraint=None).source == "fallback"
    )
    assert (
        choose_reply(script, route="chat", match_text="gamma", tail_source="hi", constraint=None).source == "fallback"
    )
    scripted = choose_reply(script, route="generate", match_text="gamma", tail_source="", constraint=None)
    assert scripted.text == '{"n": 1}'
    repaired = choose_reply(script, route="generate", match_text="gamma", tail_source="", constraint=schema)
    assert (repaired.source, json.loads(repaired.text)) == ("schema", {"n": 5})
    fallback = choose_reply(
        Script.empty(), route="chat", match_text="", tail_source="first\nlast line", constraint=None
    )
    assert fallback.text.startswith(FALLBACK_PREFIX) and '"last line"' in fallback.text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rules": "nope"}, "expected a list of rules"),
        ([{"match": {}, "response": 5}], "rule 1: 'response' must be"),
        ([{"match": {"regex": "("}, "response": "x"}], "'match.regex' is not a valid regular expression"),
        ([{"route": ["chat", "embed"], "response": "x"}], "'route' must list some of"),
        ([{"response": "x", "fault": "explode"}], "'fault' must be one of"),
        ([{"kind": "recorded", "response": "x"}], "kind 'recorded' is not supported"),
    ],
)
def test_script_errors_are_readable(data: Any, message: str) -> None:
    with pytest.raises(ScriptError, match=re.escape(message)):
        Script.from_data(data, "test.json")


def test_script_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="cannot read script"):
        Script.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ScriptError, match="not valid JSON"):
        Script.load(bad)


def test_config_precedence() -> None:
    environ = {"AIOS_DEVSERVER_TTFT_MS": "250", "AIOS_DEVSERVER_MODEL_ID": "env/model", "AIOS_DEVSERVER_API_KEY": "k"}
    config = config_from_args(["--ttft-ms", "5", "--return-full-text-default", "false"], environ)
    assert config.ttft_ms == 5.0, "the flag wins"
    assert config.model_id == "env/model", "the environment fills in"
    assert config.api_key == "k"
    assert config.return_full_text_default is False
    assert config.tpot_ms == DevServerConfig().tpot_ms, "defaults otherwise"
    with pytest.raises(SystemExit):
        config_from_args([], {"AIOS_DEVSERVER_MAX_CONCURRENT_REQUESTS": "many"})
    with pytest.raises(SystemExit):
        config_from_args(["--max-input-tokens", "10", "--max-total-tokens", "10"], {})


def test_plan_stops_where_tgi_would() -> None:
    config = DevServerConfig()
    valid = validate("prompt", GenerateParameters(stop=["ta"], max_new_tokens=10), config, streaming=False)
    plan = build_plan("alpha beta gamma", valid)
    assert plan.generated_text == "alpha beta" and plan.finish_reason == "stop_sequence"
    valid = validate("prompt", GenerateParameters(max_new_tokens=3), config, streaming=False)
    plan = build_plan("alpha beta", valid)
    assert [t.text for t in plan.tokens] == ["alpha", " beta", "</s>"] and plan.finish_reason == "eos_token"
    plan = build_plan("", valid)
    assert plan.generated_text == "" and plan.generated_tokens == 1
    with pytest.raises(InferError, match="`inputs` cannot be empty"):
        validate("", GenerateParameters(), config, streaming=False)


def test_embeddings() -> None:
    a, b, c = (
        embed("The car was damaged in a collision"),
        embed("A collision damaged the car"),
        embed("Invoice total is wrong"),
    )
    assert len(a) == 384
    assert cosine(a, b) > 0.5 > cosine(a, c)
    assert embed("") == embed("!!!"), "no features still gives a fixed unit vector"
    assert embed("same text") == embed("same text")


def test_f32_text_matches_serde() -> None:
    assert f32_text(0.1) == "0.1"
    assert f32_text(-0.34) == "-0.34"
    assert f32_text(1.0) == "1.0"
    assert f32_text(0.0) == "0.0"
    assert f32_text(1e-8) == "1e-08"
    assert float(f32_text(0.123456789)) == pytest.approx(0.123456789, rel=1e-6)


def test_serde_style_errors() -> None:
    text = '{\n  "inputs": "x",\n  "parameters": {"stop": null}\n}'
    with pytest.raises(Rejection) as rejection:
        decode(GENERATE_REQUEST, json.loads(text), text)
    assert rejection.value.status == 422
    assert rejection.value.text.endswith("parameters.stop: invalid type: null, expected a sequence at line 3 column 29")
    with pytest.raises(Rejection) as syntax:
        parse_json(b'{"inputs": }')
    assert syntax.value.status == 400
    assert syntax.value.text == "Failed to parse the request body as JSON: expected value at line 1 column 12"


def test_devserver_and_client_import_without_django() -> None:
    # The dev server runs as its own process next to the product; the client must work outside Django too.
    code = (
        "import sys\n"
        "import devserver.__main__, devserver.runner\n"
        "assert 'django' not in sys.modules, sorted(m for m in sys.modules if m.startswith('django'))\n"
        "import apps.inference.client as c\n"
        "assert c.default_base_url()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
