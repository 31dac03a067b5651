"""The catch-all SMTP server of the embedded stack: every message is accepted and kept as a file, none is delivered.

    python -m deploy.devstack.mailcatcher --port 8025 --directory .data/mail

It listens on 127.0.0.1 only, accepts any sender and any recipient, and writes each message as it arrived on the
wire to `<directory>/<UTC time>-<sequence>.eml`, so the names sort in arrival order and a mail client or
`less` opens them. The envelope (the peer, MAIL FROM and every RCPT TO, Bcc recipients included) is prepended
as `X-Peer`, `X-MailFrom` and `X-RcptTo` header lines. There is no relay: nothing here opens a connection.

Whatever a client sends, the server answers and carries on: 8-bit and binary content is stored byte for byte, an
unknown command gets a 500, and a line longer than SMTP's 1000 octets (RFC 5321 4.5.3.1.6) is refused with a
500 as strict relays refuse it, so a message that a real relay would bounce does not look fine here.

The handler is also what tests use for a private server of their own (tests/support/smtp.py).
"""

from __future__ import annotations

import argparse
import asyncio
import email.parser
import email.policy
import itertools
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from .config import LOOPBACK

IDENT = "AIOS mail catcher (keeps every message, delivers none)"
# The name in the greeting and the EHLO reply. Fixed, because without one aiosmtpd asks socket.getfqdn(), a DNS
# lookup that can hang on a machine without network.
SERVER_NAME = "localhost"

# The SMTP protocol's other keyword arguments, shared by this process and the tests' private servers.
SMTP_OPTIONS: dict[str, Any] = {
    "ident": IDENT,
    "decode_data": False,  # keep the bytes as sent: an 8-bit or broken message is stored, not refused
    "enable_SMTPUTF8": True,
}


def _header_value(text: str) -> str:
    # Envelope addresses come from single command lines, so they hold no line break; be sure anyway, since a
    # CR or LF here would let a client write headers of its choosing into the stored file.
    return text.replace("\r", " ").replace("\n", " ")


def _subject(content: bytes) -> str:
    """The message's subject for the log line; never raises (the message is already on disk by then)."""
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(content)
        return str(headers.get("subject", "")).strip() or "(no subject)"
    except Exception:  # any header a parser chokes on: the log line is a courtesy, the file is what counts
        return "(unreadable subject)"


class MailCatcher:
    """aiosmtpd handler: writes every message to `directory` and answers 250; refuses nothing, relays nothing.

    A message is written to a hidden temporary name and then linked to its final name, so whoever lists
    `*.eml` never reads half a file; the 250 reply follows the link, so a sender that got its reply finds its
    message in place.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sequence = itertools.count(1)
        self._lock = threading.Lock()

    def _next_name(self) -> str:
        with self._lock:
            number = next(self._sequence)
        return f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}-{number:06d}.eml"

    def save(self, envelope: Envelope, peer: object) -> Path:
        """Write one message with its envelope lines; return its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if isinstance(peer, tuple) and len(peer) >= 2:
            peer = f"{peer[0]}:{peer[1]}"
        lines = [
            f"X-Peer: {_header_value(str(peer))}",
            f"X-MailFrom: {_header_value(envelope.mail_from or '')}",
            f"X-RcptTo: {_header_value(', '.join(envelope.rcpt_tos))}",
        ]
        envelope_lines = "".join(f"{line}\r\n" for line in lines).encode("utf-8")
        content = envelope.original_content or b""
        while True:
            name = self._next_name()
            temporary = self.directory / f".{name}.part"
            temporary.write_bytes(envelope_lines + content)
            try:
                # link() refuses an existing name, unlike rename(): two messages never share a file.
                os.link(temporary, self.directory / name)
            except FileExistsError:
                continue
            finally:
                temporary.unlink(missing_ok=True)
            return self.directory / name

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # A blocking write on the event loop: a developer's or a test's mail is small and rare, and the reply
        # has to wait for the file anyway.
        try:
            path = self.save(envelope, session.peer)
        except OSError as exc:
            print(f"could not store a message: {exc}", file=sys.stderr, flush=True)
            return "451 Requested action aborted: error in processing"
        recipients = ", ".join(envelope.rcpt_tos)
        subject = _subject(envelope.original_content or b"")
        print(f"caught {subject!r} for {recipients} -> {path.name}", flush=True)
        return "250 OK: caught, not delivered"


async def serve(port: int, directory: Path) -> None:
    """Catch mail on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    handler = MailCatcher(directory)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=SERVER_NAME, loop=loop, **SMTP_OPTIONS), host=LOOPBACK, port=port
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"Catching mail on {LOOPBACK}:{port} into {directory}; nothing is delivered.", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.devstack.mailcatcher",
        description="Accept every message on 127.0.0.1 and keep it as an .eml file; deliver nothing.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", type=Path, required=True)
    args = parser.parse_args(argv)
    # aiosmtpd logs every connection, command and disconnect at INFO (the stack's readiness probe alone would
    # write a few lines a second while it starts); warnings and errors still reach the log.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    args.directory.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(serve(args.port, args.directory))
    except OSError as exc:
        print(f"cannot listen on {LOOPBACK}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
