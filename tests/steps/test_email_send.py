"""`email.send`: publish checks, and messages sent through a real SMTP connection to a server of the test's own,
read back with the standard library's email parser."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.steps.base import StepContext, StepError, Uses
from apps.steps.library.email_send import EmailSend, EmailSendConfig, sanitize_html
from apps.steps.registry import step_config_errors, step_type_get
from tests.connectors.test_smtp import FussyServer, fussy_smtp_server

KEY = "e" * 64


def errors(**config: Any) -> list[str]:
    return step_config_errors("email.send", {"connection": "mail", "to": "a@example.com", "subject": "Hi", **config})


def test_a_minimal_config_is_valid() -> None:
    assert errors(body_text="Hello") == []


def test_the_builder_form_names_its_widgets() -> None:
    schema = step_type_get("email.send").config_schema()
    properties = schema["properties"]
    assert properties["connection"]["x-widget"] == "connection-smtp"
    assert properties["to"]["x-widget"] == "template" and properties["body_html"]["x-widget"] == "template"
    assert all(spec.get("description") for spec in properties.values())
    assert properties["delivery"]["default"] == "at_most_once"


def test_the_builder_shows_attachments_as_rows_of_name_and_content() -> None:
    from apps.workflows.config_form import form_fields

    schema = step_type_get("email.send").config_schema()
    [attachments] = [
        f
        for f in form_fields(schema, {"attachments": [{"name": "a.txt", "value": "input.x"}]})
        if f.name == "config.attachments"
    ]
    first = attachments.children[0]
    assert attachments.widget == "rows"
    assert [(child.name, child.widget, child.value) for child in first.children] == [
        ("config.attachments.0.name", "template", "a.txt"),
        ("config.attachments.0.value", "cel", "input.x"),
    ]


def test_uses_names_the_connection() -> None:
    config = EmailSendConfig(connection="mail", to="a@example.com", subject="Hi", body_text="x")
    assert EmailSend.uses(config) == [Uses("connection", "mail", kind="smtp", field="connection")]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, "body_text: give the message a text body, an HTML body, or both"),
        ({"body_text": "{{ input.name "}, "body_text: the template does not parse"),
        ({"body_text": "x", "to": "{% if %}"}, "to: the template does not parse"),
        ({"body_text": "x", "attachments": [{"name": "a.txt", "value": "input.("}]}, "attachments.0.value"),
        ({"body_text": "x", "attachments": [{"name": "a.txt"}]}, "attachments.0.value: Field required"),
    ],
)
def test_publish_refusals(config: dict[str, Any], expected: str) -> None:
    problems = errors(**config)
    assert any(expected in problem for problem in problems), problems


def test_html_keeps_formatting_and_links_and_drops_the_rest() -> None:
    clean = sanitize_html(
        '<h1 onclick="x()">Hi</h1><p style="color:red">a <b>bold</b> <a href="https://example.com/c">link</a>'
        '<a href="javascript:alert(1)">bad</a></p><script>alert(1)</script><style>p{}</style>'
        '<img src="https://tracker.example.com/p.gif"><!-- note -->'
    )
    assert clean == (
        '<h1>Hi</h1><p>a <b>bold</b> <a href="https://example.com/c" rel="noopener noreferrer">link</a>'
        '<a rel="noopener noreferrer">bad</a></p>'
    )


# --- sending -------------------------------------------------------------------------------------------------


@pytest.fixture
def mail_server(tmp_path: Path, settings: Any) -> Iterator[FussyServer]:
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32", "::1/128"]
    with fussy_smtp_server(tmp_path) as server:
        yield server


@pytest.fixture
def mail_workflow(analyst: Any, team: Any, mail_server: FussyServer) -> Any:
    """An SMTP connection "mail" to the test's server, owned by the analyst's team, and a workflow of that team."""
    from apps.connectors.services import connection_create
    from apps.workflows.services import workflow_create

    connection_create(
        actor=None,
        name="mail",
        label="Billing mail",
        kind="smtp",
        team=team,
        config=mail_server.config(from_address="Billing Team <billing@example.com>"),
        secrets={},
    )
    return workflow_create(actor=analyst, name="Replies", team=team)


def step_context(workflow: Any, **data: Any) -> StepContext:
    return StepContext(
        run_id=1,
        step_key="reply",
        input=data,
        steps={"draft": {"text": "Your claim is approved."}},
        idempotency_key=KEY,
        workflow_id=workflow.pk,
    )


def send(workflow: Any, context: StepContext | None = None, **config: Any) -> dict[str, Any]:
    parsed = EmailSendConfig.model_validate({"connection": "mail", **config})
    assert EmailSend.check_config(parsed) == []
    return EmailSend().execute(parsed, context or step_context(workflow)).output


@pytest.mark.django_db
def test_text_html_and_attachments_arrive_intact(mail_workflow: Any, mail_server: FussyServer) -> None:
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    context = step_context(
        mail_workflow,
        name="María <López>",
        email="maria@example.com",
        claim="C-1042",
        pdf=base64.b64encode(pdf).decode(),
    )
    output = send(
        mail_workflow,
        context,
        to="{{ input.email }}",
        cc="Équipe Sinistres <adjusters@example.com>",
        bcc="archive@example.com",
        reply_to="claims@example.com",
        subject="Your claim {{ input.claim }}",
        body_text="Dear {{ input.name }},\n{{ steps.draft.text }}\n.\nRegards\n",
        body_html="<p>Dear {{ input.name }},</p><p><b>{{ steps.draft.text }}</b></p>"
        '<script>steal()</script><img src="https://tracker.example.com/p.gif">'
        '<a href="https://example.com/claims/{{ input.claim }}">Your claim</a>',
        attachments=[
            {"name": "summary-{{ input.claim }}.txt", "value": '"Claim " + input.claim + ": approved ✓"'},
            {"name": "letter.pdf", "value": '{"content_type": "application/pdf", "content_base64": input.pdf}'},
        ],
    )
    assert output == {
        "message_id": f"<{KEY}@example.com>",
        "accepted": ["maria@example.com", "adjusters@example.com", "archive@example.com"],
        "refused": {},
    }
    [received] = mail_server.messages(to="maria@example.com")
    assert received["Message-ID"] == f"<{KEY}@example.com>"
    assert received["From"] == "Billing Team <billing@example.com>"
    assert received["To"] == "maria@example.com"
    assert received["Cc"] == "Équipe Sinistres <adjusters@example.com>" and received["Bcc"] is None
    assert "archive@example.com" in received["X-RcptTo"]
    assert received["Reply-To"] == "claims@example.com" and received["Subject"] == "Your claim C-1042"
    assert received["Auto-Submitted"] == "auto-generated"
    text = received.get_body(("plain",))
    html = received.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == "Dear María <López>,\nYour claim is approved.\n.\nRegards\n"
    assert html.get_content().strip() == (
        "<p>Dear María &lt;López&gt;,</p><p><b>Your claim is approved.</b></p>"
        '<a href="https://example.com/claims/C-1042" rel="noopener noreferrer">Your claim</a>'
    )
    attachments = {part.get_filename(): part for part in received.iter_attachments()}
    assert attachments["summary-C-1042.txt"].get_content() == "Claim C-1042: approved ✓"
    assert attachments["letter.pdf"].get_content_type() == "application/pdf"
    assert attachments["letter.pdf"].get_content() == pdf


@pytest.mark.django_db
def test_an_html_only_message_gets_a_text_alternative(mail_workflow: Any, mail_server: FussyServer) -> None:
    send(mail_workflow, to="ana@example.com", subject="Digest", body_html="<h1>Week 12</h1><p>3 items &amp; more</p>")
    [received] = mail_server.messages(to="ana@example.com")
    plain = received.get_body(("plain",))
    assert plain is not None and plain.get_content() == "Week 12\n3 items & more\n"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("to", "not-an-address", 'to: "not-an-address" is not a valid email address'),
        ("to", "ana@example.com, bob@", 'to: "bob@" is not a valid email address'),
        ("cc", "Ana <ana@localhost>", 'cc: "Ana <ana@localhost>" is not a valid email address'),
        ("to", "{{ '' }}", "to: the message has no recipient"),
        ("to", "Ana <ana@example.com> <evil@example.com>", "is not a valid email address"),
        ("to", ", ".join(f"r{n}@example.com" for n in range(51)), "51 recipients; at most 50"),
    ],
)
def test_bad_addresses_are_refused_by_name(
    mail_workflow: Any, mail_server: FussyServer, field: str, value: str, expected: str
) -> None:
    config = {"to": "ana@example.com", "subject": "Hi", "body_text": "x", field: value}
    with pytest.raises(StepError) as bad:
        send(mail_workflow, **config)
    assert expected in bad.value.message and not bad.value.retryable
    assert mail_server.messages() == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "template", "value"),
    [
        ("to", "{{ input.customer_email }}", "a@example.com, b@example.com, c@example.com"),
        ("to", "{{ input.customer_email }}", "a@example.com;b@example.com"),
        ("cc", "{{ input.customer_email }}", "a@example.com\nb@example.com"),
        ("bcc", "claims@example.com, {{ input.customer_email }}", "Ana <ana@example.com>, b@example.com"),
        ("reply_to", "{{ input.customer_email }}", ["a@example.com", "b@example.com"]),
    ],
)
def test_a_value_holding_several_addresses_is_refused_not_split(
    mail_workflow: Any, mail_server: FussyServer, field: str, template: str, value: Any
) -> None:
    """One run input must not address the message to everyone it lists: only separators written in the field
    itself separate recipients."""
    config = {"to": "ana@example.com", "subject": "Hi", "body_text": "x", field: template}
    with pytest.raises(StepError) as refused:
        send(mail_workflow, step_context(mail_workflow, customer_email=value), **config)
    assert f"{field}: a value gives several addresses" in refused.value.message and not refused.value.retryable
    assert mail_server.messages() == []


@pytest.mark.django_db
def test_separators_written_in_the_field_and_one_named_address_per_value_are_kept(
    mail_workflow: Any, mail_server: FussyServer
) -> None:
    context = step_context(mail_workflow, customer_email='"Doe, Jane" <jane@example.com>', team=["ana@example.com"])
    output = send(
        mail_workflow,
        context,
        to="{{ input.customer_email }}, claims@example.com",
        cc="{% for person in input.team %}{{ person }};{% endfor %}",
        subject="Hi",
        body_text="x",
    )
    assert output["accepted"] == ["jane@example.com", "claims@example.com", "ana@example.com"]
    assert mail_server.messages()[0]["To"] == '"Doe, Jane" <jane@example.com>, claims@example.com'


@pytest.mark.django_db
def test_server_refusals_carry_the_servers_reason(mail_workflow: Any, mail_server: FussyServer) -> None:
    with pytest.raises(StepError, match="User unknown") as unknown:
        send(mail_workflow, to="nobody@example.com", subject="Hi", body_text="x")
    assert not unknown.value.retryable
    with pytest.raises(StepError, match="Mailbox busy") as busy:
        send(mail_workflow, to="busy@example.com", subject="Hi", body_text="x")
    assert busy.value.retryable
    with pytest.raises(StepError, match="Message rejected as spam"):
        send(mail_workflow, to="ana@example.com", subject="spam", body_text="x")
    partly = send(mail_workflow, to="nobody@example.com, ana@example.com", subject="Hi", body_text="x")
    assert partly["accepted"] == ["ana@example.com"] and "User unknown" in partly["refused"]["nobody@example.com"]


@pytest.mark.django_db
def test_a_lost_answer_after_the_message_is_uncertain(mail_workflow: Any, mail_server: FussyServer) -> None:
    with pytest.raises(StepError, match="may have been delivered") as lost:
        send(mail_workflow, to="ana@example.com", subject="vanish", body_text="x")
    assert lost.value.uncertain


@pytest.mark.django_db
def test_the_message_id_is_the_same_on_every_attempt(mail_workflow: Any, mail_server: FussyServer) -> None:
    first = send(mail_workflow, to="ana@example.com", subject="Hi", body_text="x")
    again = send(mail_workflow, to="ana@example.com", subject="Hi", body_text="x")
    assert first["message_id"] == again["message_id"] == f"<{KEY}@example.com>"


@pytest.mark.django_db
def test_attachment_problems_name_the_attachment(mail_workflow: Any, mail_server: FussyServer) -> None:
    base = {"to": "ana@example.com", "subject": "Hi", "body_text": "x"}
    with pytest.raises(StepError, match=r'attachment "a\.bin": content_base64 is not valid base64'):
        send(mail_workflow, **base, attachments=[{"name": "a.bin", "value": '{"content_base64": "***"}'}])
    with pytest.raises(StepError, match=r'attachment "n\.txt": the expression gave int'):
        send(mail_workflow, **base, attachments=[{"name": "n.txt", "value": "42"}])
    with pytest.raises(StepError, match="is not one of this run's input documents"):
        send(mail_workflow, **base, attachments=[{"name": "d.pdf", "value": '{"document": 999999}'}])
    assert mail_server.messages() == []


@pytest.mark.django_db
def test_a_connection_the_workflow_may_not_use_is_refused(mail_workflow: Any, outsider: Any) -> None:
    from apps.accounts.services import team_create
    from apps.workflows.services import workflow_create

    elsewhere = workflow_create(actor=outsider, name="Elsewhere", team=team_create(name="Finance", members=[outsider]))
    with pytest.raises(StepError, match='may not use the connection "mail"'):
        send(elsewhere, step_context(elsewhere), to="ana@example.com", subject="Hi", body_text="x")


def test_simulate_renders_and_checks_without_sending() -> None:
    config = EmailSendConfig(connection="mail", to="{{ input.email }}", subject="Hi {{ input.name }}", body_text="x")
    context = StepContext(
        run_id=1, step_key="reply", input={"email": "ana@example.com", "name": "Ana"}, steps={}, idempotency_key=KEY
    )
    assert EmailSend().simulate(config, context) == {
        "message_id": f"<{KEY}@simulated.invalid>",
        "accepted": ["ana@example.com"],
        "refused": {},
        "subject": "Hi Ana",
        "simulated": True,
    }
    context.input["email"] = "nope"
    with pytest.raises(StepError, match='"nope" is not a valid email address'):
        EmailSend().simulate(config, context)
