"""`email.send`: one email through an SMTP connection, its Message-ID derived from the step's idempotency key."""

from __future__ import annotations

import base64
import binascii
import email.message
import email.utils
import functools
import html
import re
from typing import Any, Literal

import nh3
from django.conf import settings
from django.utils import timezone
from jinja2 import StrictUndefined, Template, TemplateError
from pydantic import BaseModel, ConfigDict, Field

from apps.connectors.smtp import WIRE_POLICY, SmtpError, smtp_open, smtp_quit, smtp_send
from apps.steps.base import StepConfig, StepContext, StepError, StepOutcome, StepType, Uses
from apps.steps.expressions import (
    MAX_TEMPLATE_OUTPUT,
    ExpressionError,
    _DataFirstEnvironment,
    cel_check,
    cel_evaluate,
    render_budget,
    template_check,
    template_render,
)
from apps.steps.registry import register

MAX_RECIPIENTS = 50
MAX_ATTACHMENTS = 10
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024  # all attachments together, before encoding
MAX_SUBJECT_LENGTH = 500

# What survives in an HTML body: text formatting, lists, tables and links. No scripts, styles, forms or images
# (an image by URL tells its sender when and where the mail was opened).
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "li", "ol", "p", "pre", "s", "small", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "u", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "td": {"colspan", "rowspan"}, "th": {"colspan", "rowspan", "scope"}}
ALLOWED_URL_SCHEMES = {"http", "https", "mailto"}

# A pragmatic address check (RFC 5321's dot-atom local part, a domain of labels with a dot): what relays accept.
_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)


# The HTML body's templates: the same sandbox and data-first lookups as every text template, with values
# HTML-escaped, so run data shows as text (a "<b>" in a customer's name is shown, not obeyed).
_html_templates = _DataFirstEnvironment(undefined=StrictUndefined, autoescape=True, keep_trailing_newline=True)


class _SeveralAddresses(TemplateError):
    """A value rendered into an address field that holds more than one address."""


def _one_address_value(value: Any) -> Any:
    """Each `{{ … }}` of an address field gives at most one address: the separators between recipients must be
    written in the field itself. Otherwise one run input ("a@x.com, b@y.com" in a customer's email field, filled
    by a trigger from outside) could address the message to anyone it lists."""
    if len(_split_addresses(str(value))) > 1:
        raise _SeveralAddresses(str(value))
    return value


# Address fields' templates: as every text template, with each rendered value checked by `_one_address_value`.
_address_templates = _DataFirstEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_one_address_value
)


@functools.lru_cache(maxsize=256)
def _address_template(template: str) -> Template:
    return _address_templates.from_string(template)


