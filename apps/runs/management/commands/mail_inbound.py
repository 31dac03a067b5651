"""`manage.py mail_inbound --port 2525`: the inbound SMTP server for email triggers (apps/runs/inbound_mail.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.runs.inbound_mail import serve


class Command(BaseCommand):
    help = "Take mail for email triggers' addresses; each message starts a run (SMTP on 127.0.0.1 by default)."

    def add_arguments(self, parser: CommandParser) -> None:
        default_port = int(getattr(settings, "AIOS_INBOUND_SMTP_PORT", 0) or 2525)
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=default_port, help="Port (default AIOS_INBOUND_SMTP_PORT).")

    def handle(self, *args: Any, **options: Any) -> None:
        # aiosmtpd logs every command at INFO; warnings, errors and our own per-message line are enough.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        try:
            asyncio.run(serve(options["host"], options["port"]))
        except OSError as error:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {error}") from None
