"""`manage.py verify_audit`: check the audit streams, the anchors and the newest signed checkpoint.

Exits non-zero, naming each broken stream position, anchor or checkpoint file, when anything does not verify
(see apps.audit.selectors.audit_verify for what each check catches and what no check can).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.selectors import audit_verify


class Command(BaseCommand):
    help = "Verify the audit trail (streams, anchors, the newest signed checkpoint); exits non-zero when broken."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--checkpoint-dir",
            type=Path,
            help="Read checkpoints from this directory instead of AIOS_AUDIT_CHECKPOINT_DIR/<database>.",
        )
        parser.add_argument(
            "--require-checkpoint",
            action="store_true",
            help="Fail when there is no signed checkpoint at all (by default that is only a warning).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_verify(
            checkpoint_dir=options.get("checkpoint_dir"), require_checkpoint=options["require_checkpoint"]
        )
        for warning in report.warnings:
            self.stderr.write(self.style.WARNING(f"Warning: {warning}"))
        if not report.intact:
            lines = "\n".join(f"  - {problem}" for problem in report.problems)
            raise CommandError(
                f"AUDIT TRAIL BROKEN: {len(report.problems)} problem(s) found "
                f"({report.events_checked} events in {report.streams_checked} streams and "
                f"{report.anchors_checked} anchors read):\n{lines}"
            )
        anchors = f"{report.anchors_checked} anchors" + (
            f" (newest #{report.last_anchor[0]})" if report.last_anchor else ""
        )
        checkpoint = f"; checkpoint {report.checkpoint}" if report.checkpoint else "; no signed checkpoint yet"
        self.stdout.write(
            self.style.SUCCESS(
                f"Audit trail intact: {report.events_checked} events in {report.streams_checked} streams "
                f"({report.legacy_events} legacy), {anchors}{checkpoint}."
            )
        )
