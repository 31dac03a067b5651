"""Model-call metrics for Prometheus, read at scrape time (see apps/core/telemetry/metrics.py for why).

From `InferenceCall`, over a recent window (AIOS_METRICS_WINDOW_SECONDS, an hour by default): calls by
endpoint and status, prompt and generated tokens, and time to first token and latency as gauge histograms (a
window's distribution, which may shrink as calls leave the window, unlike a counter's). The scan is bounded by
the primary key (the newest AIOS_METRICS_SCAN_ROWS records at most, within the window), so a scrape
costs the same on a table of a billion calls; `aios_inference_window_truncated` says when the bound cut the window
short. From Redis: calls in flight per endpoint (the in-flight limit's own leases, apps/inference/limits.py) and
failed calls by kind (counters the gateway bumps when a call fails).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import cast

from django.conf import settings
from django.db import connection
from django.utils import timezone
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from apps.core.telemetry import store
from apps.inference import errors, limits
from apps.inference.models import InferenceCall, ModelEndpoint

logger = logging.getLogger(__name__)

# Upper bounds, in seconds. Time to first token sits well under a second when a server is healthy; whole calls
# run from a fraction of a second to minutes for long generations.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# What kind of failure each error is, as the metrics and the operations guide name it.
ERROR_KINDS: tuple[tuple[type[errors.InferenceError], str], ...] = (
    (errors.InferenceTimeoutError, "timeout"),
    (errors.InferenceOverloadedError, "overloaded"),
    (errors.InferenceUnavailableError, "unavailable"),
    (errors.InferenceConnectionError, "connection"),
    (errors.InferenceGenerationError, "generation"),
    (errors.InferenceValidationError, "validation"),
    (errors.InferenceAuthenticationError, "authentication"),
)


def error_kind(error: BaseException) -> str:
    """The kind of a failed model call: timeout, overloaded, unavailable, connection, generation, validation,
    authentication, or the error's class name for the rest (a budget refusal, a missing recording)."""
    for cls, kind in ERROR_KINDS:
        if isinstance(error, cls):
            return kind
    return type(error).__name__


async def error_count(endpoint_name: str, error: BaseException) -> None:
    """Count one failed call of `endpoint_name` by kind, in Redis (shared by every worker process). Best effort:
    a count that cannot be written is logged, and the call's own failure is what the step reports."""
    field = f"{endpoint_name}{store.FIELD_SEPARATOR}{error_kind(error)}"
    try:
        await cast(Awaitable[int], limits._redis().hincrby(store.INFERENCE_ERRORS_KEY, field, 1))
    except RedisError:
        logger.warning("could not count a failed call of %s", endpoint_name, exc_info=True)


# One pass over the window: calls grouped by endpoint, status and the histogram bucket of their time to first token
# and latency. width_bucket() counts the thresholds at or below its operand; given the negated bounds, it counts
# the bounds at or above the call's time, which is what Prometheus' inclusive `le` buckets need (a call of exactly
# 100 ms counts under le="0.1").
_WINDOW_SQL = """
WITH bound AS (SELECT coalesce(max(id), 0) - %(scan)s AS low FROM inference_inferencecall)
SELECT endpoint_name, status,
       width_bucket(-ttft_ms, %(ttft)s::float8[]), width_bucket(-latency_ms, %(latency)s::float8[]),
       count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(generated_tokens), 0),
       coalesce(sum(ttft_ms), 0), coalesce(sum(latency_ms), 0), bool_or(id = (SELECT low FROM bound) + 1)
FROM inference_inferencecall
WHERE id > (SELECT low FROM bound) AND created_at >= %(since)s
GROUP BY 1, 2, 3, 4
"""


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[float] = field(default_factory=list)
    total: float = 0.0
    seconds: float = 0.0

    def add(self, at_or_above: int, count: int, milliseconds: float) -> None:
        """`count` calls whose time is at or below the `at_or_above` largest bounds, taking `milliseconds`."""
        if not self.counts:
            self.counts = [0.0] * len(self.bounds)
        for index in range(len(self.bounds) - at_or_above, len(self.bounds)):
            self.counts[index] += count
        self.total += count
        self.seconds += milliseconds / 1000

    def buckets(self) -> list[tuple[str, float]]:
        counts = self.counts or [0.0] * len(self.bounds)
        return [
            *((f"{bound:g}", count) for bound, count in zip(self.bounds, counts, strict=True)),
            ("+Inf", self.total),
        ]


def _negated_milliseconds(bounds: tuple[float, ...]) -> list[float]:
    return sorted(-bound * 1000 for bound in bounds)


