"""Model calls on behalf of a step: endpoint choice and fallback, in-flight limits, budgets, recording and
replay. Every AI step calls models through `Gateway.acall`; every call leaves an `InferenceCall` record.

`Gateway.acall` is a coroutine on the event loop that runs the step: the process's inference loop (`runtime`)
for the asynchronous step executor, where many steps' calls share one loop and one connection pool. Its
database reads (budgets, replay lookups) go through `db_call`, never on the loop. The records it makes are
not stored here: they collect in the scope's `calls`, and the engine stores them with the step's outcome,
in the transaction that records it, with the run's totals (so a step's calls cost no commit of their own).
A worker that dies between a call and its step's outcome loses that attempt's records with it, and a stale
attempt (its result refused) is not recorded; the attempt that follows records its own. A run's budget is
checked against its stored calls and the current step's own, so parallel steps' calls in flight count once
they are stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Max, Sum
from django.utils import timezone

from apps.core.database import db_call
from apps.core.exceptions import ApplicationError
from apps.core.telemetry import tracing
from apps.inference import client, limits, runtime
from apps.inference import metrics as inference_metrics
from apps.inference.errors import InferenceError, InferenceValidationError
from apps.inference.models import InferenceCall, ModelEndpoint

logger = logging.getLogger(__name__)


class BudgetExhausted(InferenceError):
    """The run has used up its token or cost budget; no further model call is made for it."""

    retryable = False


class NoRecording(InferenceError):
    """Replay asked for a call the original run never made (the workflow or inputs differ)."""

    retryable = False


@dataclass(frozen=True)
class Budget:
    """Per-run limits from the workflow version's `budget` ({"max_tokens": n, "max_cost": "1.50"})."""

    max_tokens: int | None = None
    max_cost: Decimal | None = None

    @classmethod
    def from_graph(cls, value: Any) -> Budget | None:
        if not isinstance(value, dict) or not value:
            return None
        cost = value.get("max_cost")
        return cls(
            max_tokens=int(value["max_tokens"]) if value.get("max_tokens") is not None else None,
            max_cost=Decimal(str(cost)) if cost is not None else None,
        )


