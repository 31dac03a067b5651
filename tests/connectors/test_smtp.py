"""apps.connectors.smtp against real SMTP servers (aiosmtpd on loopback): sign-in, refusals with the server's
reason, and the one moment when delivery becomes uncertain (after the final "." of DATA, before the reply)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from apps.connectors.smtp import SmtpError, smtp_open, smtp_quit, smtp_send, smtp_test
from deploy.devstack.config import LOOPBACK
from deploy.devstack.mailcatcher import SERVER_NAME, SMTP_OPTIONS, MailCatcher
from tests.support.processes import free_port
from tests.support.smtp import read_messages

PASSWORD = "canary-Smtp-Secret-5521"


class FussyCatcher(MailCatcher):
    """The catch-all with a real server's refusals: unknown and busy mailboxes at RCPT, spam at the end of DATA,
    and a server that takes the message and then drops the line before it answers ("Subject: vanish")."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if address.startswith("busy@"):
            return "450 4.2.1 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if b"\r\nSubject: spam" in content:
            return "554 5.7.1 Message rejected as spam"
        if b"\r\nSubject: vanish" in content:
            self.save(envelope, session.peer)
            assert server.transport is not None
            server.transport.abort()  # the message is kept, and no reply ever leaves
            return "250 OK"
        return await super().handle_DATA(server, session, envelope)


@dataclass(frozen=True)
class FussyServer:
    port: int
    directory: Path

    def config(self, **changes: Any) -> dict[str, Any]:
        return {
            "host": LOOPBACK,
            "port": self.port,
            "security": "none",
            "from_address": "billing@example.com",
            **changes,
        }

    def messages(self, *, to: str | None = None) -> list[EmailMessage]:
        return read_messages(self.directory, to=to)


def _authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == b"billing" and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@contextmanager
def fussy_smtp_server(tmp_path: Path) -> Iterator[FussyServer]:
    """A server of the test's own that refuses as described in FussyCatcher, and signs in user "billing"."""
    controller = Controller(
        FussyCatcher(tmp_path),
        hostname=LOOPBACK,
        port=free_port(),
        server_hostname=SERVER_NAME,
        authenticator=_authenticate,
        auth_require_tls=False,
        **SMTP_OPTIONS,
    )
    controller.start()
    try:
        yield FussyServer(controller.port, tmp_path)
    finally:
        controller.stop()


@pytest.fixture
def fussy(tmp_path: Path, settings: Any) -> Iterator[FussyServer]:
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32", "::1/128"]
    with fussy_smtp_server(tmp_path) as server:
        yield server


def message(subject: str = "Hello") -> EmailMessage:
    built = EmailMessage()
    built["From"] = "billing@example.com"
    built["To"] = "ana@example.com"
    built["Subject"] = subject
    built["Message-ID"] = "<abc@example.com>"
    built.set_content("Line one\n.leading dot\n")
    return built


def send(server: FussyServer, subject: str, recipients: list[str], **config: Any) -> Any:
    session = smtp_open(server.config(**config), {"password": PASSWORD} if config.get("username") else {})
    try:
        return smtp_send(session, message(subject), sender="billing@example.com", recipients=recipients)
    finally:
        smtp_quit(session)


def test_a_message_goes_through_and_keeps_a_leading_dot(fussy: FussyServer) -> None:
    result = send(fussy, "Hello", ["ana@example.com"])
    assert result.accepted == ["ana@example.com"] and result.refused == {} and result.reply.startswith("250")
    [received] = fussy.messages(to="ana@example.com")
    assert received.get_content() == "Line one\n.leading dot\n" and received["Message-ID"] == "<abc@example.com>"


def test_a_refused_recipient_is_reported_and_the_others_still_get_it(fussy: FussyServer) -> None:
    result = send(fussy, "Hello", ["nobody@example.com", "ana@example.com"])
    assert result.accepted == ["ana@example.com"]
    assert result.refused == {
        "nobody@example.com": "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    }
    assert len(fussy.messages()) == 1


def test_every_recipient_refused_is_an_error_retryable_only_when_temporary(fussy: FussyServer) -> None:
    with pytest.raises(SmtpError, match="User unknown") as permanent:
        send(fussy, "Hello", ["nobody@example.com"])
    assert not permanent.value.retryable and not permanent.value.uncertain
    with pytest.raises(SmtpError, match="Mailbox busy") as temporary:
        send(fussy, "Hello", ["busy@example.com"])
    assert temporary.value.retryable and not temporary.value.uncertain
    assert fussy.messages() == []


def test_a_message_refused_at_the_end_of_data_carries_the_servers_reason(fussy: FussyServer) -> None:
    with pytest.raises(SmtpError, match=r"554 5\.7\.1 Message rejected as spam") as refused:
        send(fussy, "spam", ["ana@example.com"])
    assert not refused.value.retryable and not refused.value.uncertain


def test_a_reply_lost_after_the_final_dot_is_uncertain(fussy: FussyServer) -> None:
    with pytest.raises(SmtpError, match="may have been delivered") as lost:
        send(fussy, "vanish", ["ana@example.com"])
    assert lost.value.uncertain and lost.value.retryable
    assert len(fussy.messages()) == 1  # it was, in fact, delivered


def test_sign_in_and_a_refused_password_without_showing_it(fussy: FussyServer) -> None:
    assert send(fussy, "Hello", ["ana@example.com"], username="billing").accepted == ["ana@example.com"]
    with pytest.raises(SmtpError, match="refused the sign-in: 535") as refused:
        smtp_open(fussy.config(username="billing"), {"password": "wrong-password"})
    assert PASSWORD not in refused.value.message and "wrong-password" not in refused.value.message
    assert not refused.value.retryable


def test_starttls_is_required_when_asked_for(fussy: FussyServer) -> None:
    with pytest.raises(SmtpError, match="does not offer STARTTLS"):
        smtp_open(fussy.config(security="starttls"), {})


def test_loopback_is_refused_unless_allowlisted(fussy: FussyServer, settings: Any) -> None:
    settings.AIOS_HTTP_ALLOWLIST = []
    with pytest.raises(SmtpError, match="a loopback address; connections there are not allowed"):
        smtp_open(fussy.config(), {})


def test_an_unreachable_server_is_retryable(settings: Any) -> None:
    settings.AIOS_HTTP_ALLOWLIST = ["127.0.0.1/32"]
    with pytest.raises(SmtpError, match="Could not connect") as unreachable:
        smtp_open({"host": LOOPBACK, "port": free_port(), "security": "none", "from_address": "a@example.com"}, {})
    assert unreachable.value.retryable and not unreachable.value.uncertain


def test_the_connection_test_greets_and_quits(fussy: FussyServer) -> None:
    assert smtp_test(fussy.config(username="billing"), {"password": PASSWORD}) == SERVER_NAME
