"""Mail in tests: what the test stack's catch-all SMTP server received, and a private SMTP server of a test's own.

`make test` starts the catch-all (deploy/devstack/mailcatcher.py) and points EMAIL_URL at it, so every process
the tests start (Celery workers, the web server: tests/support/processes.service_env) sends real SMTP there.
The test process itself is different: pytest-django switches its EMAIL_BACKEND to locmem, so `send_mail` in a
test lands in `django.core.mail.outbox`. A test that wants the real SMTP path switches it back::

    def test_the_digest_goes_out_over_smtp(settings):
        use_real_smtp(settings)  # EMAIL_BACKEND = SMTP, to the stack's catch-all
        send_mail("Your reviews", "3 approvals wait for you.", None, ["rita@example.com"])
        [message] = caught_messages(to="rita@example.com")
        assert message["Subject"] == "Your reviews"

    def test_with_a_server_of_its_own(settings):
        with private_smtp_server() as server:
            use_real_smtp(settings, server)  # EMAIL_BACKEND = SMTP, EMAIL_HOST/PORT = the private server
            send_mail("Hello", "Body", None, ["max@example.com"])
            [message] = server.messages()

The catch-all serves the whole session (and starts each session empty): select a test's messages by a
recipient of its own (`to=`), which matches the envelope, so Bcc recipients count too. A message sent by
another process arrives when that process gets to it: `wait_for_caught` polls.
"""

from __future__ import annotations

import email.policy
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller

from deploy.devstack.config import LOOPBACK
from deploy.devstack.mailcatcher import SERVER_NAME, SMTP_OPTIONS, MailCatcher
from tests.support.processes import free_port

__all__ = [
    "PrivateSmtpServer",
    "caught_messages",
    "envelope_recipients",
    "private_smtp_server",
    "read_messages",
    "stack_mail_dir",
    "use_real_smtp",
    "wait_for_caught",
]

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
_PARSER = BytesParser(policy=email.policy.default)


def read_messages(directory: Path, *, to: str | None = None) -> list[EmailMessage]:
    """Every message a catch-all stored in `directory`, oldest first (newest last), parsed from its .eml file;
    with `to`, only those whose envelope names that recipient."""
    messages = []
    for path in sorted(directory.glob("*.eml")):
        with path.open("rb") as handle:
            message = cast(EmailMessage, _PARSER.parse(handle))
        if to is None or to in envelope_recipients(message):
            messages.append(message)
    return messages


def envelope_recipients(message: EmailMessage) -> list[str]:
    """The RCPT TO addresses the catch-all received the message for (To, Cc and Bcc alike)."""
    return [address.strip() for address in str(message.get("X-RcptTo", "")).split(",") if address.strip()]


def stack_mail_dir() -> Path:
    """The directory of the test stack's catch-all; skips the test when the stack runs none (EMAIL_URL is set
    to another server, or pytest was started without `make test`)."""
    directory = os.environ.get("AIOS_MAIL_CATCHER_DIR")
    if not directory:
        pytest.skip("no catch-all SMTP server in this test stack (EMAIL_URL points elsewhere, or not `make test`)")
    return Path(directory)


def caught_messages(*, to: str | None = None) -> list[EmailMessage]:
    """What the test stack's catch-all has received this session, newest last; with `to`, only the messages
    for that recipient."""
    return read_messages(stack_mail_dir(), to=to)


def wait_for_caught(*, to: str, count: int = 1, timeout: float = 15.0) -> list[EmailMessage]:
    """Poll the test stack's catch-all until it holds `count` messages for `to`; return them, newest last.

    For mail another process sends (a Celery worker, the web server). Fails after `timeout` seconds, naming
    what did arrive.
    """
    deadline = time.monotonic() + timeout
    while len(messages := caught_messages(to=to)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(messages)} of {count} messages for {to} reached the catch-all in {timeout:.0f} s; "
                f"it holds {len(caught_messages())} in all, in {stack_mail_dir()}"
            )
        time.sleep(0.1)
    return messages


@dataclass(frozen=True)
class PrivateSmtpServer:
    """A catch-all SMTP server on 127.0.0.1:`port` that keeps what it receives in `directory`."""

    host: str
    port: int
    directory: Path

    def messages(self, *, to: str | None = None) -> list[EmailMessage]:
        """What it has received so far, newest last; with `to`, only the messages for that recipient."""
        return read_messages(self.directory, to=to)


@contextmanager
def private_smtp_server(directory: Path | None = None) -> Iterator[PrivateSmtpServer]:
    """A catch-all SMTP server of the test's own, on a free port, for the duration of the block.

    The same handler as the stack's catch-all, run in a thread of the test process by aiosmtpd's Controller. Its
    messages go to `directory` (default: a temporary directory removed afterwards).
    """
    with tempfile.TemporaryDirectory(prefix="aios-smtp-") as scratch:
        target = directory or Path(scratch)
        controller = Controller(
            MailCatcher(target), hostname=LOOPBACK, port=free_port(), server_hostname=SERVER_NAME, **SMTP_OPTIONS
        )
        controller.start()
        try:
            yield PrivateSmtpServer(LOOPBACK, controller.port, target)
        finally:
            controller.stop()


def use_real_smtp(settings: Any, server: PrivateSmtpServer | None = None) -> None:
    """Send this test's mail over SMTP (pytest-django's `settings` fixture undoes it after the test): to
    `server` when given, else to the server EMAIL_URL names (in `make test`, the stack's catch-all)."""
    settings.EMAIL_BACKEND = SMTP_BACKEND
    if server is not None:
        settings.EMAIL_HOST = server.host
        settings.EMAIL_PORT = server.port
        settings.EMAIL_HOST_USER = ""
        settings.EMAIL_HOST_PASSWORD = ""
        settings.EMAIL_USE_TLS = False
        settings.EMAIL_USE_SSL = False
