"""`manage.py credentials_rotate`: re-encrypt every stored credential with the first configured key.

Rotation: put the new key first in AIOS_CREDENTIALS_KEYS and keep the old ones after it (every key decrypts),
run this command, then remove the old keys. It reports how many connection secrets and model endpoint tokens it
re-encrypted, and exits non-zero when any could not be decrypted with the configured keys.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.connectors.services import credentials_rotate


class Command(BaseCommand):
    help = "Re-encrypt every stored secret (connections, model endpoint tokens) with the first credentials key."

    def handle(self, *args: Any, **options: Any) -> None:
        counts = credentials_rotate()
        self.stdout.write(
            f"Re-encrypted {counts['connections']} connection secret(s) and "
            f"{counts['model_endpoints']} model endpoint token(s) with the first key."
        )
        if counts["failed"]:
            raise CommandError(
                f"{counts['failed']} stored credential(s) could not be decrypted with any configured key and were "
                "left as they were: add the key they were saved with and run this again, or enter them again."
            )