@dataclass(frozen=True)
class CallRequest:
    """What a step asks of a model. `system` and `prompt` are already rendered (and masked)."""

    prompt: str
    system: str = ""
    max_new_tokens: int = 256
    temperature: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    logprobs: bool = False
    purpose: str = "generate"
    template_sha256: str = ""
    stream: bool = True
    # A conversation instead of `system` + `prompt` (an agent's turns, tool results included), always sent
    # over the chat protocol, with the OpenAI function `tools` it may call and the `tool_choice`.
    messages: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | None = None

    def parameters(self) -> dict[str, Any]:
        """The generation parameters, as provenance records them."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "stop": list(self.stop),
            "constrained": "json_schema" if self.json_schema else ("regex" if self.regex else None),
            "logprobs": self.logprobs,
        }


@dataclass
class CallScope:
    """Who is calling: the run and step (for records, budgets and replay) and where tokens go."""

    run_id: int | None
    step_run_id: int | None
    step_key: str
    attempt: int = 1
    replay_of: int | None = None
    budget: Budget | None = None
    on_token: Callable[[str], None] = lambda text: None
    calls: list[InferenceCall] = field(default_factory=list)
    # Logical calls asked so far (a fallback to another endpoint is the same call again): replay answers
    # the n-th logical call with the original's n-th successful one.
    asked: int = 0

    @property
    def next_sequence(self) -> int:
        return len(self.calls) + 1


@dataclass(frozen=True)
class CallResult:
    result: client.InferenceResult
    endpoint: ModelEndpoint
    record: InferenceCall


# --- endpoints -------------------------------------------------------------------------------------------


def endpoint_from_settings() -> ModelEndpoint:
    """An unsaved endpoint for the server in AIOS_INFERENCE_URL: what steps use when no endpoint is
    configured yet (a fresh install, the test suite)."""
    endpoint = ModelEndpoint(
        name="default",
        kind=settings.AIOS_INFERENCE_KIND,
        url=settings.AIOS_INFERENCE_URL,
        served_model=settings.AIOS_INFERENCE_MODEL,
        timeout_seconds=settings.AIOS_INFERENCE_TIMEOUT,
        max_in_flight=64,
    )
    endpoint.token = settings.AIOS_INFERENCE_TOKEN
    return endpoint


GENERATION_KINDS = (ModelEndpoint.Kind.TGI, ModelEndpoint.Kind.OPENAI)


def endpoint_resolve(name: str | None) -> ModelEndpoint:
    """The enabled generation endpoint called `name`, or the default one when `name` is empty (an
    embeddings server is never a step's model)."""
    if name:
        endpoint = ModelEndpoint.objects.filter(name=name).first()
        if endpoint is None:
            raise ApplicationError(f'There is no model endpoint called "{name}".')
        if not endpoint.enabled:
            raise ApplicationError(f'Model endpoint "{name}" is disabled.')
        if endpoint.kind not in GENERATION_KINDS:
            raise ApplicationError(f'Model endpoint "{name}" serves embeddings, not text generation.')
        return endpoint
    generators = ModelEndpoint.objects.filter(enabled=True, kind__in=GENERATION_KINDS)
    return generators.filter(is_default=True).first() or generators.order_by("name").first() or endpoint_from_settings()


# TGI does not name its model in a stream; its /info does. Asked once per process and URL for endpoints
# that were never probed (probed ones carry model id and revision); a failed ask is retried after a minute.
_info_cache: dict[str, dict[str, Any]] = {}
_info_failed: dict[str, float] = {}
_INFO_RETRY_SECONDS = 60.0


def _provenance(endpoint: ModelEndpoint, token: str | None) -> tuple[str, str]:
    if endpoint.model_id:
        return endpoint.model_id, endpoint.revision
    failed_at = _info_failed.get(endpoint.url)
    if endpoint.url not in _info_cache and (failed_at is None or time.monotonic() - failed_at > _INFO_RETRY_SECONDS):
        try:
            _info_cache[endpoint.url] = client.server_info(endpoint.url, token=token, timeout=5)
        except InferenceError:
            _info_failed[endpoint.url] = time.monotonic()
    # Servers without /info (vLLM, SGLang) name their model in every reply instead.
    info = _info_cache.get(endpoint.url, {"model_id": endpoint.served_model})
    return str(info.get("model_id") or ""), str(info.get("model_sha") or "")


# --- the gateway -----------------------------------------------------------------------------------------


def _sha256(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


ModelRequest = client.GenerateRequest | client.ChatRequest


def _model_request(endpoint: ModelEndpoint, request: CallRequest) -> ModelRequest:
    """The step's request in the endpoint's protocol: TGI's native one, or OpenAI-compatible chat. A
    conversation (`messages`) always goes over chat, which TGI serves too, with its tools."""
    if endpoint.kind == ModelEndpoint.Kind.TGI and not request.messages:
        grammar = None
        if request.json_schema:
            grammar = {"type": "json", "value": request.json_schema}
        elif request.regex:
            grammar = {"type": "regex", "value": request.regex}
        return client.GenerateRequest(
            prompt=f"{request.system}\n\n{request.prompt}" if request.system else request.prompt,
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            seed=request.seed,
            stop=request.stop,
            grammar=grammar,
            logprobs=request.logprobs,
        )
    messages = list(request.messages) or (
        ([{"role": "system", "content": request.system}] if request.system else [])
        + [{"role": "user", "content": request.prompt}]
    )
    response_format = None
    if request.json_schema:
        response_format = {"type": "json_schema", "json_schema": {"name": "output", "schema": request.json_schema}}
    # Chat has no regular-expression constraint: a regex request goes unconstrained, and says so.
    return client.ChatRequest(
        messages=messages,
        max_tokens=request.max_new_tokens,
        temperature=request.temperature,
        seed=request.seed,
        stop=request.stop,
        response_format=response_format,
        model=endpoint.served_model or None,
        logprobs=request.logprobs,
        tools=request.tools,
        tool_choice=request.tool_choice if request.tools else None,
    )


def _wire_record(call: ModelRequest) -> dict[str, Any]:
    """The request as provenance records it and replay matches it (by its hash). Its keys are those of
    every stored call: a key added or renamed here would keep earlier runs from replaying."""
    head: dict[str, Any]
    if isinstance(call, client.GenerateRequest):
        kind = call.grammar["type"] if call.grammar else None
        head = {
            "protocol": "tgi",
            "prompt": call.prompt,
            "grammar": call.grammar,
            "max_new_tokens": call.max_new_tokens,
        }
        constrained = "json_schema" if kind == "json" else kind
    else:
        head = {
            "protocol": "chat",
            "messages": list(call.messages),
            "response_format": call.response_format,
            "max_new_tokens": call.max_tokens,
        }
        if call.tools:  # only then: the records of calls without tools keep their hash
            head["tools"] = list(call.tools)
            head["tool_choice"] = call.tool_choice
        constrained = "json_schema" if call.response_format else None
    return {
        **head,
        "temperature": call.temperature,
        "seed": call.seed,
        "stop": list(call.stop),
        "constrained": constrained,
        "logprobs": call.logprobs,
    }


class Gateway:
    """Makes a step's model calls. One instance per step execution (it numbers the calls)."""

    def __init__(self, scope: CallScope) -> None:
        self.scope = scope

    # -- budgets --

    def usage_so_far(self) -> tuple[int, Decimal]:
        """Tokens and cost the run's calls have used, every attempt and step included, this step's calls that
        are not stored yet too."""
        pending = [call for call in self.scope.calls if call.pk is None]
        tokens = sum(call.prompt_tokens + call.generated_tokens for call in pending)
        cost = sum((call.cost for call in pending), Decimal(0))
        if self.scope.run_id is None:
            return tokens, cost
        totals = InferenceCall.objects.filter(run_id=self.scope.run_id).aggregate(
            prompt=Sum("prompt_tokens"), generated=Sum("generated_tokens"), cost=Sum("cost")
        )
        return tokens + int(totals["prompt"] or 0) + int(totals["generated"] or 0), cost + Decimal(totals["cost"] or 0)

    def _check_budget(self) -> None:
        budget = self.scope.budget
        if budget is None:
            return
        tokens, cost = self.usage_so_far()
        if budget.max_tokens is not None and tokens >= budget.max_tokens:
            raise BudgetExhausted(
                f"The run's token budget is used up: {tokens} of {budget.max_tokens} tokens; no further model "
                "calls are made for this run."
            )
        if budget.max_cost is not None and cost >= budget.max_cost:
            raise BudgetExhausted(
                f"The run's cost budget is used up: {cost:.4f} of {budget.max_cost:.4f}; no further model "
                "calls are made for this run."
            )

    # -- calls --

    async def acall(self, request: CallRequest, endpoints: Sequence[ModelEndpoint]) -> CallResult:
        """Call the first endpoint; on overload or a server failure that happened before any token was
        streamed, fall back to the next. Raises the last InferenceError when none answered.

        A coroutine: the model call runs on the caller's event loop, and the database work (budget, call
        records, replay lookups) through `db_call`, so it never blocks the loop."""
        if not endpoints:
            raise ApplicationError("No model endpoint to call.")
        self.scope.asked += 1
        if self.scope.replay_of is not None:
            replayed = await db_call(self._replay, request, endpoints[0])
            if replayed.result.text:
                self.scope.on_token(replayed.result.text)
            return replayed
        if self.scope.budget is not None:
            await db_call(self._check_budget)
        last_error: InferenceError | None = None
        for index, endpoint in enumerate(endpoints):
            streamed = False

            def on_token(text: str) -> None:
                nonlocal streamed
                streamed = True
                self.scope.on_token(_without_nul(text))

            try:
                return await self._call_one(request, endpoint, on_token)
            except InferenceError as error:
                last_error = error
                can_fall_back = error.retryable and not streamed and index + 1 < len(endpoints)
                if not can_fall_back:
                    raise
                logger.info("endpoint %s failed (%s); falling back to %s", endpoint.name, error, endpoints[index + 1])
        assert last_error is not None
        raise last_error

    async def _call_one(
        self, request: CallRequest, endpoint: ModelEndpoint, on_token: Callable[[str], None]
    ) -> CallResult:
        # Decrypted here: a token that no longer decrypts is a readable refusal, not an exception mid-call.
        token = endpoint.token or None
        call = _model_request(endpoint, request)
        wire = _wire_record(call)
        # /info is asked at most once per process and URL, over blocking HTTP: off the loop when it is asked.
        known = endpoint.model_id or endpoint.url in _info_cache
        model_id, revision = _provenance(endpoint, token) if known else await db_call(_provenance, endpoint, token)
        label = f"{model_id}@{revision[:12]}" if revision else model_id
        waited: list[float] = [0.0]
        started = timezone.now()
        with tracing.model_call_span(endpoint=endpoint.name, model=model_id, protocol=wire["protocol"]) as span:
            try:
                result = await self._acall(endpoint, token, call, request.stream, label or None, on_token, waited)
            except InferenceError as error:
                error = _with_limits(error, endpoint)
                self._record(
                    request,
                    endpoint,
                    wire,
                    model_id,
                    revision,
                    None,
                    error=error,
                    queue_ms=waited[0] * 1000,
                    started=started,
                )
                await inference_metrics.error_count(endpoint.name, error)
                span.set_attribute("aios.error_kind", inference_metrics.error_kind(error))
                raise error from None
            record = self._record(
                request, endpoint, wire, model_id, revision, result, queue_ms=waited[0] * 1000, started=started
            )
            span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": record.prompt_tokens,
                    "gen_ai.usage.output_tokens": record.generated_tokens,
                    "aios.ttft_ms": record.ttft_ms if record.ttft_ms is not None else -1.0,
                    "aios.latency_ms": record.latency_ms,
                    "aios.queue_ms": record.queue_ms,
                }
            )
        return CallResult(result=result, endpoint=endpoint, record=record)

    async def _acall(
        self,
        endpoint: ModelEndpoint,
        token: str | None,
        call: ModelRequest,
        stream: bool,
        label: str | None,
        push: Callable[[str], None],
        waited: list[float],
    ) -> client.InferenceResult:
        retries = settings.AIOS_INFERENCE_RETRIES
        async with (
            runtime.http_session() as http,
            limits.in_flight_slot(
                endpoint.name, endpoint.max_in_flight, wait_seconds=max(endpoint.timeout_seconds, 30.0)
            ) as queue_seconds,
        ):
            target = client.Endpoint(
                base_url=endpoint.url, token=token, timeout=endpoint.timeout_seconds, http_client=http
            )
            waited[0] = queue_seconds
            if isinstance(call, client.GenerateRequest):
                if stream:
                    result = await client.agenerate_stream(target, call, on_token=push, model_id=label, retries=retries)
                else:
                    result = await client.agenerate(target, call, model_id=label, retries=retries)
            elif stream:
                result = await client.achat_stream(target, call, on_token=push, retries=retries)
            else:
                result = await client.achat(target, call, retries=retries)
            if not stream:
                push(result.text)
            return _clean_result(result)

    def _record(
        self,
        request: CallRequest,
        endpoint: ModelEndpoint,
        wire: dict[str, Any],
        model_id: str,
        revision: str,
        result: client.InferenceResult | None,
        *,
        error: InferenceError | None = None,
        queue_ms: float = 0.0,
        status: str | None = None,
        started: datetime | None = None,
    ) -> InferenceCall:
        """The call's record, kept in the scope for the engine to store with the step's outcome."""
        prompt_tokens = (result.prompt_tokens or 0) if result else 0
        generated = result.generated_tokens if result else 0
        record = InferenceCall(
            run_id=self.scope.run_id,
            step_run_id=self.scope.step_run_id,
            step_key=self.scope.step_key,
            attempt=self.scope.attempt,
            sequence=self.scope.next_sequence,
            purpose=request.purpose,
            endpoint=endpoint if endpoint.pk else None,
            endpoint_name=endpoint.name,
            endpoint_url=client.redact_url(endpoint.url),
            protocol=wire["protocol"],
            model_id=(result.model_id if result and result.model_id else model_id).split("@")[0][:200],
            revision=revision[:100],
            template_sha256=request.template_sha256,
            input_sha256=_sha256(wire),
            output_sha256=_sha256(result.text) if result else "",
            parameters={key: wire[key] for key in request.parameters() if key in wire},
            seed=result.seed if result and result.seed is not None else request.seed,
            request=wire,
            response=result.to_dict() if result else None,
            prompt_tokens=prompt_tokens,
            generated_tokens=generated,
            ttft_ms=result.ttft_ms if result else None,
            latency_ms=result.latency_ms if result else 0.0,
            queue_ms=queue_ms,
            cost=endpoint.cost(prompt_tokens, generated) if status != InferenceCall.Status.REPLAYED else Decimal(0),
            status=status or (InferenceCall.Status.OK if result else InferenceCall.Status.ERROR),
            error=str(error) if error else "",
            started_at=started or timezone.now(),
        )
        self.scope.calls.append(record)
        return record

    def _replay(self, request: CallRequest, endpoint: ModelEndpoint) -> CallResult:
        """Answer from the original run's recording: the n-th successful call of the step's last attempt
        answers the n-th call asked here, provided it was the same request for the same purpose."""
        asked = self.scope.asked
        original = InferenceCall.objects.filter(
            run_id=self.scope.replay_of, step_key=self.scope.step_key, status=InferenceCall.Status.OK
        )
        last_attempt = original.aggregate(attempt=Max("attempt"))["attempt"]
        recorded_calls = list(original.filter(attempt=last_attempt).order_by("sequence")) if last_attempt else []
        recorded = recorded_calls[asked - 1] if len(recorded_calls) >= asked else None
        where = f'call {asked} of step "{self.scope.step_key}" in run #{self.scope.replay_of}'
        if recorded is None or recorded.response is None:
            raise NoRecording(
                f"Replay: there is no recording of {where}; the replay asked for a call the original never made."
            )
        wire = _wire_record(_model_request(endpoint, request))
        if recorded.purpose != request.purpose or _sha256(recorded.request) != _sha256(wire):
            raise NoRecording(
                f"Replay: the recording of {where} answers another request (the prompt, parameters or endpoint "
                "kind differ), so the run cannot be reproduced from its recordings."
            )
        result = client.InferenceResult.from_dict(recorded.response)
        record = self._record(
            request,
            recorded.endpoint or endpoint,
            recorded.request,
            recorded.model_id,
            recorded.revision,
            result,
            status=InferenceCall.Status.REPLAYED,
        )
        return CallResult(result=result, endpoint=recorded.endpoint or endpoint, record=record)


