"""`http.request`: call an outside HTTP API, with an idempotency key the other side can deduplicate on.

With a `connection` the URL may be a path under the connection's base URL, and the connection brings its
default headers, its timeout and its authentication (added last, so a graph cannot override it); the secrets
live in the connection, never in the graph. Without one, the step works as it always has.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from django.conf import settings
from pydantic import Field

from apps.connectors.runtime import (
    ConnectionFailed,
    ConnectionUnavailable,
    ResolvedConnection,
    connection_for_step,
    http_auth_headers,
    join_url,
    oauth2_forget_token,
    redact,
    secret_needles,
)
from apps.core import http
from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType, Uses
from apps.steps.expressions import ExpressionError, template_check, template_render
from apps.steps.registry import register


class HttpRequestConfig(StepConfig):
    connection: str = Field(
        "",
        description="The HTTP connection that brings the base URL, headers and credentials; none: a full URL.",
        json_schema_extra={"x-widget": "connection-http"},
    )
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(
        min_length=1,
        title="URL",
        description="Text template: a path under the connection's base URL (e.g. /invoices), or a full URL "
        "without a connection (e.g. https://erp.example.com/invoices).",
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
    timeout_seconds: float = Field(
        30, gt=0, le=600, description="Longest wait for the answer (with a connection: the connection's timeout)."
    )
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

    @classmethod
    def uses(cls, config: HttpRequestConfig) -> list[Uses]:
        if not config.connection:
            return []
        return [Uses("connection", config.connection, kind="http", field="connection")]

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
        request = {"method": config.method, "url": url, "body": body}
        if config.connection:
            request["connection"] = config.connection
        return {"status": 200, "body": None, "simulated": True, "request": request}

    def execute(self, config: HttpRequestConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        variables = context.expression_variables()
        try:
            url = template_render(config.url, variables).strip()
            headers = {name: template_render(value, variables) for name, value in config.headers.items()}
            body = template_render(config.body, variables) if config.body else ""
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": a template failed: {error}') from None
        timeout = min(config.timeout_seconds, settings.AIOS_STEP_LEASE_SECONDS / 2)
        resolved: ResolvedConnection | None = None
        if config.connection:
            try:
                resolved = connection_for_step(config.connection, kind="http", workflow_id=context.workflow_id)
                url = join_url(str(resolved.config["base_url"]), url)
            except ConnectionUnavailable as error:
                raise StepError(f'Step "{context.step_key}": {error.message}') from None
            # The connection's headers first, so the step may add to them; its authentication comes last.
            headers = {**resolved.config.get("headers", {}), **headers}
            timeout = min(float(resolved.config.get("timeout_seconds", timeout)), settings.AIOS_STEP_LEASE_SECONDS / 2)
        headers["Idempotency-Key"] = context.idempotency_key
        if body and "content-type" not in {name.lower() for name in headers}:
            headers["Content-Type"] = "application/json" if _is_json(body) else "text/plain; charset=utf-8"
        response, sent = self._send(config, context, resolved, url, headers, body, timeout)
        oauth2 = resolved is not None and resolved.config.get("auth") == "oauth2_client_credentials"
        if resolved is not None and oauth2 and response.status == 401:
            # The token may have been revoked or expired early: fetch a new one, once, and try again.
            oauth2_forget_token(resolved)
            response, sent = self._send(config, context, resolved, url, headers, body, timeout, refresh=True)
        needles = secret_needles(resolved, sent) if resolved is not None else []
        if response.status >= 300:
            retryable = response.status >= 500 or response.status == 429
            # Redacted before it is cut short: a cut through a secret would leave a piece no search finds.
            answer = redact(response.text(), needles)[:300]
            raise StepError(
                f'Step "{context.step_key}": {config.method} {url} answered HTTP {response.status}: {answer}',
                retryable=retryable,
            )
        try:
            parsed = response.json() if response.body else None
        except ValueError:
            parsed = response.text()
        return StepOutcome(output={"status": response.status, "body": redact(parsed, needles)})

    def _send(
        self,
        config: HttpRequestConfig,
        context: StepContext,
        resolved: ResolvedConnection | None,
        url: str,
        headers: dict[str, str],
        body: str,
        timeout: float,
        *,
        refresh: bool = False,
    ) -> tuple[http.OutboundResponse, dict[str, str]]:
        """One request; returns the response and the headers sent (to redact what they carried)."""
        sent = dict(headers)
        if resolved is not None:
            try:
                auth = http_auth_headers(resolved, refresh=refresh)
            except ConnectionFailed as error:
                # No request left: certain that nothing happened; a token endpoint may recover later.
                raise StepError(f'Step "{context.step_key}": {error.message}', retryable=True) from None
            # Whatever the graph set, the connection's authentication wins (names compared case-insensitively).
            auth_names = {name.lower() for name in auth}
            sent = {name: value for name, value in sent.items() if name.lower() not in auth_names}
            sent.update(auth)
        try:
            response = http.request(
                config.method, url, headers=sent, body=body.encode() if body else None, timeout=timeout
            )
        except http.OutboundError as error:
            message = f'Step "{context.step_key}": {error}'
            if resolved is not None:
                message = redact(message, secret_needles(resolved, sent))
            raise StepError(message, retryable=error.uncertain, uncertain=error.uncertain) from None
        return response, sent


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
