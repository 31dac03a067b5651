"""The product's inbound SMTP server: mail to an email trigger's address starts a run.

    python manage.py mail_inbound --port 2525

It accepts mail only for `<token>@<AIOS_INBOUND_MAIL_DOMAIN>` addresses of email triggers (anything else: 550 at
RCPT, so nobody can use it as a relay or a drop box), one trigger per message (a second recipient gets 452 and the
sending server retries it in a transaction of its own), and at most MAIL_MAX_BYTES (552 above). The reply to DATA
comes only after the firing committed (apps.runs.triggers.email_receive): a crash before that leaves the sender
without a 250, so it retries, and the Message-ID makes the retry the same run. Database work runs in a thread,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from asgiref.sync import sync_to_async
from django.db import close_old_connections

from apps.runs.triggers import MAIL_MAX_BYTES, email_receive, email_trigger_for_address

logger = logging.getLogger(__name__)

IDENT = "AIOS inbound mail (email triggers)"
# Fixed, because without one aiosmtpd asks socket.getfqdn(), a DNS lookup that can hang on a machine without network.
SERVER_NAME = "localhost"


def _rcpt_answer(address: str) -> tuple[str, int | None]:
    """(reply, trigger id): 250 for an enabled email trigger's address, 550 otherwise."""
    close_old_connections()
    trigger = email_trigger_for_address(address)
    if trigger is None:
        return "550 5.1.1 No such address here", None
    if not trigger.enabled:
        return "550 5.2.1 This address is paused", None
    return "250 OK", trigger.pk


def _receive(trigger_id: int, raw: bytes, mail_from: str) -> str:
    close_old_connections()
    return email_receive(trigger_id=trigger_id, raw=raw, mail_from=mail_from).line


class InboundMailHandler:
    """aiosmtpd handler: RCPT checks the address against email triggers; DATA fires the trigger and answers after
    the commit. `session`'s trigger id rides on the envelope (aiosmtpd keeps one envelope per transaction)."""

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if getattr(envelope, "trigger_id", None) is not None:
            return "452 4.5.3 One trigger address per message; send the others separately"
        answer, trigger_id = await sync_to_async(_rcpt_answer, thread_sensitive=False)(address)
        if trigger_id is not None:
            envelope.trigger_id = trigger_id  # type: ignore[attr-defined]
            envelope.rcpt_tos.append(address)
        return answer

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        trigger_id = getattr(envelope, "trigger_id", None)
        if trigger_id is None:
            return "554 5.5.1 No valid recipient"
        raw = envelope.original_content or b""
        try:
            answer = await sync_to_async(_receive, thread_sensitive=False)(trigger_id, raw, envelope.mail_from or "")
        except Exception:  # the database is away, a bug: the sender keeps the mail and tries again later
            logger.exception("inbound mail for trigger %s failed", trigger_id)
            return "451 4.3.0 Could not take the message now; try again later"
        logger.info("mail for trigger %s from %s: %s", trigger_id, envelope.mail_from, answer)
        return answer


def smtp_factory(loop: asyncio.AbstractEventLoop | None = None) -> SMTP:
    """One SMTP protocol instance for a connection."""
    options: dict[str, Any] = {
        "hostname": SERVER_NAME,
        "ident": IDENT,
        "data_size_limit": MAIL_MAX_BYTES,
        "decode_data": False,
        "enable_SMTPUTF8": True,
    }
    if loop is not None:
        options["loop"] = loop
    return SMTP(InboundMailHandler(), **options)


async def serve(host: str, port: int, *, ready: asyncio.Event | None = None) -> None:
    """Take mail on host:port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: smtp_factory(loop), host=host, port=port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"Taking mail for email triggers on {host}:{port}", flush=True)
    if ready is not None:
        ready.set()
    await stop.wait()
    server.close()
    await server.wait_closed()