class AttachmentConfig(BaseModel):
    """One attachment: its file name (a template) and its content (an expression)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=200,
        title="File name",
        description="A text template, e.g. invoice-{{ input.number }}.txt",
        json_schema_extra={"x-widget": "template", "x-rows": 1},
    )
    value: str = Field(
        min_length=1,
        title="Content",
        description="An expression giving the content: text (sent as a text file), a document from the run input "
        '(e.g. input.invoice), or {"content_type": "application/pdf", "content_base64": ...}.',
        json_schema_extra={"x-widget": "cel"},
    )


def _template_field(title: str, description: str, *, rows: int = 1, required: bool = False) -> Any:
    extra: dict[str, Any] = {"x-widget": "template", "x-rows": rows}
    if required:
        return Field(min_length=1, title=title, description=description, json_schema_extra=extra)
    return Field("", title=title, description=description, json_schema_extra=extra)


class EmailSendConfig(StepConfig):
    connection: str = Field(
        min_length=1,
        title="Connection",
        description="The mail server to send through (it also gives the sender address): one of the SMTP "
        "connections this workflow may use.",
        json_schema_extra={"x-widget": "connection-smtp"},
    )
    to: str = _template_field(
        "To",
        "Recipients, separated by commas, e.g. {{ input.customer_email }}, claims@example.com. Each value filled in "
        "must be one address: a value holding a list is refused.",
        required=True,
    )
    cc: str = _template_field("Cc", "Copy recipients, separated by commas (optional; one address per value).")
    bcc: str = _template_field("Bcc", "Hidden copy recipients, separated by commas (optional; one address per value).")
    reply_to: str = _template_field("Reply to", "Where replies go, if not to the sender (optional).")
    subject: str = _template_field("Subject", "A text template, e.g. Your claim {{ input.claim_id }}", required=True)
    body_text: str = _template_field(
        "Text body", "The message as plain text (a template). Give this, an HTML body, or both.", rows=8
    )
    body_html: str = _template_field(
        "HTML body",
        "The message as HTML (a template; values are escaped). Formatting, lists, tables and links are kept; "
        "scripts, styles and images are removed.",
        rows=8,
    )
    attachments: list[AttachmentConfig] = Field(
        default_factory=list,
        max_length=MAX_ATTACHMENTS,
        title="Attachments",
        description=f"Files to attach (at most {MAX_ATTACHMENTS}, "
        f"{MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB together).",
    )
    delivery: Literal["at_least_once", "at_most_once"] = Field(
        "at_most_once",
        title="Delivery",
        description="at_most_once: if an attempt may have sent the message but its outcome is unknown, a person "
        "decides instead of sending again. at_least_once: send again with the same Message-ID (receivers that "
        "deduplicate by it show it once).",
    )


def _render(template: str, variables: dict[str, Any], label: str, field: str) -> str:
    try:
        return template_render(template, variables)
    except ExpressionError as error:
        raise StepError(f"{label}, {field}: the template failed: {error}") from None


def _render_addresses(template: str, variables: dict[str, Any], label: str, field: str) -> list[tuple[str, str]]:
    """The (display name, address) pairs an address field gives; a value that holds several addresses is refused,
    not split."""
    try:
        with render_budget():
            text = _address_template(template).render(**variables)
    except _SeveralAddresses as several:
        raise StepError(
            f'{label}, {field}: a value gives several addresses ("{str(several)[:200]}"); each value may give one. '
            "Write the separators in the field itself, e.g. {{ input.customer_email }}, claims@example.com."
        ) from None
    except TemplateError as error:
        raise StepError(f"{label}, {field}: the template failed: {error}") from None
    if len(text) > MAX_TEMPLATE_OUTPUT:
        raise StepError(f"{label}, {field}: the rendered text is longer than {MAX_TEMPLATE_OUTPUT} characters.")
    return parse_addresses(text, field, label)


def _render_html(template: str, variables: dict[str, Any], label: str) -> str:
    try:
        with render_budget():
            text = _html_templates.from_string(template).render(**variables)
    except TemplateError as error:
        raise StepError(f"{label}, body_html: the template failed: {error}") from None
    if len(text) > MAX_TEMPLATE_OUTPUT:
        raise StepError(f"{label}, body_html: the rendered HTML is longer than {MAX_TEMPLATE_OUTPUT} characters.")
    return text


def sanitize_html(markup: str) -> str:
    """The HTML body as sent: only the allowed tags and attributes, links that open safely, no comments."""
    return nh3.clean(
        markup,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=ALLOWED_URL_SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    )


def _html_as_text(markup: str) -> str:
    """A plain-text alternative for a message written only in HTML."""
    spaced = re.sub(r"(?i)<br\s*/?>|</(p|div|h[1-6]|li|tr|blockquote|pre)>", "\n", markup)
    text = html.unescape(nh3.clean(spaced, tags=set()))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _split_addresses(text: str) -> list[str]:
    """`text` cut at commas, semicolons and line breaks that are not inside quotes or angle brackets."""
    parts: list[str] = []
    current: list[str] = []
    quoted = angled = False
    for character in text:
        if character == '"' and not angled:
            quoted = not quoted
        elif character == "<" and not quoted:
            angled = True
        elif character == ">" and not quoted:
            angled = False
        elif character in ",;\n" and not quoted and not angled:
            parts.append("".join(current))
            current = []
            continue
        current.append(character)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def parse_addresses(text: str, field: str, label: str) -> list[tuple[str, str]]:
    """(display name, address) for each address in `text` (separated by commas, semicolons or line breaks); a
    StepError names the first one that is not a valid address."""
    found: list[tuple[str, str]] = []
    for part in _split_addresses(text):
        name, address = email.utils.parseaddr(part)
        # One address per part: "x@y.com <z@w.com>" or two <…> would leave it to a parser to guess which counts.
        unquoted = re.sub(r'"[^"]*"', "", part)
        if not _ADDRESS.match(address) or unquoted.count("<") > 1 or unquoted.count("@") > 1:
            raise StepError(f'{label}, {field}: "{part[:200]}" is not a valid email address.')
        found.append((name, address))
    return found


def _header_addresses(addresses: list[tuple[str, str]]) -> str:
    return ", ".join(email.utils.formataddr(pair) for pair in addresses)


def _attachment(
    item: AttachmentConfig, variables: dict[str, Any], context: StepContext, label: str
) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of one attachment."""
    name = " ".join(_render(item.name, variables, label, "attachments.name").split())
    if not name or "/" in name or "\\" in name:
        raise StepError(f'{label}, attachments: "{name}" is not a file name.')
    try:
        value = cel_evaluate(item.value, variables)
    except ExpressionError as error:
        raise StepError(f'{label}, attachment "{name}": the expression `{item.value}` failed: {error}') from None
    if isinstance(value, str):
        return name, value.encode("utf-8"), "text/plain; charset=utf-8"
    if isinstance(value, dict) and "content_base64" in value:
        content = value["content_base64"]
        if not isinstance(content, str):
            raise StepError(f'{label}, attachment "{name}": content_base64 must be base64 text.')
        if len(content) // 4 * 3 > MAX_ATTACHMENT_BYTES + 3:
            raise StepError(f'{label}, attachment "{name}" is larger than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB.')
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise StepError(f'{label}, attachment "{name}": content_base64 is not valid base64.') from None
        content_type = value.get("content_type") or "application/octet-stream"
        if not isinstance(content_type, str) or not re.fullmatch(r"[\w.+-]+/[\w.+-]+", content_type):
            raise StepError(f'{label}, attachment "{name}": "{content_type}" is not a content type.')
        return name, data, content_type
    if isinstance(value, dict) and "document" in value:
        # Documents stored with a run's inputs are read through the runs app's hook, which checks that this run
        # may read the document (the same one doc.parse uses).
        from apps.steps.library.doc_parse import RUN_DOCUMENT_READERS

        document_id = value["document"]
        stored = None
        if isinstance(document_id, int) and not isinstance(document_id, bool):
            stored = next(
                (found for reader in RUN_DOCUMENT_READERS if (found := reader(context.run_id, document_id))), None
            )
        if stored is None:
            raise StepError(
                f'{label}, attachment "{name}": document {document_id!r} is not one of this run\'s input documents.'
            )
        return name, stored.data, stored.content_type or "application/octet-stream"
    raise StepError(
        f'{label}, attachment "{name}": the expression gave {type(value).__name__}; give text, a document from the '
        'run input, or {"content_type": ..., "content_base64": ...}.'
    )


