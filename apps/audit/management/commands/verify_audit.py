"""`manage.py verify_audit`: check the audit chain and report its first broken link."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.audit.selectors import audit_chain_verify


class Command(BaseCommand):
    help = "Verify the audit hash chain; exits non-zero at the first broken link."

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_chain_verify()
        if not report.intact:
            raise CommandError(
                f"Audit chain broken at event #{report.broken_at}: {report.reason}. "
                f"{report.events_checked} events before it verified."
            )
        self.stdout.write(
            self.style.SUCCESS(f"Audit chain intact: {report.events_checked} events, last hash {report.last_hash}.")
        )
