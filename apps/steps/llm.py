"""What every LLM step shares: prompt rendering, guardrails, model routing, and provenance.

An `LlmSession` lives for one execution of one step. It renders the prompt templates, masks PII before
anything leaves for a model server (and restores it in the output where the step asks), flags likely
prompt injection in data that came from documents or connectors, chooses endpoints (a fixed model, or a
small-first policy with fallbacks), calls them through the inference gateway, and sums the calls into
the step's provenance (`usage`).
"""

from __future__ import annotations

import asyncio
import hashlib
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from apps.core.database import db_call
from apps.core.exceptions import ApplicationError
from apps.inference.errors import InferenceError
from apps.inference.gateway import Budget, CallRequest, CallResult, CallScope, Gateway, endpoint_resolve
from apps.inference.models import ModelEndpoint
from apps.steps.base import QUEUE_CHECKS, StepConfig, StepContext, StepError, StepOutcome, Wait
from apps.steps.expressions import ExpressionError, template_check, template_render
from apps.steps.guardrails import (
    PII_KINDS,
    PiiVault,
    RestoringStream,
    injection_flags_in,
    sanitise_output,
    sanitise_value,
)


class Guardrails(BaseModel):
    """Guardrail options, on every LLM step."""

    model_config = ConfigDict(extra="forbid")

    mask_pii: bool = Field(False, description="Replace personal data with placeholders before the model sees it.")
    pii_kinds: list[str] = Field(default_factory=lambda: list(PII_KINDS), description="Which kinds to mask.")
    restore_pii: bool = Field(True, description="Put the masked values back into the step's output.")
    sanitise_output: bool = Field(True, description="Strip control and invisible characters from the reply.")
    flag_injection: bool = Field(True, description="Flag text from inputs and earlier steps that looks like an attack.")
    on_injection: Literal["continue", "review", "stop"] = Field(
        "continue",
        description=(
            "When text is flagged: continue (the flags are in flags.<step key> for conditions, e.g. a review "
            "step's straight_through_when), review (hold the step's result for a person in the review queue, who "
            "may correct it; later steps wait, and a rejection fails the step), or stop the step before anything "
            "is sent to a model."
        ),
    )
    review_queue: str = Field(
        "",
        max_length=150,
        title="Review queue",
        description="For review: the approval queue whose reviewers check a flagged result.",
        json_schema_extra={"x-widget": "approval-queue"},
    )


class Routing(BaseModel):
    """Small model first; the large one for long input or (classify, extract) low confidence."""

    model_config = ConfigDict(extra="forbid")

    small: str = Field(min_length=1, description="Endpoint tried first.")
    large: str = Field(min_length=1, description="Endpoint for long input or low confidence.")
    long_input_chars: int | None = Field(None, ge=1, description="Prompts longer than this go to the large model.")
    escalate_below: float | None = Field(
        None, gt=0, le=1, description="Confidence under which the large model retries."
    )


# What a test, replay or what-if run records instead of asking a person to review a flagged result (a replay then
# takes the original run's decision: apps.runs.executor._replayed_review).
NOT_ASKED = "not asked (test or replay run)"

# The longest prompt or system template (before rendering): far above any prompt a process needs, and a bound
# on what a what-if run's author can hand the template engine (and the audit chain) in one request.
MAX_PROMPT_TEMPLATE_LENGTH = 20_000


class LlmStepConfig(StepConfig):
    """Fields shared by llm.generate, llm.extract and llm.classify."""

    prompt: str = Field(
        min_length=1,
        max_length=MAX_PROMPT_TEMPLATE_LENGTH,
        description="Text template; may use {{ input.x }} and {{ steps.key.field }}.",
        json_schema_extra={"x-widget": "template", "x-rows": 8},
    )
    system: str = Field(
        "",
        max_length=MAX_PROMPT_TEMPLATE_LENGTH,
        description="Optional system instruction.",
        json_schema_extra={"x-widget": "template"},
    )
    model: str = Field(
        "",
        description="The model endpoint that answers; empty for the default endpoint.",
        json_schema_extra={"x-widget": "model-endpoint"},
    )
    routing: Routing | None = Field(
        None, description="Small model first, the large one when needed.", json_schema_extra={"x-advanced": True}
    )
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Endpoints tried on overload or server error.",
        json_schema_extra={"x-advanced": True},
    )
    max_new_tokens: int = Field(
        256, ge=1, le=8192, description="The longest reply, in tokens.", json_schema_extra={"x-advanced": True}
    )
    temperature: float | None = Field(
        None, gt=0, le=5, description="Empty: the server's default.", json_schema_extra={"x-advanced": True}
    )
    seed: int | None = Field(None, ge=0, description="For repeatable sampling.", json_schema_extra={"x-advanced": True})
    stop: list[str] = Field(
        default_factory=list,
        max_length=4,
        description="Texts that end the reply.",
        json_schema_extra={"x-advanced": True},
    )
    guardrails: Guardrails = Field(default_factory=Guardrails, json_schema_extra={"x-advanced": True})


