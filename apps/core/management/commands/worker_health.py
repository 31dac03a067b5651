"""`manage.py worker_health`: a container probe for a Celery worker (exit 0 healthy, 1 not).

Checks that a worker on this host (or the one named by --node) wrote its heartbeat recently, and that the
database, Redis and the broker answer, as the worker needs them. One line per check, so a failing probe's output
in `kubectl describe pod` or `docker inspect` names what failed.
"""

from __future__ import annotations

import socket
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.core.telemetry import health


class Command(BaseCommand):
    help = "Exit 0 when a worker's heartbeat is fresh and the database, Redis and broker answer; else exit 1."

    # The probe must not fail because a migration is pending: a worker on the old code still works.
    requires_migrations_checks = False
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--node",
            default=f"*@{socket.gethostname()}",
            help="The worker's Celery node name, or a glob (default: any worker on this host, *@<hostname>).",
        )
        parser.add_argument(
            "--max-age",
            type=float,
            default=None,
            help="Seconds a heartbeat stays fresh (default: three AIOS_WORKER_HEARTBEAT_SECONDS).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        max_age = options["max_age"] or settings.AIOS_WORKER_HEARTBEAT_SECONDS * 3
        results = [health.heartbeat_check(options["node"], max_age_seconds=max_age), *health.readiness()]
        for result in results:
            state = "ok" if result.ok else f"FAILED ({result.error})"
            self.stdout.write(f"{result.name}: {state} in {result.latency_ms:.1f} ms")
        if not all(result.ok for result in results):
            raise SystemExit(1)
