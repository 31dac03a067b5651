"""Prometheus metrics, read from the source of truth at scrape time.

Web, workers and beat are separate processes (often on separate machines), so counters kept in one process's
memory would each tell a part of the story. Instead, every scrape asks PostgreSQL and Redis a few cheap,
indexed questions through the collectors named in AIOS_METRICS_COLLECTORS (each app that owns the tables
provides its own: apps/runs/metrics.py for the engine, apps/inference/metrics.py for model calls); whichever web
process answers the scrape tells the whole deployment's truth. The serving process's own process metrics come
along.

Who may read them: a request with `Authorization: Bearer <AIOS_METRICS_TOKEN>` (a scraper), or a signed-in admin.
Everyone else gets 404, so the route's existence is not revealed.
"""

from __future__ import annotations

import hmac
import threading
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

# The role whose holders may read /metrics in a browser; the same name as apps.accounts.roles.ADMIN (core sits
# below accounts and cannot import it; tests/core/test_metrics.py checks they agree).
ADMIN_ROLE = "admin"

_registry: CollectorRegistry | None = None
_registry_lock = threading.Lock()


def registry() -> CollectorRegistry:
    """The process's registry: the configured collectors plus the process, platform and GC collectors."""
    global _registry
    with _registry_lock:
        if _registry is None:
            built = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=built)
            PlatformCollector(registry=built)
            GCCollector(registry=built)
            for path in settings.AIOS_METRICS_COLLECTORS:
                collector: Collector = import_string(path)()
                built.register(collector)
            _registry = built
        return _registry


def exposition() -> bytes:
    """The metrics in Prometheus' text format, collected now."""
    return generate_latest(registry())


def may_read_metrics(*, authorization: str, user: Any) -> bool:
    """A scraper's bearer token (compared in constant time), or a signed-in, active admin."""
    token = settings.AIOS_METRICS_TOKEN
    scheme, _, presented = authorization.partition(" ")
    if (
        token
        and scheme.lower() == "bearer"
        and presented
        and hmac.compare_digest(presented.strip().encode(), token.encode())
    ):
        return True
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    return bool(user.is_superuser or user.groups.filter(name=ADMIN_ROLE).exists())
