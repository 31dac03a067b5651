"""Mail in: a real SMTP client (smtplib) talks to the product's inbound server (`manage.py mail_inbound`, its own
process). Mail to an email trigger's address starts a run with its subject, sender, text and attachments (a PDF
fills the document field); one run per Message-ID; any other address is refused at RCPT; the reply comes after
the commit."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from apps.runs.models import InputDocument, Run, TriggerFiring
from apps.runs.triggers import email_address_for, mail_payload, trigger_create, trigger_pause
from tests.support.documents import pdf_of
from tests.support.processes import REPO, free_port, running, service_env
from tests.triggers.conftest import publish

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CLAIM_SCHEMA = {
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "sender": {"type": "string"},
        "text": {"type": "string", "format": "textarea"},
        "claim_form": {"type": "object", "format": "document"},
    },
    "required": ["subject"],
}


@pytest.fixture
def inbound(transactional_db) -> Iterator[int]:
    """The inbound SMTP server as the stack runs it, on a free port; yields the port."""
    port = free_port()
    argv = [str(REPO / ".venv/bin/python"), "manage.py", "mail_inbound", "--port", str(port)]
    with running("mail-inbound", argv, ready=lambda log: "Taking mail" in log, env=service_env()):
        yield port


@pytest.fixture
def mail_trigger(analyst, team):
    workflow = publish(analyst, "Claims by mail", schema=CLAIM_SCHEMA, fields={"s": "input.subject"}, team=team)
    trigger, _ = trigger_create(
        actor=analyst,
        workflow=workflow,
        kind="email",
        name="Claims mailbox",
        inputs={"subject": "payload.subject", "sender": "payload.sender", "text": "payload.text"},
    )
    return trigger


def message(to: str, *, subject: str, text: str, message_id: str | None, html: str | None = None) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Carla Client <carla@example.com>"
    mail["To"] = to
    mail["Subject"] = subject
    if message_id:
        mail["Message-ID"] = message_id
    if html is None:
        mail.set_content(text)
    else:
        mail.set_content(html, subtype="html")
    return mail


def send(port: int, mail: EmailMessage) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.send_message(mail)


def test_a_mail_starts_a_run_with_its_text_and_its_pdf(inbound, mail_trigger, analyst):
    address = email_address_for(mail_trigger)
    mail = message(
        address, subject="Claim 2041: water damage", text="The kitchen is flooded.", message_id="<c2041@example.com>"
    )
    mail.add_attachment(
        pdf_of(["Claim form 2041", "Amount: 1200 EUR"]), maintype="application", subtype="pdf", filename="claim.pdf"
    )
    mail.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="lines.csv")
    started = time.monotonic()
    assert send(inbound, mail) == {}
    # 250 came after the commit: the run is there the moment the client has its answer.
    [run] = Run.objects.filter(workflow=mail_trigger.workflow)
    assert time.monotonic() - started < 30
    assert run.trigger == "email" and run.initiator == analyst
    assert run.inputs["subject"] == "Claim 2041: water damage" and run.inputs["sender"] == "carla@example.com"
    assert run.inputs["text"].strip() == "The kitchen is flooded."
    document = InputDocument.objects.get(pk=run.inputs["claim_form"]["document"])
    assert document.name == "claim.pdf" and "Amount: 1200 EUR" in document.text and document.uploaded_by == analyst
    [firing] = TriggerFiring.objects.filter(trigger=mail_trigger)
    assert firing.outcome == "started" and firing.run == run


def test_one_run_per_message_id(inbound, mail_trigger):
    address = email_address_for(mail_trigger)
    for _ in range(3):
        send(inbound, message(address, subject="Same mail", text="Sent three times.", message_id="<same@example.com>"))
    assert Run.objects.filter(workflow=mail_trigger.workflow).count() == 1
    outcomes = list(TriggerFiring.objects.filter(trigger=mail_trigger).order_by("pk").values_list("outcome", flat=True))
    assert outcomes == ["started", "duplicate", "duplicate"]
    # Without a Message-ID the raw message's hash stands in: the same bytes twice, one run.
    bare = message(address, subject="No id", text="Plain.", message_id=None)
    bare["Date"] = "Mon, 07 Dec 2026 08:00:00 +0000"
    send(inbound, bare)
    send(inbound, bare)
    assert Run.objects.filter(workflow=mail_trigger.workflow).count() == 2


def test_other_addresses_are_refused_at_rcpt(inbound, mail_trigger, analyst):
    for address in ("someone@example.com", f"nosuchtoken@{email_address_for(mail_trigger).split('@')[1]}"):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(inbound, message(address, subject="Hello", text="Relay me", message_id="<r@example.com>"))
        [(code, _)] = refused.value.recipients.values()
        assert code == 550
    trigger_pause(actor=analyst, trigger=mail_trigger)
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(
            inbound, message(email_address_for(mail_trigger), subject="Paused", text="x", message_id="<p@example.com>")
        )
    assert not Run.objects.exists()


def test_a_mail_that_does_not_fit_is_refused_with_the_reason(inbound, analyst, team):
    workflow = publish(
        analyst,
        "Strict",
        schema={
            "type": "object",
            "properties": {"subject": {"type": "string", "minLength": 50}},
            "required": ["subject"],
        },
        fields={"s": "input.subject"},
        team=team,
    )
    trigger, _ = trigger_create(actor=analyst, workflow=workflow, kind="email", name="Strict box")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(inbound, message(email_address_for(trigger), subject="Too short", text="x", message_id="<s@example.com>"))
    assert refused.value.smtp_code == 550 and b"subject" in refused.value.smtp_error
    [firing] = TriggerFiring.objects.filter(trigger=trigger)
    assert firing.outcome == "refused" and "at least 50 characters" in firing.detail
    assert not Run.objects.exists()


def test_html_only_mail_gives_its_text():
    mail = message(
        "x@aios.localhost",
        subject="Rich",
        text="",
        message_id="<h@example.com>",
        html="<html><body><h1>Order</h1><p>Two <b>chairs</b> &amp; a table</p></body></html>",
    )
    payload, attachments, source = mail_payload(mail.as_bytes(), mail_from="x@example.com")
    assert "Two chairs & a table" in payload["text"] and "<b>" not in payload["text"]
    assert attachments == [] and source.startswith("mail:")


def _raw_send(port: int, to: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("carla@example.com", [to], raw)


def test_a_mail_in_an_unknown_character_set_still_starts_a_run(inbound, mail_trigger):
    """A charset Python does not know (the parser raises LookupError for it) used to make every delivery a 451,
    retried for days and never recorded: the text is read with replacement characters and a note instead."""
    to = email_address_for(mail_trigger)
    raw = (
        f"From: Carla Client <carla@example.com>\r\nTo: {to}\r\nSubject: Odd charset\r\n"
        "Message-ID: <odd-cs@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        '--B\r\nContent-Type: text/plain; charset="x-unknown-cs"\r\n\r\nThe roof leaks \xe9verywhere.\r\n'
        '--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="scan.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n!!!not base64###\r\n--B--\r\n"
    ).encode("latin-1")
    _raw_send(inbound, to, raw)
    [run] = Run.objects.filter(workflow=mail_trigger.workflow)
    assert run.inputs["subject"] == "Odd charset"
    assert run.inputs["text"].startswith("The roof leaks ") and run.inputs["text"].endswith("verywhere.")
    [firing] = TriggerFiring.objects.filter(trigger=mail_trigger)
    assert firing.outcome == "started"
    payload, attachments, _ = mail_payload(raw, mail_from="")
    assert any("x-unknown-cs" in note for note in payload["notes"])
    assert [name for name, _, _ in attachments] == ["scan.bin"]


def test_bytes_that_are_not_an_email_message_are_a_recorded_permanent_refusal(inbound, mail_trigger):
    to = email_address_for(mail_trigger)
    with pytest.raises(smtplib.SMTPDataError) as refusal:
        _raw_send(inbound, to, b"\x00\x01 this is not a mail at all\r\n")
    assert refusal.value.smtp_code == 554  # permanent: the sender does not retry it for days
    assert b"no header fields" in refusal.value.smtp_error
    [firing] = TriggerFiring.objects.filter(trigger=mail_trigger)
    assert firing.outcome == "refused" and "not an email message" in firing.detail
    assert not Run.objects.filter(workflow=mail_trigger.workflow).exists()


def test_a_malformed_header_reads_as_empty_instead_of_failing():
    # "Message-ID: <" makes the header parser raise IndexError.
    raw = b"From: carla@example.com\r\nSubject: Hi\r\nMessage-ID: <\r\n\r\nBody text\r\n"
    payload, _, source = mail_payload(raw, mail_from="")
    assert payload["message_id"] == "" and payload["text"] == "Body text" and source.startswith("raw:")