def _without_nul(text: str) -> str:
    # PostgreSQL cannot store NUL in text or jsonb; a model that emits one must not lose the call's record.
    return text.replace("\x00", "") if "\x00" in text else text


def _clean_result(result: client.InferenceResult) -> client.InferenceResult:
    """The result as it is stored and returned: without NUL characters anywhere (text, tokens, tool calls)."""
    data = result.to_dict()
    cleaned = _strip_nul(data)
    return result if cleaned == data else client.InferenceResult.from_dict(cleaned)


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return _without_nul(value)
    if isinstance(value, list):
        return [_strip_nul(item) for item in value]
    if isinstance(value, dict):
        return {_strip_nul(key): _strip_nul(item) for key, item in value.items()}
    return value


def _with_limits(error: InferenceError, endpoint: ModelEndpoint) -> InferenceError:
    """A 422 about length names the endpoint's limits from its /info, so the analyst knows the bound."""
    if not isinstance(error, InferenceValidationError):
        return error
    text = str(error)
    info = _info_cache.get(endpoint.url, {})
    max_input = endpoint.max_input_tokens or info.get("max_input_tokens")
    max_total = endpoint.max_total_tokens or info.get("max_total_tokens")
    if "tokens" not in text.lower() or not (max_input or max_total):
        return error
    limits_text = ", ".join(
        part
        for part in (
            f"max_input_tokens {max_input}" if max_input else "",
            f"max_total_tokens {max_total}" if max_total else "",
        )
        if part
    )
    return InferenceValidationError(
        f'The prompt is too long for model endpoint "{endpoint.name}" ({limits_text}, from its /info): {text}',
        base_url=client.redact_url(endpoint.url),
        status_code=422,
    )
