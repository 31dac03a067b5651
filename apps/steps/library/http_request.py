"""`http.request`: call an outside HTTP API, with an idempotency key the other side can deduplicate on.

With a `connection` the URL may be a path under the connection's base URL, and the connection brings its
default headers, its timeout and its authentication (added last, so a graph cannot override it); the secrets
live in the connection, never in the graph. Without one, the step works as it always has.

With an `operation` of the connection's OpenAPI document, the operation gives the method and path: the step's
`parameters` (path, query and header, by name) and `body_fields` (the JSON body's top-level properties) are
text templates, typed by the document's schemas and checked against them before anything is sent (or `body`
holds the whole body, for nested bodies). Publishing refuses an operation the document no longer has and
empty required parameters.

Run data cannot change a request's structure (review L8): the scheme and host of a URL without a connection are
written out; every `{{ … }}` in the URL's path is percent-encoded as one segment's text, in its query and
fragment as a parameter's text (apps/steps/safe_templates.py), so `../admin?x=1#` stays one value. With a
connection, a URL that is one `{{ expression }}` alone (a next-page link an API returned) is taken as it is:
the connection keeps it on its base URL's origin and refuses a climbing ".." (join_url). `query` gives query
parameters as a mapping, URL-encoded. A JSON body is given field by field (`json_body`: a value that is one
`{{ expression }}` keeps its type, others are text), or as a `body` written as JSON text, whose substitutions
are then escaped for where they stand (inside a string: as text; elsewhere: as a JSON value), so a value
cannot add a field; a JSON body with `{% … %}` tags, or not JSON around its values, is refused at publishing.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal
from urllib.parse import urlencode

from django.conf import settings
from pydantic import Field

from apps.connectors.openapi import RequestInvalid, build_request, operation_config_problems, operation_get
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
from apps.steps.safe_templates import (
    TemplateUnsafe,
    json_fields_template,
    json_shaped,
    json_template_safe,
    single_expression,
    url_template_safe,
)

# The scheme and authority (user, host, port) at the start of an absolute URL template.
_URL_ORIGIN = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*")
TEMPLATED_ORIGIN_PROBLEM = (
    "url: the scheme and host cannot come from a template (run data could send the request, and its headers, "
    "anywhere); write them out, or use a connection"
)


def url_origin_templated(template: str) -> bool:
    """Whether a URL template lets data choose where the request goes: a template in its scheme, host or port,
    or a template that starts the URL (review L8). Paths and queries may be templated."""
    text = template.strip()
    if text.startswith(("{{", "{%", "{#")):
        return True
    origin = _URL_ORIGIN.match(text)
    return bool(origin and "{" in origin.group(0))


class HttpRequestConfig(StepConfig):
    connection: str = Field(
        "",
        description="The HTTP connection that brings the base URL, headers and credentials; none: a full URL.",
        json_schema_extra={"x-widget": "connection-http"},
    )
    # --- OpenAPI operations (apps/connectors/openapi.py) ---
    operation: str = Field(
        "",
        description="An operation of the connection's OpenAPI document; it gives the method and the path.",
        json_schema_extra={"x-widget": "openapi-operation", "x-operation-of": "connection"},
    )
    parameters: dict[str, str] = Field(
        default_factory=dict,
        description="The operation's path, query and header parameters: name → text template.",
        json_schema_extra={"x-widget": "openapi-parameters", "x-operation-in": "operation"},
    )
    body_fields: dict[str, str] = Field(
        default_factory=dict,
        description="The operation's JSON body, field by field: name → text template, typed by the document.",
        json_schema_extra={"x-widget": "openapi-body", "x-operation-in": "operation"},
    )
    # --- end of OpenAPI operations ---
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(
        "POST", json_schema_extra={"x-unless": "operation"}
    )
    url: str = Field(
        "",
        title="URL",
        description="Text template: a path under the connection's base URL (e.g. /invoices/{{ input.id }}), or a "
        "full URL without a connection (e.g. https://erp.example.com/invoices). Values in the path, query and "
        "fragment are percent-encoded; with a connection, a URL that is one {{ expression }} alone is taken as "
        "it is (kept under the connection's address).",
        json_schema_extra={"x-widget": "template", "x-rows": 1, "x-unless": "operation"},
    )
    query: dict[str, str] = Field(
        default_factory=dict,
        description="Query parameters: name → text template, URL-encoded and added to the URL.",
        json_schema_extra={"x-widget": "template", "x-unless": "operation"},
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Header name → text template.", json_schema_extra={"x-widget": "template"}
    )
    json_body: dict[str, str] = Field(
        default_factory=dict,
        title="JSON body",
        description="The JSON body, field by field: name → text template. A value that is one {{ expression }} "
        "keeps its type (number, list, object); any other value is text. Sent as application/json.",
        json_schema_extra={"x-widget": "template", "x-unless": "operation"},
    )
    body: str = Field(
        "",
        description="Text template for a raw request body. Written as JSON, each {{ value }} is escaped for where "
        "it stands (inside quotes as text, elsewhere as a JSON value) and {% %} tags are refused; prefer the "
        "JSON body fields.",
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
        templates = [
            ("url", config.url),
            ("body", config.body),
            *((f"query.{key}", value) for key, value in config.query.items()),
            *((f"json_body.{key}", value) for key, value in config.json_body.items()),
            *config.headers.items(),
            *((f"parameters.{key}", value) for key, value in config.parameters.items()),
            *((f"body_fields.{key}", value) for key, value in config.body_fields.items()),
        ]
        for name in config.headers:
            if name.lower() in http.FRAMING_HEADERS:
                problems.append(f'headers: "{name}" is set by the platform from the URL and the body; remove it')
        parsing = []
        for label, template in templates:
            problem = template_check(template)
            if problem:
                parsing.append(f"{label}: the template does not parse: {problem}")
        problems += parsing
        if not parsing:
            problems += _structure_problems(config)
        if config.json_body and config.body.strip():
            problems.append("body: give the JSON body's fields or a raw body, not both")
        if not config.operation:
            if not config.url.strip():
                problems.append("url: give the URL, or choose an operation of the connection's OpenAPI document")
            if not config.connection and url_origin_templated(config.url):
                problems.append(TEMPLATED_ORIGIN_PROBLEM)
            if config.parameters or config.body_fields:
                problems.append("operation: parameters and body fields need an operation; choose one")
            return problems
        if config.query or config.json_body:
            problems.append(
                "operation: with an operation, its parameters and body fields give the query and the JSON body; "
                "empty the query and JSON body fields"
            )
        if not config.connection:
            problems.append("operation: an operation belongs to a connection; choose the connection first")
            return problems
        if config.body.strip() and any(value.strip() for value in config.body_fields.values()):
            problems.append("body: give the body's fields or a raw body, not both")
        # The document lives on the connection: an operation it no longer has, or an empty required value,
        # stops publishing (the builder shows the same under the fields).
        problems += operation_config_problems(
            config.connection,
            config.operation,
            parameters=config.parameters,
            body_fields=config.body_fields,
            body=config.body,
        )
        return problems

    def simulate(self, config: HttpRequestConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        # The request is rendered (so a template error still shows in a test) but never sent.
        variables = context.expression_variables()
        try:
            url = _url_render(config, variables) if not config.operation else ""
            body = _body_render(config, variables)
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": a template failed: {error}') from None
        except TemplateUnsafe as error:
            raise StepError(f'Step "{context.step_key}": {error.message}; nothing was sent.') from None
        request: dict[str, Any] = {"method": config.method, "url": url, "body": body}
        if config.connection:
            request["connection"] = config.connection
        if config.operation:
            # The operation's method and path live in the connection's document, which a simulation does not
            # read: it shows what the step would fill in.
            try:
                request = {
                    "connection": config.connection,
                    "operation": config.operation,
                    "parameters": {k: template_render(v, variables) for k, v in config.parameters.items()},
                    "body_fields": {k: template_render(v, variables) for k, v in config.body_fields.items()},
                    "body": body,
                }
            except ExpressionError as error:
                raise StepError(f'Step "{context.step_key}": a template failed: {error}') from None
        return {"status": 200, "body": None, "simulated": True, "request": request}

    def execute(self, config: HttpRequestConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        if not config.connection and not config.operation and url_origin_templated(config.url):
            # Publishing refuses it (check_config); a graph published before that is refused here.
            raise StepError(f'Step "{context.step_key}": {TEMPLATED_ORIGIN_PROBLEM}; nothing was sent.')
        variables = context.expression_variables()
        method: str = config.method
        try:
            url = _url_render(config, variables) if not config.operation else ""
            headers = {name: template_render(value, variables) for name, value in config.headers.items()}
            body = _body_render(config, variables)
            parameters = {key: template_render(value, variables) for key, value in config.parameters.items()}
            body_fields = {key: template_render(value, variables) for key, value in config.body_fields.items()}
        except ExpressionError as error:
            raise StepError(f'Step "{context.step_key}": a template failed: {error}') from None
        except TemplateUnsafe as error:
            # Publishing refuses it (check_config); a graph published before that is refused here.
            raise StepError(f'Step "{context.step_key}": {error.message}; nothing was sent.') from None
        if config.operation and not config.connection:
            raise StepError(f'Step "{context.step_key}": an operation needs the connection it belongs to.')
        timeout = min(config.timeout_seconds, settings.AIOS_STEP_LEASE_SECONDS / 2)
        resolved: ResolvedConnection | None = None
        if config.connection:
            try:
                resolved = connection_for_step(config.connection, kind="http", workflow_id=context.workflow_id)
                if config.operation:
                    method, url, operation_headers, body = self._operation_request(
                        config, context, parameters, body_fields, body
                    )
                    headers = http.merge_headers(headers, operation_headers)
                url = join_url(str(resolved.config["base_url"]), url)
            except ConnectionUnavailable as error:
                raise StepError(f'Step "{context.step_key}": {error.message}') from None
            # The connection's headers first, so the step may add to them; its authentication comes last.
            headers = http.merge_headers(resolved.config.get("headers", {}), headers)
            timeout = min(float(resolved.config.get("timeout_seconds", timeout)), settings.AIOS_STEP_LEASE_SECONDS / 2)
        refused = sorted(name for name in headers if name.lower() in http.FRAMING_HEADERS)
        if refused:
            # Publishing refuses these too (check_config); a graph published before that is refused here.
            raise StepError(
                f'Step "{context.step_key}": the header "{refused[0]}" is set by the platform and cannot be given.'
            )
        # Names compared case-insensitively: a graph's "idempotency-key" must not travel beside the step's own.
        headers = http.merge_headers(headers, {"Idempotency-Key": context.idempotency_key})
        if body and "content-type" not in {name.lower() for name in headers}:
            headers["Content-Type"] = "application/json" if _is_json(body) else "text/plain; charset=utf-8"
        response, sent = self._send(method, context, resolved, url, headers, body, timeout)
        oauth2 = resolved is not None and resolved.config.get("auth") == "oauth2_client_credentials"
        if resolved is not None and oauth2 and response.status == 401:
            # The token may have been revoked or expired early: fetch a new one, once, and try again.
            oauth2_forget_token(resolved)
            response, sent = self._send(method, context, resolved, url, headers, body, timeout, refresh=True)
        needles = secret_needles(resolved, sent) if resolved is not None else []
        if response.status >= 300:
            retryable = response.status >= 500 or response.status == 429
            # Redacted before it is cut short: a cut through a secret would leave a piece no search finds.
            answer = redact(response.text(), needles)[:300]
            raise StepError(
                f'Step "{context.step_key}": {method} {url} answered HTTP {response.status}: {answer}',
                retryable=retryable,
            )
        try:
            parsed = response.json() if response.body else None
        except ValueError:
            parsed = response.text()
        return StepOutcome(output={"status": response.status, "body": redact(parsed, needles)})

    @staticmethod
    def _operation_request(
        config: HttpRequestConfig,
        context: StepContext,
        parameters: dict[str, str],
        body_fields: dict[str, str],
        body: str,
    ) -> tuple[str, str, dict[str, str], str]:
        """(method, path with query, headers, body) for the config's operation, read from the connection's
        document at every run; a value that does not fit the document is a step error naming it, and nothing
        is sent."""
        operation = operation_get(config.connection, config.operation)
        if operation is None:
            raise StepError(
                f'Step "{context.step_key}": "{config.operation}" is not an operation of the OpenAPI document of '
                f'connection "{config.connection}" (any more).'
            )
        try:
            built = build_request(operation, parameters=parameters, body_fields=body_fields, raw_body=body)
        except RequestInvalid as error:
            raise StepError(f'Step "{context.step_key}": {operation.label}: {error.message}') from None
        headers = dict(built.headers)
        if built.content_type:
            headers["Content-Type"] = built.content_type
        return built.method, built.url, headers, built.body

    def _send(
        self,
        method: str,
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
            sent = http.merge_headers(sent, auth)
        try:
            response = http.request(
                method,
                url,
                headers=sent,
                body=body.encode() if body else None,
                timeout=timeout,
                destinations=resolved.destinations if resolved is not None else None,
            )
        except http.OutboundError as error:
            message = f'Step "{context.step_key}": {error}'
            if resolved is not None:
                message = redact(message, secret_needles(resolved, sent))
            raise StepError(message, retryable=error.uncertain, uncertain=error.uncertain) from None
        return response, sent


def _structure_problems(config: HttpRequestConfig) -> list[str]:
    """What keeps the URL or the body from being rendered with every value encoded for where it stands."""
    problems = []
    try:
        url_template_safe(config.url)
    except TemplateUnsafe as error:
        problems.append(f"url: {error.message}")
    try:
        if config.json_body:
            json_template_safe(json_fields_template(config.json_body))
    except TemplateUnsafe as error:
        problems.append(f"json_body: {error.message}")
    try:
        if json_shaped(config.body):
            json_template_safe(config.body)
    except TemplateUnsafe as error:
        problems.append(f"body: {error.message}")
    return problems


def _url_render(config: HttpRequestConfig, variables: dict[str, Any]) -> str:
    """The URL with every substituted value percent-encoded for its component, and the `query` mapping
    URL-encoded after it (before a fragment). With a connection, a URL that is one expression alone is taken as
    it is: join_url keeps it on the connection's origin and refuses "..". Raises ExpressionError,
    TemplateUnsafe."""
    if config.connection and single_expression(config.url):
        url = template_render(config.url, variables).strip()
    else:
        url = template_render(url_template_safe(config.url), variables).strip()
    if config.query:
        pairs = [(name, template_render(value, variables)) for name, value in config.query.items()]
        url, hash_mark, fragment = url.partition("#")
        url += ("&" if "?" in url else "?") + urlencode(pairs) + hash_mark + fragment
    return url


def _body_render(config: HttpRequestConfig, variables: dict[str, Any]) -> str:
    """The request body: the JSON fields serialised, a body written as JSON with each value escaped for where it
    stands, or the raw text. Raises ExpressionError, TemplateUnsafe (also for a JSON body that the rendering
    left invalid, e.g. two values side by side)."""
    if config.json_body:
        template = json_template_safe(json_fields_template(config.json_body))
    elif config.body and json_shaped(config.body):
        template = json_template_safe(config.body)
    else:
        return template_render(config.body, variables) if config.body else ""
    body = template_render(template, variables)
    if not _is_json(body):
        raise TemplateUnsafe("the JSON body is not valid JSON with these values")
    return body


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
