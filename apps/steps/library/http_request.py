"""`http.request`: call an outside HTTP API, with an idempotency key the other side can deduplicate on."""

from __future__ import annotations

import json
from typing import Any, Literal

from django.conf import settings
from pydantic import Field

from apps.core import http
from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType
from apps.steps.expressions import ExpressionError, template_check, template_render
from apps.steps.registry import register


class HttpRequestConfig(StepConfig):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(
        min_length=1,
        title="URL",
        description="Text template, e.g. https://erp.example.com/invoices",
        json_schema_extra={"x-widget": "template", "x-rows": 1},
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Header name → text template.", json_schema_extra={"x-widget": "template"}
    )
    body: str = Field(
        "",
        description="Text template for the request body (JSON is sent as application/json).",
        json_schema_extra={"x-widget": "template"},
    )
    timeout_seconds: float = Field(30, gt=0, le=600)
    delivery: Literal["at_least_once", "at_most_once"] = Field(
        "at_least_once",
        description="at_most_once: if a previous attempt's outcome is unknown, ask a person instead of retrying.",
    )


@register
class HttpRequest(StepType):
    """Sends one request through the SSRF-guarded client with `Idempotency-Key` set to the step's key,
    which stays the same across attempts. Output `{"status", "body"}` (body parsed when it is JSON).
    5xx and 429 answers and lost connections are retryable errors; other non-2xx answers are not."""

    slug = "http.request"
    replay_reuses_output = True
    name = "HTTP request"
    description = "Call an outside system's HTTP API."
    Config = HttpRequestConfig
    category = "Connectors"
    queue = "connectors"
    side_effects = True

    @staticmethod
    def check_config(config: HttpRequestConfig) -> list[str]:
        problems = []
        for label, template in [("url", config.url), ("body", config.body), *config.headers.items()]:
            problem = template_check(template)
            if problem:
                problems.append(f"{label}: the template does not parse: {problem}")
        return problems

    def simulate(self, config: HttpRequestConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        # The request is rendered (so a template error still shows in a test) but never sent.
        variables = context.expression_variables()
        try:
            url = template_render(config.url, variables).strip()
            body = template_render(config.body, variables) if config.body else ""
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": a template failed: {error}') from None
        return {
            "status": 200,
            "body": None,
            "simulated": True,
            "request": {"method": config.method, "url": url, "body": body},
        }

    def execute(self, config: HttpRequestConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        variables = context.expression_variables()
        try:
            url = template_render(config.url, variables).strip()
            headers = {name: template_render(value, variables) for name, value in config.headers.items()}
            body = template_render(config.body, variables) if config.body else ""
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": a template failed: {error}') from None
        headers["Idempotency-Key"] = context.idempotency_key
        if body and "content-type" not in {name.lower() for name in headers}:
            headers["Content-Type"] = "application/json" if _is_json(body) else "text/plain; charset=utf-8"
        try:
            response = http.request(
                config.method,
                url,
                headers=headers,
                body=body.encode() if body else None,
                timeout=min(config.timeout_seconds, settings.AIOS_STEP_LEASE_SECONDS / 2),
            )
        except http.OutboundError as error:
            raise StepError(
                f'Step "{context.step_key}": {error}', retryable=error.uncertain, uncertain=error.uncertain
            ) from None
        if response.status >= 300:
            retryable = response.status >= 500 or response.status == 429
            raise StepError(
                f'Step "{context.step_key}": {config.method} {url} answered HTTP {response.status}: '
                f"{response.text()[:300]}",
                retryable=retryable,
            )
        try:
            parsed = response.json() if response.body else None
        except ValueError:
            parsed = response.text()
        return StepOutcome(output={"status": response.status, "body": parsed})


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