def _domain(address: str) -> str:
    return email.utils.parseaddr(address)[1].rpartition("@")[2].lower() or "localhost"


@register
class EmailSend(StepType):
    """Sends one email through an SMTP connection; the sender is the connection's from address. Output:
    `{"message_id", "accepted": [addresses], "refused": {address: "the server's reply"}}` (a recipient refused
    at RCPT is reported, the others still get the message; none accepted is an error).

    What is guaranteed about sending once. The Message-ID is `<{idempotency key}@{sender's domain}>`: the key is
    derived from the run and the step, so every attempt of the step sends the same Message-ID. The engine records
    the intent in its effect ledger before the attempt. SMTP hands a message over at one moment: the server's 250
    reply to the final "." of DATA (RFC 5321 4.1.1.4); a connection lost before that final "." means the server
    discards the transaction. So:
    - a failure before the final "." (no connection, a 4xx, a dropped line while sending) sent nothing and is
      retried (4xx and lost connections) or fails (5xx);
    - a 250 followed by the step's result being recorded is the normal case, and the step never runs again;
    - the window in which the outcome is unknown is after the final "." and before the result is recorded: a
      reply that never arrives, or a worker that dies after the 250. With delivery `at_most_once` (the default)
      the next attempt sees the ledger's unfinished intent and the step goes to a person as an incident (check the
      mailbox, then retry, skip or abort), so a message is never sent twice. With `at_least_once` the step sends
      again with the same Message-ID, which mail systems that deduplicate use to show it once.
    """

    slug = "email.send"
    name = "Send email"
    description = "Send an email (text and HTML, with attachments) through an SMTP connection."
    Config = EmailSendConfig
    category = "Connectors"
    queue = "connectors"
    side_effects = True
    replay_reuses_output = True

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        # The attachment's schema inline rather than by reference, so the builder shows attachments as rows of a
        # file name and a content expression instead of a JSON box.
        schema = super().config_schema()
        items = schema["properties"]["attachments"]["items"]
        if "$ref" in items:
            schema["properties"]["attachments"]["items"] = schema.get("$defs", {})[items["$ref"].rsplit("/", 1)[-1]]
        return schema

    @classmethod
    def uses(cls, config: EmailSendConfig) -> list[Uses]:
        return [Uses("connection", config.connection, kind="smtp", field="connection")]

    @staticmethod
    def check_config(config: EmailSendConfig) -> list[str]:
        problems = []
        templates = [
            ("to", config.to),
            ("cc", config.cc),
            ("bcc", config.bcc),
            ("reply_to", config.reply_to),
            ("subject", config.subject),
            ("body_text", config.body_text),
            ("body_html", config.body_html),
        ]
        for index, attachment in enumerate(config.attachments):
            templates.append((f"attachments.{index}.name", attachment.name))
            problem = cel_check(attachment.value)
            if problem:
                problems.append(f"attachments.{index}.value: the expression does not parse: {problem}")
        for field, template in templates:
            problem = template_check(template)
            if problem:
                problems.append(f"{field}: the template does not parse: {problem}")
        if not config.body_text.strip() and not config.body_html.strip():
            problems.append("body_text: give the message a text body, an HTML body, or both.")
        return problems

    def _message(self, config: EmailSendConfig, context: StepContext, sender: str) -> tuple[Any, list[str]]:
        """The message as sent, and its envelope recipients (To, Cc and Bcc)."""
        label = f'Step "{context.step_key}"'
        variables = context.expression_variables()
        to = _render_addresses(config.to, variables, label, "to")
        cc = _render_addresses(config.cc, variables, label, "cc") if config.cc else []
        bcc = _render_addresses(config.bcc, variables, label, "bcc") if config.bcc else []
        reply_to = _render_addresses(config.reply_to, variables, label, "reply_to") if config.reply_to else []
        if not to:
            raise StepError(f"{label}, to: the message has no recipient.")
        recipients = list(dict.fromkeys(address for _, address in [*to, *cc, *bcc]))
        if len(recipients) > MAX_RECIPIENTS:
            raise StepError(f"{label}: {len(recipients)} recipients; at most {MAX_RECIPIENTS} may get one message.")
        subject = " ".join(_render(config.subject, variables, label, "subject").split())
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise StepError(f"{label}, subject: longer than {MAX_SUBJECT_LENGTH} characters.")
        text = _render(config.body_text, variables, label, "body_text") if config.body_text.strip() else ""
        markup = sanitize_html(_render_html(config.body_html, variables, label)) if config.body_html.strip() else ""
        attachments = [_attachment(item, variables, context, label) for item in config.attachments]
        if sum(len(data) for _, data, _ in attachments) > MAX_ATTACHMENT_BYTES:
            raise StepError(
                f"{label}: the attachments are larger than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB together."
            )

        message = email.message.EmailMessage(policy=WIRE_POLICY)
        message["From"] = sender
        message["To"] = _header_addresses(to)
        if cc:
            message["Cc"] = _header_addresses(cc)
        if reply_to:
            message["Reply-To"] = _header_addresses(reply_to)
        message["Subject"] = subject
        message["Date"] = email.utils.format_datetime(timezone.now())
        message["Message-ID"] = f"<{context.idempotency_key}@{_domain(sender)}>"
        # RFC 3834: sent by a process, not a person, so auto-responders stay quiet.
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(text or _html_as_text(markup))
        if markup:
            message.add_alternative(markup, subtype="html")
        for name, data, content_type in attachments:
            maintype, _, rest = content_type.partition("/")
            subtype = rest.split(";", 1)[0].strip()
            # Bytes, base64-encoded, so a file arrives byte for byte (text set as a string would get its line
            # ends normalised and a final newline added).
            params = {"charset": "utf-8"} if maintype == "text" else {}
            message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name, params=params)
        return message, recipients

    def simulate(self, config: EmailSendConfig, context: StepContext) -> dict[str, Any]:  # type: ignore[override]
        # Everything is rendered and checked (so a bad address or template shows in a test run); nothing is sent.
        message, recipients = self._message(config, context, "sender@simulated.invalid")
        return {
            "message_id": f"<{context.idempotency_key}@simulated.invalid>",
            "accepted": recipients,
            "refused": {},
            "subject": str(message["Subject"]),
            "simulated": True,
        }

    def execute(self, config: EmailSendConfig, context: StepContext) -> StepOutcome:  # type: ignore[override]
        from apps.connectors.runtime import connection_for_step, redact
        from apps.core.exceptions import ApplicationError

        label = f'Step "{context.step_key}"'
        try:
            resolved = connection_for_step(config.connection, kind="smtp", workflow_id=context.workflow_id)
        except ApplicationError as error:
            raise StepError(f"{label}: {error.message}") from None
        sender_name, sender = email.utils.parseaddr(str(resolved.config.get("from_address") or ""))
        if not _ADDRESS.match(sender):
            raise StepError(f'{label}: the connection "{resolved.name}" has no valid from address.')
        message, recipients = self._message(config, context, email.utils.formataddr((sender_name, sender)))
        timeout = min(60.0, settings.AIOS_STEP_LEASE_SECONDS / 4)
        try:
            session = smtp_open(resolved.config, resolved.secrets, timeout=timeout, destinations=resolved.destinations)
            try:
                result = smtp_send(session, message, sender=sender, recipients=recipients)
            finally:
                smtp_quit(session)
        except SmtpError as error:
            message_text = redact(error.message, resolved.secret_values())
            raise StepError(f"{label}: {message_text}", retryable=error.retryable, uncertain=error.uncertain) from None
        return StepOutcome(
            output={"message_id": str(message["Message-ID"]), "accepted": result.accepted, "refused": result.refused},
            usage={"connection": resolved.name, "reply": result.reply},
        )
