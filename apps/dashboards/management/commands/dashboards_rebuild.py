"""`manage.py dashboards_rebuild --since DATE [--until DATE]`: rebuild the KPI rollups of a range of days.

The periodic task keeps the rollups current by itself; run this after importing history, after changing how a figure
is computed, or to repair a range. Each day is replaced in one transaction, so the dashboards stay readable meanwhile
and running it twice changes nothing. Days the retention purge has cut (RollupFreeze) are kept as they stand.
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from apps.dashboards.models import RollupFreeze
from apps.dashboards.rollups import rollups_rebuild


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as error:
        raise CommandError(f"{value!r} is not a date like 2026-11-30.") from error


class Command(BaseCommand):
    help = "Rebuild the KPI rollups (workflows, queues, model endpoints) of every day from --since to --until."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", required=True, help="First day to rebuild, YYYY-MM-DD.")
        parser.add_argument("--until", help="Last day to rebuild, YYYY-MM-DD (default: today).")

    def handle(self, *args: Any, **options: Any) -> None:
        start = _day(options["since"])
        end = _day(options["until"]) if options["until"] else timezone.localdate()
        if end < start:
            raise CommandError("--until is before --since.")
        began = time.monotonic()
        days, runs = rollups_rebuild(start=start, end=end)
        self.stdout.write(
            self.style.SUCCESS(f"Rebuilt {days} days ({runs} runs read) in {time.monotonic() - began:.1f} s.")
        )
        freeze = RollupFreeze.objects.filter(frozen_through__gte=start).first()
        if freeze is not None:
            self.stdout.write(
                f"Days up to {freeze.frozen_through} were kept as they stand: the retention purge removed runs of "
                "them, and recounting would count only what is left (deploy/README.md, 'Retention')."
            )