def llm_config_problems(config: LlmStepConfig) -> list[str]:
    """Publish-time checks common to every LLM step: templates parse, endpoints exist, kinds are known."""
    problems = []
    for name in ("prompt", "system"):
        problem = template_check(getattr(config, name))
        if problem:
            problems.append(f"{name}: the template does not parse: {problem}")
    if config.model and config.routing:
        problems.append("model and routing: choose a fixed model or a routing policy, not both")
    names = [config.model, *config.fallbacks]
    if config.routing:
        names += [config.routing.small, config.routing.large]
    wanted = [name for name in names if name]
    found = dict(ModelEndpoint.objects.filter(name__in=wanted).values_list("name", "kind")) if wanted else {}
    known = {name for name, kind in found.items() if kind != ModelEndpoint.Kind.TEI}
    for name in dict.fromkeys(names):
        if name and name not in found:
            problems.append(f'model endpoint "{name}" does not exist')
        elif name and name not in known:
            problems.append(f'model endpoint "{name}" serves embeddings, not text generation')
    unknown_kinds = sorted(set(config.guardrails.pii_kinds) - set(PII_KINDS))
    if unknown_kinds:
        problems.append(f"guardrails.pii_kinds: unknown {', '.join(unknown_kinds)} (known: {', '.join(PII_KINDS)})")
    guardrails = config.guardrails
    if guardrails.on_injection == "review":
        if not guardrails.review_queue:
            problems.append("guardrails.review_queue: choose the queue whose reviewers check a flagged result")
        else:
            problems += [
                f"guardrails.review_queue: {p}" for check in QUEUE_CHECKS if (p := check(guardrails.review_queue))
            ]
        if not guardrails.flag_injection:
            problems.append("guardrails.on_injection: review needs flag_injection on (nothing would be flagged)")
    return problems


def template_sha256(config: LlmStepConfig, *extra: str) -> str:
    """The prompt version: a hash of the templates (not of the rendered text), so equal templates are one
    version however the data varies."""
    return hashlib.sha256("\x00".join([config.system, config.prompt, *extra]).encode()).hexdigest()


