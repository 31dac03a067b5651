"""The engine's Prometheus metrics, read at scrape time from the runs tables and the sweeper's figures in Redis
(see apps/core/telemetry/metrics.py for why nothing is counted in process memory).

Seven queries, each bounded by an index: runs not finished (`status`), runs of the recent window (the primary key
and `created_at`, at most AIOS_METRICS_SCAN_ROWS of the newest), step runs not finished (the step-run indexes that
lead with `state`), queued steps and their oldest (`step_run_queued_idx`), unrelayed outbox rows
(`outbox_unrelayed_idx`, partial), due timers (`timer_due_idx`, partial), and incidents (a small table).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import cast

from django.conf import settings
from django.db.models import Count, Min, Q, Subquery
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from apps.core.telemetry import store
from apps.runs.models import Incident, Outbox, Run, StepRun, Timer
from apps.steps.registry import step_type_get

logger = logging.getLogger(__name__)


ACTIVE_RUN_STATUSES = (Run.Status.PENDING, Run.Status.RUNNING)
ACTIVE_STEP_STATES = (StepRun.State.PENDING, StepRun.State.QUEUED, StepRun.State.RUNNING, StepRun.State.WAITING)


def _queue_of(step_type: str) -> str:
    try:
        return step_type_get(step_type).queue
    except Exception:  # a type this release no longer knows: its steps still count, under no queue
        return "unknown"


def _age_seconds(oldest: object, now: object) -> float:
    return max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0  # type: ignore[operator]


class EngineCollector(Collector):
    """Runs, steps, queues, the outbox, timers, incidents and the sweeper, as the database and Redis say now."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = timezone.now()
        window = settings.AIOS_METRICS_WINDOW_SECONDS
        since = now - timedelta(seconds=window)
        # Live work is counted exactly (few rows, found through the status and state indexes); history only over
        # the recent window and the newest AIOS_METRICS_SCAN_ROWS runs, so a scrape costs the same on a table of
        # a hundred million runs. Totals over all time are the dashboards' rollups' business.
        active = GaugeMetricFamily("aios_runs_active", "Runs not finished, by status.", labels=["status"])
        counted = dict(
            Run.objects.filter(status__in=ACTIVE_RUN_STATUSES).order_by().values_list("status").annotate(n=Count("id"))
        )
        for status in ACTIVE_RUN_STATUSES:
            active.add_metric([status], counted.get(status, 0))
        yield active
        newest = Subquery(Run.objects.order_by("-id").values("id")[:1])
        recent_runs = Run.objects.filter(id__gt=newest - settings.AIOS_METRICS_SCAN_ROWS, created_at__gte=since)
        recent = GaugeMetricFamily(
            "aios_runs_recent",
            "Runs created in the window (aios_metrics_window_seconds), by status now.",
            labels=["status"],
        )
        counted = dict(recent_runs.order_by().values_list("status").annotate(n=Count("id")))
        for value in Run.Status.values:
            recent.add_metric([value], counted.get(value, 0))
        yield recent

        steps = GaugeMetricFamily("aios_step_runs_active", "Step runs not finished, by state.", labels=["state"])
        counted = dict(
            StepRun.objects.filter(state__in=ACTIVE_STEP_STATES).order_by().values_list("state").annotate(n=Count("id"))
        )
        for state in ACTIVE_STEP_STATES:
            steps.add_metric([state], counted.get(state, 0))
        yield steps
        yield GaugeMetricFamily(
            "aios_metrics_window_seconds",
            "The window aios_runs_recent and the aios_inference_* gauges cover.",
            value=window,
        )

        depth = GaugeMetricFamily(
            "aios_queue_depth",
            "Steps queued for a worker and not yet claimed, by Celery queue and step type.",
            labels=["queue", "step_type"],
        )
        oldest = GaugeMetricFamily(
            "aios_queue_oldest_age_seconds",
            "Age of the oldest step queued and not yet claimed, by Celery queue (0 when none waits).",
            labels=["queue"],
        )
        oldest_by_queue: dict[str, float] = {}
        queued = (
            StepRun.objects.filter(state=StepRun.State.QUEUED)
            .order_by()
            .values_list("step_type")
            .annotate(n=Count("id"), oldest=Min("queued_at"))
        )
        for step_type, count, first in queued:
            queue = _queue_of(step_type)
            depth.add_metric([queue, step_type], count)
            oldest_by_queue[queue] = max(oldest_by_queue.get(queue, 0.0), _age_seconds(first, now))
        for queue, age in sorted(oldest_by_queue.items()):
            oldest.add_metric([queue], age)
        yield depth
        yield oldest

        outbox = GaugeMetricFamily(
            "aios_outbox_unrelayed", "Outbox rows committed and not yet sent to the broker, by queue.", labels=["queue"]
        )
        lag = GaugeMetricFamily(
            "aios_outbox_lag_seconds",
            "Age of the oldest outbox row not yet sent to the broker, by queue (the outbox lag; 0 when none).",
            labels=["queue"],
        )
        unrelayed = (
            Outbox.objects.filter(relayed_at__isnull=True)
            .order_by()
            .values_list("queue")
            .annotate(n=Count("id"), oldest=Min("created_at"))
        )
        for queue, count, first in unrelayed:
            outbox.add_metric([queue], count)
            lag.add_metric([queue], _age_seconds(first, now))
        yield outbox
        yield lag

        timers = Timer.objects.filter(fired_at__isnull=True, fire_at__lte=now).aggregate(
            n=Count("id"), oldest=Min("fire_at")
        )
        yield GaugeMetricFamily("aios_timers_due", "Timers due and not yet fired.", value=timers["n"])
        yield GaugeMetricFamily(
            "aios_timers_due_oldest_age_seconds",
            "How long the oldest due timer has been waiting for the sweeper (0 when none).",
            value=_age_seconds(timers["oldest"], now),
        )

        incidents = Incident.objects.aggregate(total=Count("id"), open=Count("id", filter=Q(resolved_at__isnull=True)))
        yield GaugeMetricFamily(
            "aios_incidents_open", "Incidents waiting for a person to resolve them.", value=incidents["open"]
        )
        yield CounterMetricFamily("aios_incidents", "Incidents ever opened.", value=incidents["total"])

        yield from self._sweeper()

    def _sweeper(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            figures = cast(dict[str, str], store.telemetry_redis().hgetall(store.SWEEPER_KEY))
        except RedisError:
            logger.warning("could not read the sweeper's figures from Redis", exc_info=True)
            return
        yield CounterMetricFamily(
            "aios_lease_takeovers",
            "Steps the sweeper took back from a worker whose lease expired (since Redis last started empty).",
            value=int(figures.get("lease_takeovers", 0)),
        )
        yield CounterMetricFamily(
            "aios_sweeps", "Sweeps completed (since Redis last started empty).", value=int(figures.get("sweeps", 0))
        )
        if "last_finished" in figures:
            finished = float(figures["last_finished"])
            yield GaugeMetricFamily(
                "aios_sweeper_last_duration_seconds",
                "How long the last sweep took.",
                value=float(figures.get("last_duration", 0)),
            )
            yield GaugeMetricFamily(
                "aios_sweeper_last_finished_timestamp_seconds",
                "When the last sweep finished (Unix time).",
                value=finished,
            )
            yield GaugeMetricFamily(
                "aios_sweeper_seconds_since_last_sweep",
                "Seconds since the last sweep finished (alert when it exceeds a few sweep intervals).",
                value=max(time.time() - finished, 0.0),
            )