class InferenceCollector(Collector):
    """Model calls of the recent window by endpoint, plus in-flight calls and failures by kind."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | GaugeHistogramMetricFamily]:
        scan = settings.AIOS_METRICS_SCAN_ROWS
        since = timezone.now() - timedelta(seconds=settings.AIOS_METRICS_WINDOW_SECONDS)
        with connection.cursor() as cursor:
            cursor.execute(
                _WINDOW_SQL,
                {
                    "scan": scan,
                    "since": since,
                    "ttft": _negated_milliseconds(TTFT_BUCKETS),
                    "latency": _negated_milliseconds(LATENCY_BUCKETS),
                },
            )
            rows = cursor.fetchall()
        calls: dict[tuple[str, str], int] = defaultdict(int)
        prompt: dict[str, int] = defaultdict(int)
        generated: dict[str, int] = defaultdict(int)
        ttft: dict[str, _Histogram] = {}
        latency: dict[str, _Histogram] = {}
        truncated = False
        scanned = 0
        for (
            endpoint,
            status,
            ttft_ge,
            latency_ge,
            count,
            prompt_sum,
            generated_sum,
            ttft_sum,
            latency_sum,
            edge,
        ) in rows:
            calls[(endpoint, status)] += count
            prompt[endpoint] += prompt_sum
            generated[endpoint] += generated_sum
            truncated = truncated or bool(edge)
            scanned += count
            ttft.setdefault(endpoint, _Histogram(TTFT_BUCKETS))
            latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS))
            if status != InferenceCall.Status.OK:  # failed calls have no timings; replayed ones were not made now
                continue
            if ttft_ge is not None:
                ttft[endpoint].add(ttft_ge, count, ttft_sum)
            latency[endpoint].add(latency_ge, count, latency_sum)
        yield GaugeMetricFamily(
            "aios_inference_window_truncated",
            "1 when more calls fell in the window than a scrape reads (AIOS_METRICS_SCAN_ROWS): the window's "
            "gauges then cover only the newest calls.",
            value=1 if truncated or scanned >= scan else 0,
        )
        family = GaugeMetricFamily(
            "aios_inference_calls", "Model calls in the window, by endpoint and status.", labels=["endpoint", "status"]
        )
        for (endpoint, status), count in sorted(calls.items()):
            family.add_metric([endpoint, status], count)
        yield family
        for name, help_text, values in (
            ("aios_inference_prompt_tokens", "Prompt tokens sent in the window, by endpoint.", prompt),
            ("aios_inference_generated_tokens", "Tokens generated in the window, by endpoint.", generated),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["endpoint"])
            for endpoint, total in sorted(values.items()):
                family.add_metric([endpoint], total)
            yield family
        for name, help_text, histograms in (
            ("aios_inference_ttft_seconds", "Time to first token of the window's successful calls.", ttft),
            (
                "aios_inference_latency_seconds",
                "Latency (request to last token) of the window's successful calls.",
                latency,
            ),
        ):
            histogram_family = GaugeHistogramMetricFamily(name, f"{help_text} By endpoint.", labels=["endpoint"])
            for endpoint, histogram in sorted(histograms.items()):
                histogram_family.add_metric([endpoint], histogram.buckets(), gsum_value=histogram.seconds)
            yield histogram_family
        yield from self._from_redis({endpoint for endpoint, _ in calls})

    def _from_redis(self, seen: set[str]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        names = sorted(seen | set(ModelEndpoint.objects.values_list("name", flat=True)) | {"default"})
        try:
            client = store.telemetry_redis()
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.eval(limits._COUNT, 1, limits._key(name))
            pipe.hgetall(store.INFERENCE_ERRORS_KEY)
            *in_flight, failures = pipe.execute()
        except RedisError:
            logger.warning("could not read in-flight calls and failure counts from Redis", exc_info=True)
            return
        gauge = GaugeMetricFamily(
            "aios_inference_in_flight",
            "Model calls in flight now, by endpoint (across every worker process).",
            labels=["endpoint"],
        )
        for name, count in zip(names, in_flight, strict=True):
            gauge.add_metric([name], int(count))
        yield gauge
        counter = CounterMetricFamily(
            "aios_inference_errors",
            "Failed model calls by endpoint and kind (since Redis last started empty).",
            labels=["endpoint", "kind"],
        )
        for name, count in sorted(failures.items()):
            endpoint, _, kind = name.partition(store.FIELD_SEPARATOR)
            counter.add_metric([endpoint, kind], int(count))
        yield counter