class LlmSession:
    """One LLM step execution (see the module docstring)."""

    def __init__(self, config: LlmStepConfig, context: StepContext, *, template_extra: tuple[str, ...] = ()) -> None:
        self.config = config
        self.context = context
        self.vault = PiiVault(kinds=tuple(config.guardrails.pii_kinds)) if config.guardrails.mask_pii else None
        self.template_sha256 = template_sha256(config, *template_extra)
        # Viewers see the live text the way the output will read: placeholders restored where it restores them.
        self.stream = (
            RestoringStream(self.vault, context.emit_tokens) if self.vault and config.guardrails.restore_pii else None
        )
        self.gateway = Gateway(
            CallScope(
                run_id=context.run_id,
                step_run_id=context.step_run_id,
                step_key=context.step_key,
                attempt=context.attempt,
                replay_of=context.replay_of,
                budget=Budget.from_graph(context.budget),
                on_token=self.stream.add if self.stream else context.emit_tokens,
                calls=context.model_calls,
            )
        )
        self._endpoints: dict[str, ModelEndpoint] = {}
        # The prompts as rendered, before masking: what a reviewer of a held result compares it with.
        self.rendered: list[str] = []
        self.flags: list[str] = []
        if config.guardrails.flag_injection:
            # Text that came from outside (run input, connector and document outputs) is what an attacker
            # controls; the prompt template is the analyst's own.
            self.flags = injection_flags_in({"input": context.input, "steps": context.steps, "params": context.params})
            if self.flags and config.guardrails.on_injection == "stop":
                # Before any model call: the point is that the flagged text never reaches a model.
                raise StepError(
                    f'Step "{context.step_key}": the input looks like a prompt injection '
                    f"({', '.join(self.flags)}); stopped before calling a model (guardrails: on_injection stop)."
                )

    # -- prompt --

    def render(self, template: str) -> str:
        try:
            text = template_render(template, self.context.expression_variables()) if template else ""
        except ExpressionError as error:
            raise StepError(f'Step "{self.context.step_key}": the prompt template failed: {error}') from None
        if text:
            self.rendered.append(text)
        return self.mask(text)

    async def arender(self, template: str) -> str:
        """`render` for steps on the asynchronous executor: off the event loop, which every step in flight in
        the process shares (a template takes its budget of up to seconds in the sandbox)."""
        return await asyncio.to_thread(self.render, template)

    def mask(self, text: str) -> str:
        return self.vault.mask(text) if self.vault else text

    # -- endpoints --

    def endpoints(self, *, prompt_chars: int = 0, large: bool = False) -> list[ModelEndpoint]:
        """Endpoints in the order to try: the chosen one, then the fallbacks."""
        config = self.config
        if config.routing:
            use_large = large or (
                config.routing.long_input_chars is not None and prompt_chars > config.routing.long_input_chars
            )
            names = [config.routing.large if use_large else config.routing.small, *config.fallbacks]
            if not use_large:
                names.append(config.routing.large)  # the large model is the small one's last fallback
        else:
            names = [config.model, *config.fallbacks]
        try:
            return [self._resolve(name) for name in dict.fromkeys(names)]
        except ApplicationError as error:
            raise StepError(f'Step "{self.context.step_key}": {error.message}') from None

    def _resolve(self, name: str) -> ModelEndpoint:
        # One lookup per endpoint per execution: classify's samples and extract's repairs call again.
        if name not in self._endpoints:
            self._endpoints[name] = endpoint_resolve(name)
        return self._endpoints[name]

    # -- calls --

    def request(self, prompt: str, system: str, **options: Any) -> CallRequest:
        config = self.config
        values: dict[str, Any] = {
            "prompt": prompt,
            "system": system,
            "max_new_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "seed": config.seed,
            "stop": tuple(config.stop),
            "template_sha256": self.template_sha256,
        }
        values.update(options)
        return CallRequest(**values)

    async def acall(self, request: CallRequest, *, large: bool = False) -> CallResult:
        """One model call; inference failures become step errors (retryable where the server's were)."""
        endpoints = await db_call(self.endpoints, prompt_chars=len(request.prompt) + len(request.system), large=large)
        try:
            return await self.gateway.acall(request, endpoints)
        except InferenceError as error:
            raise StepError(f'Step "{self.context.step_key}": {error}', retryable=error.retryable) from None
        except ApplicationError as error:  # e.g. an endpoint token that no longer decrypts
            raise StepError(f'Step "{self.context.step_key}": {error.message}') from None
        finally:
            if self.stream:
                self.stream.close()

    @property
    def can_escalate(self) -> bool:
        routing = self.config.routing
        return routing is not None and routing.escalate_below is not None

    # -- output --

    def outcome(self, output: dict[str, Any], usage: dict[str, Any]) -> StepOutcome:
        """The step's outcome. With `on_injection: review` and something flagged, the result is held for a person
        in the review queue (later steps wait; see `Wait.held_output`); a test, replay or what-if run asks no one
        and says so in the usage."""
        guardrails = self.config.guardrails
        if not (self.flags and guardrails.on_injection == "review"):
            return StepOutcome(output=output, usage=usage)
        if not self.context.asks_people:
            return StepOutcome(output=output, usage={**usage, "injection_review": NOT_ASKED})
        return StepOutcome(
            output={},
            usage=usage,
            wait=Wait(
                "approval",
                details={"injection_flags": self.flags},
                payload={"params": self.context.params, "source_text": "\n\n".join(self.rendered)},
                held_output=output,
            ),
        )

    def finish_text(self, text: str) -> str:
        """The reply as the step outputs it: sanitised, and with masked values restored if asked."""
        if self.config.guardrails.sanitise_output:
            text = sanitise_output(text)
        if self.vault and self.config.guardrails.restore_pii:
            text = self.vault.restore(text)
        return text

    def finish_value(self, value: Any) -> Any:
        """Structured output as the step outputs it: strings sanitised, masked values restored if asked."""
        if self.config.guardrails.sanitise_output:
            value = sanitise_value(value)
        if self.vault and self.config.guardrails.restore_pii:
            value = self.vault.restore_value(value)
        return value

    def usage(self, **extra: Any) -> dict[str, Any]:
        """Provenance for the step: the last call's model and parameters, totals over every call."""
        calls = self.gateway.scope.calls
        last = calls[-1] if calls else None
        cost = sum((call.cost for call in calls), Decimal(0))
        usage: dict[str, Any] = {
            "calls": len(calls),
            "prompt_tokens": sum(call.prompt_tokens for call in calls),
            "generated_tokens": sum(call.generated_tokens for call in calls),
            "cost": str(cost),
            "latency_ms": round(sum(call.latency_ms for call in calls), 1),
            "template_sha256": self.template_sha256,
            "prompt_version": self.template_sha256[:12],
            "injection_flags": self.flags,
        }
        if last is not None:
            usage.update(
                {
                    "endpoint": last.endpoint_name,
                    "model_id": last.model_id,
                    "revision": last.revision,
                    "parameters": last.parameters,
                    "seed": last.seed,
                    "ttft_ms": last.ttft_ms,
                    "input_sha256": last.input_sha256,
                    "output_sha256": last.output_sha256,
                    "replayed": last.status == "replayed",
                }
            )
        if self.vault:
            usage["pii_masked"] = self.vault.summary()
        usage.update(extra)
        return usage
