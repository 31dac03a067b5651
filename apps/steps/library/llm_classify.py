"""`llm.classify`: one label out of a fixed set, with a confidence that can send the item to a person."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Literal

from pydantic import Field, field_validator

from apps.core.database import db_call
from apps.inference.client import InferenceResult
from apps.inference.models import ModelEndpoint
from apps.steps.base import StepContext, StepOutcome, StepType
from apps.steps.llm import LlmSession, LlmStepConfig, llm_config_problems
from apps.steps.registry import register

LOW_CONFIDENCE = "low_confidence"
CONFIDENT = "confident"


class LlmClassifyConfig(LlmStepConfig):
    labels: list[str] = Field(min_length=2, max_length=50, description="The labels to choose from.")
    threshold: float = Field(
        0.7, ge=0, le=1, description="Below this confidence the item takes the low_confidence branch."
    )
    method: Literal["auto", "logprobs", "self_consistency"] = Field(
        "auto", description="logprobs where the endpoint gives them (TGI), else agreement between samples."
    )
    samples: int = Field(5, ge=2, le=20, description="Samples for self-consistency.")
    max_new_tokens: int = Field(
        16, ge=1, le=256, description="The longest reply, in tokens.", json_schema_extra={"x-advanced": True}
    )

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, labels: list[str]) -> list[str]:
        cleaned = [label.strip() for label in labels]
        if any(not label for label in cleaned):
            raise ValueError("labels must not be empty")
        if len({label.lower() for label in cleaned}) != len(cleaned):
            raise ValueError("labels must be distinct (ignoring case)")
        return cleaned


def match_label(text: str, labels: list[str]) -> str | None:
    """The label the reply names: an exact match first, else the label mentioned earliest."""
    reply = text.strip().strip(".\"'` ").lower()
    for label in labels:
        if reply == label.lower():
            return label
    found = [(m.start(), label) for label in labels if (m := re.search(rf"\b{re.escape(label.lower())}\b", reply))]
    return min(found)[1] if found else None


def _reply_logprobs(result: InferenceResult) -> list[float]:
    """Log-probabilities of the tokens that spell the reply: not the end-of-sequence token after it."""
    logprobs, consumed = [], 0
    for token in result.tokens:
        if token.special or consumed >= len(result.text):
            continue
        consumed += len(token.text)
        if token.logprob is not None:
            logprobs.append(token.logprob)
    return logprobs


@register
class LlmClassify(StepType):
    """Classifies the input into one of `labels`.

    Confidence comes from the token log-probabilities of the chosen label (TGI, decoding constrained to
    the labels) or, where the server gives none, from the agreement of `samples` sampled answers. Output:
    `{"label", "confidence", "scores", "branch"}`, where branch is "confident" or "low_confidence"
    (below `threshold`): route the latter to a human.approval step with an edge `when: low_confidence`.
    """

    slug = "llm.classify"
    category = "AI"

    @classmethod
    def branch_labels(cls, config: Any) -> tuple[str, ...]:
        return (CONFIDENT, LOW_CONFIDENCE)

    name = "Classify"
    description = "Pick a label; low confidence takes its own branch (e.g. to a person)."
    Config = LlmClassifyConfig
    queue = "inference"
    streams_tokens = True
    branches = (CONFIDENT, LOW_CONFIDENCE)

    @classmethod
    def supplied_output_problems(cls, config: dict[str, Any], output: dict[str, Any]) -> list[str]:
        labels = config.get("labels") or []
        label = output.get("label")
        if label in labels:
            return []
        return [f"label: {label!r} is not one of the step's labels ({', '.join(map(str, labels))})"]

    @staticmethod
    def check_config(config: LlmClassifyConfig) -> list[str]:
        return llm_config_problems(config)

    async def aexecute(self, config: LlmClassifyConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        session = LlmSession(config, context, template_extra=("\x1f".join(config.labels), config.method))
        labels_text = ", ".join(config.labels)
        prompt = await session.arender(config.prompt) + f"\n\nAnswer with exactly one of: {labels_text}."
        system = await session.arender(config.system)
        label, confidence, scores, method = await self._classify(session, config, prompt, system, large=False)
        routing = config.routing
        escalated = False
        if routing is not None and routing.escalate_below is not None and confidence < routing.escalate_below:
            label, confidence, scores, method = await self._classify(session, config, prompt, system, large=True)
            escalated = True
        output = {
            "label": label,
            "confidence": round(confidence, 4),
            "scores": {name: round(value, 4) for name, value in scores.items()},
            "branch": CONFIDENT if label is not None and confidence >= config.threshold else LOW_CONFIDENCE,
        }
        return session.outcome(output, session.usage(method=method, escalated=escalated))

    async def _classify(
        self, session: LlmSession, config: LlmClassifyConfig, prompt: str, system: str, *, large: bool
    ) -> tuple[str | None, float, dict[str, float], str]:
        endpoint = (await db_call(session.endpoints, prompt_chars=len(prompt) + len(system), large=large))[0]
        method = config.method
        if method == "auto":
            method = "logprobs" if endpoint.kind == ModelEndpoint.Kind.TGI else "self_consistency"
        if method == "logprobs":
            regex = "(" + "|".join(re.escape(label) for label in config.labels) + ")"
            call = await session.acall(session.request(prompt, system, regex=regex, logprobs=True), large=large)
            label = match_label(call.result.text, config.labels)
            logprobs = _reply_logprobs(call.result)
            # Without a grammar (chat has no regex constraint) the reply may say more than the label, and
            # the probability of that free text is no confidence in the label: sample instead.
            exact = label is not None and call.result.text.strip() == label
            if label is not None and logprobs and (exact or endpoint.kind == ModelEndpoint.Kind.TGI):
                confidence = math.exp(sum(logprobs))
                return label, confidence, {label: confidence}, method
            if label is None:
                return None, 0.0, {}, method
            method = "self_consistency"  # no log-probabilities after all: fall back to sampling
        votes: Counter[str] = Counter()
        base_seed = config.seed if config.seed is not None else 0
        for index in range(config.samples):
            request = session.request(
                prompt,
                system,
                temperature=config.temperature or 0.7,
                seed=base_seed + index,
                purpose="sample",
            )
            call = await session.acall(request, large=large)
            found = match_label(call.result.text, config.labels)
            if found is not None:
                votes[found] += 1
        if not votes:
            return None, 0.0, {}, method
        label, count = votes.most_common(1)[0]
        scores = {name: votes[name] / config.samples for name in config.labels if votes[name]}
        return label, count / config.samples, scores, method
