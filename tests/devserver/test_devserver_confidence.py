"""Scripted confidence: a rule's `confidence` and `default_confidence` become token log-probabilities whose
per-field geometric mean, as `llm.extract` scores it, is the scripted probability, over TGI's protocol and the
OpenAI-compatible one, streamed and not; bad values are refused when the script loads; and a rule without
them answers byte for byte as it always has.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from apps.inference.client import InferenceResult
from apps.steps.library.llm_extract import field_confidence
from apps.workflows.demo import CLAIM_FIELDS_SCHEMA, SAMPLE_CLAIMS
from devserver import DEMO_SCRIPT, DevServerConfig
from devserver.runner import running_in_thread
from devserver.scripts import Script, ScriptError
from tests.inference.shapes import SHAPES, Shape, call

CLAIM: dict[str, Any] = {
    "claimant": "Zoë Ünal",
    "amount": 1234.5,
    "injury_reported": False,
    "tags": ["a", "b"],
    "summary": 'A "quoted" word, and more.',
}
CONFIDENCE = {"claimant": 0.99, "amount": 0.62, "injury_reported": 0.71, "tags": 1.0}  # summary: the default
RULES: list[dict[str, Any]] = [
    {
        "name": "scripted claim",
        "match": {"contains": "SCRIPTED-CLAIM"},
        "response": {"json": CLAIM},
        "confidence": CONFIDENCE,
        "default_confidence": 0.84,
    },
    {
        "name": "fields only",
        "match": {"contains": "FIELDS-ONLY"},
        "response": {"json": CLAIM},
        "confidence": {"amount": 0.5},
    },
    {"name": "plain claim", "match": {"contains": "PLAIN-CLAIM"}, "response": {"json": CLAIM}},
]


@pytest.fixture(scope="module")
def scripted_url() -> Iterator[str]:
    config = DevServerConfig(port=0, ttft_ms=0, tpot_ms=0, log_level="warning")
    with running_in_thread(config, Script.from_data(RULES)) as url:
        yield url


def scores(result: InferenceResult) -> dict[str, float]:
    """What `llm.extract` reports for the reply, to the 2 decimals the scripted values have."""
    return {field: round(score, 2) for field, score in field_confidence(result, json.loads(result.text)).items()}


def assert_alternatives_consistent(result: InferenceResult) -> None:
    """The chosen token is the likeliest at its position, and the probabilities shown sum to about 1 at most."""
    rows = [token for token in result.tokens if token.top]
    assert rows, "the server gave alternatives"
    for token in rows:
        assert token.top[0] == (token.text, token.logprob), token
        others = [logprob for _, logprob in token.top[1:]]
        assert others and all(logprob is not None and logprob < token.logprob for logprob in others), token
        # At most 1, give or take the 4-decimal rounding of each log-probability (and a certain token's
        # alternatives, which are merely very unlikely).
        assert sum(math.exp(logprob) for _, logprob in token.top if logprob is not None) < 1.0001, token


@pytest.mark.parametrize("shape", SHAPES)
def test_each_field_scores_its_scripted_confidence(scripted_url: str, shape: Shape) -> None:
    result = call(shape, scripted_url, "Extract SCRIPTED-CLAIM", max_tokens=200, logprobs=True, top_logprobs=3)
    assert json.loads(result.text) == CLAIM
    assert scores(result) == {**CONFIDENCE, "summary": 0.84}
    # A field at 1.0 is spelled by certain tokens (logprob 0), and no token is likelier than certain.
    assert all(logprob is not None and logprob <= 0 for logprob in (token.logprob for token in result.tokens))
    assert [token.logprob for token in result.tokens].count(0.0) >= len(["a", "b"])
    assert_alternatives_consistent(result)


@pytest.mark.parametrize("shape", SHAPES)
def test_without_a_default_every_other_token_is_099(scripted_url: str, shape: Shape) -> None:
    result = call(shape, scripted_url, "Extract FIELDS-ONLY", max_tokens=200, logprobs=True)
    assert scores(result) == {"claimant": 0.99, "amount": 0.5, "injury_reported": 0.99, "tags": 0.99, "summary": 0.99}
    # The keys and punctuation too: all the reply's tokens but the amount's (" 1234", ".", "5") and the end.
    outside = [token.logprob for token in result.tokens if token.text not in (" 1234", ".", "5", "</s>")]
    assert len(outside) == len(result.tokens) - 4
    assert round(math.exp(sum(lp for lp in outside if lp is not None) / len(outside)), 2) == 0.99


def test_the_jitter_is_small_and_deterministic(scripted_url: str) -> None:
    first = call(("generate", False), scripted_url, "Extract SCRIPTED-CLAIM", logprobs=True)
    again = call(("generate", True), scripted_url, "Extract SCRIPTED-CLAIM", logprobs=True)
    assert [(t.text, t.logprob) for t in first.tokens] == [(t.text, t.logprob) for t in again.tokens]
    amount = [t.logprob for t in first.tokens if t.text in (" 1234", ".", "5")]
    assert len(set(amount)) == 3, "the tokens of one field differ"
    assert all(1.5 * math.log(0.62) <= logprob <= 0.5 * math.log(0.62) for logprob in amount if logprob is not None)


# --- the demo's claims ---------------------------------------------------------------------------------------

DEMO_CONFIDENCE = {
    rule["response"]["json"]["policy_number"]: rule["confidence"]
    for rule in json.loads(DEMO_SCRIPT.read_text(encoding="utf-8"))["rules"]
    if "confidence" in rule
}


def test_the_demo_scripts_a_mix_of_sure_and_doubtful_fields() -> None:
    assert set(DEMO_CONFIDENCE) == {"POL-10442", "POL-20917", "POL-31808", "POL-48230"}
    lowest = {}
    for policy, confidence in DEMO_CONFIDENCE.items():
        assert set(confidence) == set(CLAIM_FIELDS_SCHEMA["required"]), policy
        doubtful = [field for field, score in confidence.items() if score < 0.95]
        assert 1 <= len(doubtful) <= 2, policy
        assert all(0.95 <= score <= 0.99 for field, score in confidence.items() if field not in doubtful), policy
        lowest[policy] = min(confidence.values())
    # The reviewer's inbox filters items by their lowest field: high from 0.9, low below 0.7, medium between.
    assert lowest["POL-10442"] >= 0.9
    assert 0.7 <= lowest["POL-20917"] < 0.9 and 0.7 <= lowest["POL-31808"] < 0.9
    assert lowest["POL-48230"] < 0.7


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sample", SAMPLE_CLAIMS, ids=lambda sample: sample["label"])
def test_demo_claims_score_their_scripted_confidence(base_url: str, shape: Shape, sample: dict[str, str]) -> None:
    protocol, _ = shape
    constraint: dict[str, Any] = (
        {"grammar": {"type": "json", "value": CLAIM_FIELDS_SCHEMA}}
        if protocol == "generate"
        else {"response_format": {"type": "json_schema", "json_schema": {"name": "o", "schema": CLAIM_FIELDS_SCHEMA}}}
    )
    prompt = f"Extract the claim fields as JSON.\n\nClaim:\n{sample['claim_text']}"
    result = call(shape, base_url, prompt, max_tokens=300, logprobs=True, top_logprobs=2, **constraint)
    policy = json.loads(result.text)["policy_number"]
    assert scores(result) == DEMO_CONFIDENCE[policy]
    assert_alternatives_consistent(result)


# --- loading -------------------------------------------------------------------------------------------------


def rule(**keys: Any) -> dict[str, Any]:
    return {"name": "claim X", "match": {"contains": "X"}, "response": {"json": CLAIM}, **keys}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"confidence": [0.9]}, "'confidence' must be an object mapping top-level fields"),
        (
            {"confidence": {"amount": 0}},
            "'confidence.amount' must be a probability in (0, 1], not 0",
        ),
        ({"confidence": {"amount": 1.5}}, "'confidence.amount' must be a probability in (0, 1], not 1.5"),
        ({"confidence": {"amount": -0.2}}, "'confidence.amount' must be a probability in (0, 1], not -0.2"),
        ({"confidence": {"amount": True}}, "'confidence.amount' must be a probability in (0, 1], not true"),
        ({"confidence": {"amount": "0.9"}}, "'confidence.amount' must be a probability in (0, 1], not \"0.9\""),
        ({"confidence": {"amount": math.nan}}, "'confidence.amount' must be a probability in (0, 1], not NaN"),
        (
            {"confidence": {"amout": 0.9}},
            "'confidence' names \"amout\", which is not a top-level field of the response "
            '(its fields: "claimant", "amount", "injury_reported", "tags", "summary")',
        ),
        ({"default_confidence": 0}, "'default_confidence' must be a probability in (0, 1], not 0"),
        ({"default_confidence": {"x": 1}}, "'default_confidence' must be a probability in (0, 1], not {\"x\": 1}"),
        (
            {"response": "plain text", "confidence": {"amount": 0.9}},
            "'confidence' needs a response of the form {\"json\": {...}} (an object)",
        ),
        (
            {"response": {"json": [1, 2]}, "confidence": {}},
            "'confidence' needs a response of the form {\"json\": {...}} (an object)",
        ),
    ],
)
def test_bad_confidence_is_refused_at_load_naming_the_rule_and_field(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ScriptError, match=re.escape(f'test.json: rule 1 "claim X": {message}')):
        Script.from_data([rule(**keys)], "test.json")


def test_a_script_file_with_bad_confidence_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.json"
    path.write_text(json.dumps({"rules": [rule(), rule(name="claim Y", confidence={"summary": 2})]}))
    with pytest.raises(ScriptError) as refused:
        Script.load(path)
    assert str(refused.value) == (
        f"{path}: rule 2 \"claim Y\": 'confidence.summary' must be a probability in (0, 1], not 2"
    )


def test_default_confidence_alone_applies_to_any_reply() -> None:
    script = Script.from_data(
        [{"match": {"contains": "X"}, "response": "Hello there, world.", "default_confidence": 1}]
    )
    assert script.rules[0].default_confidence == 1 and script.rules[0].confidence is None


# --- without the keys, nothing changes -----------------------------------------------------------------------

PLAIN_PARAMETERS = {"max_new_tokens": 200, "details": True, "top_n_tokens": 3}
PLAIN_CHAT = {
    "model": "tgi",
    "messages": [{"role": "user", "content": "Extract PLAIN-CLAIM"}],
    "logprobs": True,
    "top_logprobs": 3,
    "max_tokens": 200,
}
# SHA-256 of each response body to a rule without the new keys, as the server answered before they existed
# (chat's `created`, `model` and `system_fingerprint` blanked). A deliberate wire change updates these.
PLAIN_BODIES = {
    "generate": "fbcc70cc155a858af3e342ba55a162bdeb5092bc9592d385b6d77fc9a3a22232",
    "generate_stream": "7de335de80788bc678df79de3b413d0b5fe79596ad5cb8a3088f4b4f5f178d39",
    "chat": "77d7a92b3ba072f3f536f70883d55af0cc895a9edc82d9d04126d342a5bf2c44",
    "chat_stream": "c142b13e5cc11d7195795bffb55626885889449e2a6fc7e752e944e286c2f5f3",
}


def plain_bodies(base_url: str) -> dict[str, bytes]:
    with httpx2.Client(base_url=base_url, timeout=10) as http:
        inputs = "Extract PLAIN-CLAIM"
        bodies = {
            "generate": http.post(
                "/generate", json={"inputs": inputs, "parameters": {**PLAIN_PARAMETERS, "decoder_input_details": True}}
            ).content,
            "generate_stream": http.post(
                "/generate_stream", json={"inputs": inputs, "parameters": PLAIN_PARAMETERS}
            ).content,
            "chat": http.post("/v1/chat/completions", json=PLAIN_CHAT).content,
            "chat_stream": http.post("/v1/chat/completions", json={**PLAIN_CHAT, "stream": True}).content,
        }
    return {
        name: re.sub(rb'"(created|model|system_fingerprint)":("[^"]*"|\d+)', rb'"\1":0', body)
        for name, body in bodies.items()
    }


def test_a_rule_without_confidence_answers_byte_for_byte_as_before(scripted_url: str) -> None:
    bodies = plain_bodies(scripted_url)
    assert {name: hashlib.sha256(body).hexdigest() for name, body in bodies.items()} == PLAIN_BODIES
    # And what those bytes say: the tokenizer's noise, with alternatives 0.5 apart below the chosen token.
    details = json.loads(bodies["generate"])["details"]
    assert details["tokens"][:3] == [
        {"id": 31542, "text": '{"', "logprob": -1.5621, "special": False},
        {"id": 23108, "text": "claimant", "logprob": -0.9541, "special": False},
        {"id": 12997, "text": '":', "logprob": -0.2021, "special": False},
    ]
    assert [t["logprob"] for t in details["top_tokens"][0]] == [-1.5621, -2.0621, -2.5621]
