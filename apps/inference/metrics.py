"""Model-call metrics for Prometheus, read at scrape time (see apps/core/telemetry/metrics.py for why).

From `InferenceCall`, over a recent window (AIOS_METRICS_INFERENCE_WINDOW_SECONDS, an hour by default): calls by
endpoint and status, prompt and generated tokens, and time to first token and latency as gauge histograms (a
window's distribution, which may shrink as calls leave the window, unlike a counter's). The scan is bounded by
the primary key (the newest AIOS_METRICS_INFERENCE_SCAN_ROWS records at most, within the window), so a scrape
costs the same on a table of a billion calls; `aios_inference_window_truncated` says when the bound cut the window
short. From Redis: calls in flight per endpoint (the in-flight limit's own leases, apps/inference/limits.py) and
failed calls by kind (counters the gateway bumps when a call fails).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Iterator
from datetime import timedelta
from typing import cast

from django.conf import settings
from django.db.models import Count, Q, Subquery, Sum
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


def _bucket_counts(prefix: str, field: str, buckets: tuple[float, ...]) -> dict[str, Count]:
    ok = Q(status=InferenceCall.Status.OK, **{f"{field}__isnull": False})
    return {
        f"{prefix}_{index}": Count("id", filter=ok & Q(**{f"{field}__lte": bound * 1000}))
        for index, bound in enumerate(buckets)
    }


class InferenceCollector(Collector):
    """Model calls of the recent window by endpoint, plus in-flight calls and failures by kind."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | GaugeHistogramMetricFamily]:
        window = settings.AIOS_METRICS_INFERENCE_WINDOW_SECONDS
        scan = settings.AIOS_METRICS_INFERENCE_SCAN_ROWS
        since = timezone.now() - timedelta(seconds=window)
        newest = Subquery(InferenceCall.objects.order_by("-id").values("id")[:1])
        ok_ttft = Q(status=InferenceCall.Status.OK, ttft_ms__isnull=False)
        ok = Q(status=InferenceCall.Status.OK)
        rows = list(
            InferenceCall.objects.filter(id__gt=newest - scan, created_at__gte=since)
            .order_by()
            .values("endpoint_name", "status")
            .annotate(
                calls=Count("id"),
                prompt=Sum("prompt_tokens"),
                generated=Sum("generated_tokens"),
                ttft_count=Count("id", filter=ok_ttft),
                ttft_sum=Sum("ttft_ms", filter=ok_ttft),
                latency_count=Count("id", filter=ok),
                latency_sum=Sum("latency_ms", filter=ok),
                scanned_oldest_id=Count("id", filter=Q(id=newest - scan + 1)),
                **_bucket_counts("ttft", "ttft_ms", TTFT_BUCKETS),
                **_bucket_counts("latency", "latency_ms", LATENCY_BUCKETS),
            )
        )
        yield GaugeMetricFamily(
            "aios_inference_window_seconds", "The window the aios_inference_* gauges cover, in seconds.", value=window
        )
        # The bound cut the window short when the oldest row it allowed is itself inside the window.
        yield GaugeMetricFamily(
            "aios_inference_window_truncated",
            "1 when more calls fell in the window than a scrape reads (AIOS_METRICS_INFERENCE_SCAN_ROWS): the "
            "window's gauges then cover only the newest calls.",
            value=1 if any(row["scanned_oldest_id"] for row in rows) else 0,
        )
        calls = GaugeMetricFamily(
            "aios_inference_calls", "Model calls in the window, by endpoint and status.", labels=["endpoint", "status"]
        )
        prompt = GaugeMetricFamily(
            "aios_inference_prompt_tokens", "Prompt tokens sent in the window, by endpoint.", labels=["endpoint"]
        )
        generated = GaugeMetricFamily(
            "aios_inference_generated_tokens", "Tokens generated in the window, by endpoint.", labels=["endpoint"]
        )
        per_endpoint: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for row in rows:
            calls.add_metric([row["endpoint_name"], row["status"]], row["calls"])
            totals = per_endpoint[row["endpoint_name"]]
            for key, value in row.items():
                if key not in ("endpoint_name", "status") and value is not None:
                    totals[key] += float(value)
        ttft = GaugeHistogramMetricFamily(
            "aios_inference_ttft_seconds",
            "Time to first token of the window's successful calls, by endpoint.",
            labels=["endpoint"],
        )
        latency = GaugeHistogramMetricFamily(
            "aios_inference_latency_seconds",
            "Latency of the window's successful calls (request to last token), by endpoint.",
            labels=["endpoint"],
        )
        for endpoint, totals in sorted(per_endpoint.items()):
            prompt.add_metric([endpoint], totals["prompt"])
            generated.add_metric([endpoint], totals["generated"])
            for family, prefix, buckets in ((ttft, "ttft", TTFT_BUCKETS), (latency, "latency", LATENCY_BUCKETS)):
                counts = [(f"{bound:g}", totals[f"{prefix}_{index}"]) for index, bound in enumerate(buckets)]
                family.add_metric(
                    [endpoint],
                    [*counts, ("+Inf", totals[f"{prefix}_count"])],
                    gsum_value=totals[f"{prefix}_sum"] / 1000,
                )
        yield calls
        yield prompt
        yield generated
        yield ttft
        yield latency
        yield from self._from_redis(set(per_endpoint))

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
        for field, count in sorted(failures.items()):
            endpoint, _, kind = field.partition(store.FIELD_SEPARATOR)
            counter.add_metric([endpoint, kind], int(count))
        yield counter
