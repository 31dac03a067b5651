"""`manage.py verify_audit`: check the audit chain and report its first broken link.

Rows deleted from the end of the chain leave a shorter chain that still verifies; `--expect-head` (a hash
printed by an earlier run and kept outside the database) catches that too.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.models import AuditEvent
from apps.audit.selectors import audit_chain_verify


class Command(BaseCommand):
    help = "Verify the audit hash chain; exits non-zero at the first broken link."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--expect-head",
            metavar="HASH",
            help="A hash recorded earlier: the chain must still contain it (nothing was cut off its end).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_chain_verify()
        if not report.intact:
            raise CommandError(
                f"Audit chain broken at event #{report.broken_at}: {report.reason}. "
                f"{report.events_checked} events before it verified."
            )
        expected = options.get("expect_head")
        if expected and not AuditEvent.objects.filter(hash=expected).exists():
            raise CommandError(
                f"Audit chain verifies but does not contain the expected head {expected}: events were removed "
                "from its end."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Audit chain intact: {report.events_checked} events, last hash {report.last_hash}. "
                "Keep this hash outside the database and pass it as --expect-head next time."
            )
        )
