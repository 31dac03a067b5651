"""The demo's extractions as a reviewer meets them: `llm.extract` on each sample claim, against a development
inference server running the shipped demo script, over TGI and over the OpenAI-compatible protocol, scores
each field at the confidence the script gives it, so most fields read as sure and one or two per claim ask
to be confirmed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from apps.inference.models import ModelEndpoint
from apps.steps.base import StepContext
from apps.steps.library.llm_extract import LlmExtract
from apps.steps.registry import step_config_parse
from apps.workflows.demo import CLAIM_FIELDS_SCHEMA, SAMPLE_CLAIMS
from devserver import DEMO_SCRIPT, DevServerConfig
from devserver.runner import running_in_thread
from devserver.scripts import Script

# The reviewer's queue asks her to confirm fields below this (the demo queue's `confirm_below`).
CONFIRM_BELOW = 0.9
SCRIPTED = {
    rule["response"]["json"]["policy_number"]: rule["confidence"]
    for rule in json.loads(DEMO_SCRIPT.read_text(encoding="utf-8"))["rules"]
    if "confidence" in rule
}
# What each claim asks the reviewer to confirm, in words a product owner would check the demo against.
TO_CONFIRM = {
    "POL-10442": [],  # the parking-lot bumper: everything sure enough
    "POL-20917": ["incident_type"],  # the water leak: property, or "other"?
    "POL-31808": ["summary"],  # the slip and fall: the paraphrase (its combined amount is 0.93, just sure)
    "POL-48230": ["amount"],  # the bicycle: a purchase price, not today's value
}


@pytest.fixture(scope="module")
def demo_server() -> Iterator[str]:
    config = DevServerConfig(port=0, ttft_ms=0, tpot_ms=0, log_level="warning")
    with running_in_thread(config, Script.load(DEMO_SCRIPT)) as url:
        yield url


def extract_claim(claim_text: str) -> dict[str, Any]:
    config = step_config_parse(
        "llm.extract",
        {
            "system": "You extract structured fields from insurance claims. Reply with JSON only.",
            "prompt": "Extract the claim's fields from this insurance claim.\n\nClaim:\n{{ input.claim_text }}",
            "source": "{{ input.claim_text }}",
            "json_schema": CLAIM_FIELDS_SCHEMA,
        },
    )
    context = StepContext(
        run_id=1, step_key="extract", input={"claim_text": claim_text}, steps={}, idempotency_key="run-1-extract"
    )
    output: dict[str, Any] = LlmExtract().execute(config, context).output
    return output


@pytest.mark.parametrize("kind", ["tgi", "openai-compatible"])
@pytest.mark.django_db
def test_each_demo_claim_scores_its_fields_as_scripted(kind, demo_server, settings):
    settings.AIOS_INFERENCE_RETRIES = 0
    ModelEndpoint.objects.create(name="main", kind=kind, url=demo_server, is_default=True, timeout_seconds=10)
    confirm = {}
    for sample in SAMPLE_CLAIMS:
        output = extract_claim(sample["claim_text"])
        policy = output["data"]["policy_number"]
        assert output["confidence_source"] == "logprob"
        assert {field: round(score, 2) for field, score in output["confidence"].items()} == SCRIPTED[policy]
        confirm[policy] = sorted(field for field, score in output["confidence"].items() if score < CONFIRM_BELOW)
    assert confirm == TO_CONFIRM
