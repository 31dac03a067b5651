"""`manage.py audit_checkpoint`: anchor the stream heads and write a signed checkpoint now.

The beat schedule does the same every AIOS_AUDIT_CHECKPOINT_SECONDS; run this before a backup, a migration or
an audit, or with `--public-key` to hand an auditor what they need to check checkpoints independently.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.audit.selectors import audit_public_key
from apps.audit.services import audit_checkpoint_write, checkpoint_directory


class Command(BaseCommand):
    help = "Anchor the audit streams and write a signed checkpoint of the newest anchor outside the database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--public-key", action="store_true", help="Print the checkpoint key's public half and id, and stop."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["public_key"]:
            self.stdout.write(json.dumps(audit_public_key(), indent=2))
            return
        path = audit_checkpoint_write()
        if path is None:
            self.stdout.write(f"Nothing new to checkpoint (checkpoints are in {checkpoint_directory()}).")
            return
        self.stdout.write(self.style.SUCCESS(f"Wrote {path}."))
