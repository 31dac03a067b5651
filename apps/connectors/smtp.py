"""Sending mail over SMTP for `email.send` and the connection test.

Everything here takes a connection's plain settings (`config`: host, port, security "none" | "starttls" | "ssl",
username, from_address) and its decrypted secrets (`secrets["password"]`), so it does not depend on how
connections are stored.

The host passes the outbound address policy (apps.core.http.address_refusal) and the session connects to exactly
the address it checked, while TLS verifies the certificate for the host's name. A password is never sent over an
unencrypted connection to anything but a loopback address.

`smtp_send` walks the SMTP transaction itself (MAIL, RCPT per recipient, DATA) instead of smtplib's `sendmail`,
to know where a failure happened: before the final "." of DATA nothing was delivered (a retry is safe); after
it, until the server's reply arrives, the server may have accepted the message (`SmtpError.uncertain`). RFC 5321
section 4.1.1.4: the message is the server's responsibility only once it answered 250 to the end of data, and a
server that lost the connection before answering discards the transaction.
"""

from __future__ import annotations

import contextlib
import email.policy
import email.utils
import ipaddress
import re
import smtplib
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from apps.core.exceptions import ApplicationError
from apps.core.http import Destinations, HostUnresolved, OutboundError, connection_address

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_PORTS = {"none": 25, "starttls": 587, "ssl": 465}
# Ports any SMTP connection may use; another needs the connection's allowlist (apps.core.http.port_refusal).
SUBMISSION_PORTS = frozenset({25, 465, 587})

# How the message is written on the wire: CRLF line ends, no line above 78 characters where it can be helped, and
# any non-ASCII content transfer-encoded (quoted-printable or base64), so a server without 8BITMIME takes it too.
WIRE_POLICY = email.policy.SMTP.clone(cte_type="7bit")


