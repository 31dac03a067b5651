"""`manage.py credentials_rotate`: re-encrypt every stored credential with the first configured key.

Rotation: put the new key first in AIOS_CREDENTIALS_KEYS and keep the old ones after it (every key decrypts),
run this command, then remove the old keys. It reports how many of each registered kind of secret (connection
secrets, model endpoint tokens, webhook signing secrets, ...: apps.core.secrets.encrypted_fields) it re-encrypted,
and exits non-zero when any could not be decrypted with the configured keys.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.connectors.services import credentials_rotate
from apps.core.secrets import encrypted_fields


class Command(BaseCommand):
    help = "Re-encrypt every stored secret (connections, endpoint tokens, webhooks) with the first credentials key."

    def handle(self, *args: Any, **options: Any) -> None:
        counts = credentials_rotate()
        parts = [f"{counts[column.name]} {column.description}(s)" for column in encrypted_fields()]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        self.stdout.write(f"Re-encrypted {listed} with the first key.")
        if counts["failed"]:
            raise CommandError(
                f"{counts['failed']} stored credential(s) could not be decrypted with any configured key and were "
                "left as they were: add the key they were saved with and run this again, or enter them again."
            )