class SmtpError(ApplicationError):
    """A refused or failed SMTP exchange; `message` carries the server's code and reason, never a secret.

    `retryable`: the same message may go through later (a 4xx answer, an unreachable or dropped server before the
    end of data). `uncertain`: the end of data was sent and its answer never arrived, so the server may have taken
    the message.
    """

    def __init__(self, message: str, *, retryable: bool = False, uncertain: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.uncertain = uncertain


def _resolve(host: str, port: int, destinations: Destinations | None) -> str:
    """The one address to connect to (apps.core.http.connection_address: a public address on a submission
    port, or one the connection's administrator allowed); a name that does not resolve may resolve later
    (retryable), a refused address will not."""
    try:
        return connection_address(host, port, default_ports=SUBMISSION_PORTS, destinations=destinations)
    except HostUnresolved as error:
        raise SmtpError(error.message, retryable=True) from None
    except OutboundError as error:
        raise SmtpError(error.message) from None


class _PinnedSMTP(smtplib.SMTP):
    """Connects to the checked address; `_host` stays the name, which STARTTLS verifies the certificate for."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        self._pinned_address = address
        super().__init__(**kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._pinned_address, port), timeout, self.source_address)


class _PinnedSMTPSSL(smtplib.SMTP_SSL):
    """TLS from the first byte, to the checked address, verifying the certificate for the host's name."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        self._pinned_address = address
        super().__init__(**kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = socket.create_connection((self._pinned_address, port), timeout, self.source_address)
        return self.context.wrap_socket(raw, server_hostname=host)


def _reason(code: int, text: bytes | str) -> str:
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(reply.split())}".strip()


def _local_name(config: Mapping[str, Any]) -> str:
    # smtplib would ask socket.getfqdn(), a DNS lookup that can hang; the sender's domain is a fine EHLO name.
    domain = email.utils.parseaddr(str(config.get("from_address") or ""))[1].rpartition("@")[2].strip()
    return domain if re.fullmatch(r"[A-Za-z0-9.-]{1,253}", domain) else "localhost"


def smtp_open(
    config: Mapping[str, Any],
    secrets: Mapping[str, str],
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    destinations: Destinations | None = None,
) -> smtplib.SMTP:
    """A connected, greeted and (when the connection has a user name) signed-in session. Close it with `quit()`.
    `destinations`: the connection's allowlists (a private server or another port needs them). Raises SmtpError
    with the server's reply (or why the connection was refused)."""
    host = str(config.get("host") or "")
    security = str(config.get("security") or "starttls")
    if security not in DEFAULT_PORTS:
        raise SmtpError(f'Unknown security "{security}"; use none, starttls or ssl.')
    port = int(config.get("port") or 0) or DEFAULT_PORTS[security]
    address = _resolve(host, port, destinations)
    username = str(config.get("username") or "")
    password = secrets.get("password", "")
    if username and security == "none" and not ipaddress.ip_address(address).is_loopback:
        raise SmtpError(
            "The connection would send its password unencrypted; choose STARTTLS or SSL security for this server."
        )
    context = ssl.create_default_context()
    session: smtplib.SMTP
    try:
        if security == "ssl":
            session = _PinnedSMTPSSL(address, local_hostname=_local_name(config), timeout=timeout, context=context)
        else:
            session = _PinnedSMTP(address, local_hostname=_local_name(config), timeout=timeout)
        code, greeting = session.connect(host, port)
    except (OSError, smtplib.SMTPException) as error:
        raise SmtpError(f"Could not connect to {host}:{port}: {_error_text(error)}", retryable=True) from None
    if code != 220:
        session.close()
        raise SmtpError(f"{host}:{port} refused the connection: {_reason(code, greeting)}", retryable=400 <= code < 500)
    try:
        session.ehlo()
        if security == "starttls":
            if not session.has_extn("starttls"):
                raise SmtpError(f"{host}:{port} does not offer STARTTLS; choose SSL or (on a trusted network) none.")
            session.starttls(context=context)
            session.ehlo()
        if username:
            session.login(username, password)
    except smtplib.SMTPAuthenticationError as error:
        _close(session)
        raise SmtpError(f"{host}:{port} refused the sign-in: {_reason(error.smtp_code, error.smtp_error)}") from None
    except smtplib.SMTPResponseException as error:
        _close(session)
        raise SmtpError(
            f"{host}:{port} answered {_reason(error.smtp_code, error.smtp_error)}",
            retryable=400 <= error.smtp_code < 500,
        ) from None
    except SmtpError:
        _close(session)
        raise
    except (OSError, smtplib.SMTPException) as error:
        _close(session)
        raise SmtpError(f"{host}:{port}: {_error_text(error)}", retryable=True) from None
    return session


def _error_text(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not valid for this host ({error.verify_message})"
    if isinstance(error, TimeoutError | socket.timeout):
        return "no answer in time"
    text = getattr(error, "strerror", None) or str(error)
    return text.splitlines()[0] if text else type(error).__name__


def _close(session: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        session.close()


@dataclass
class SendResult:
    """Who the server took the message for (`accepted`) and who it refused at RCPT, with its reply (`refused`)."""

    accepted: list[str]
    refused: dict[str, str] = field(default_factory=dict)
    reply: str = ""


def smtp_send(session: smtplib.SMTP, message: EmailMessage, *, sender: str, recipients: Sequence[str]) -> SendResult:
    """One SMTP transaction: MAIL FROM `sender`, RCPT TO each of `recipients` (those refused are reported, the
    rest still get the message), DATA. Raises SmtpError when no recipient is accepted or the message is refused;
    `uncertain` only when the end of data was sent and no reply came."""
    try:
        code, text = session.mail(sender)
        if code != 250:
            raise SmtpError(f"The server refused the sender {sender}: {_reason(code, text)}", retryable=code < 500)
        accepted: list[str] = []
        refused: dict[str, str] = {}
        for recipient in recipients:
            code, text = session.rcpt(recipient)
            if code in (250, 251):
                accepted.append(recipient)
            else:
                refused[recipient] = _reason(code, text)
        if not accepted:
            session.rset()
            temporary = all(reply.startswith("4") for reply in refused.values())
            listed = "; ".join(f"{who}: {reply}" for who, reply in refused.items())
            raise SmtpError(f"The server refused every recipient ({listed}).", retryable=temporary)
        code, text = session.docmd("DATA")
        if code != 354:
            raise SmtpError(f"The server refused the message: {_reason(code, text)}", retryable=400 <= code < 500)
        body = _dot_stuffed(message.as_bytes(policy=WIRE_POLICY))
        session.send(body)
    except SmtpError:
        _close(session)
        raise
    except smtplib.SMTPServerDisconnected as error:
        raise SmtpError(
            f"The server closed the connection before the message was sent: {error}", retryable=True
        ) from None
    except (OSError, smtplib.SMTPException) as error:
        _close(session)
        # Before the end of data: the server drops an unfinished transaction, so nothing was delivered.
        raise SmtpError(
            f"Sending failed before the message was complete: {_error_text(error)}", retryable=True
        ) from None
    # The end of data: from here until the reply, the server may take the message without us knowing it.
    try:
        session.send(b".\r\n")
        code, text = session.getreply()
    except (OSError, smtplib.SMTPException) as error:
        _close(session)
        raise SmtpError(
            f"The message was sent but the server's answer was lost ({_error_text(error)}); it may have been "
            "delivered.",
            retryable=True,
            uncertain=True,
        ) from None
    if code != 250:
        raise SmtpError(f"The server refused the message: {_reason(code, text)}", retryable=400 <= code < 500)
    return SendResult(accepted=accepted, refused=refused, reply=_reason(code, text))


def _dot_stuffed(data: bytes) -> bytes:
    """The message as DATA carries it (RFC 5321 4.5.2): CRLF line ends, a leading "." doubled, ending in CRLF.
    The terminating "." line is sent separately, as the moment delivery becomes possible."""
    data = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def smtp_quit(session: smtplib.SMTP) -> None:
    """End the session politely; a server that already went away is fine."""
    try:
        session.quit()
    except (OSError, smtplib.SMTPException):
        _close(session)


def smtp_test(
    config: Mapping[str, Any], secrets: Mapping[str, str], *, destinations: Destinations | None = None
) -> str:
    """The connection test: connect, greet, secure and sign in as configured, then quit. Returns the server's
    greeting name; raises SmtpError with the server's reason."""
    session = smtp_open(config, secrets, timeout=15, destinations=destinations)
    try:
        name = (session.ehlo_resp or b"").decode("utf-8", "replace").splitlines()
        return name[0].strip() if name else str(config.get("host") or "")
    finally:
        smtp_quit(session)
