"""Prometheus metrics under TGI's names, so dashboards and alerts built for TGI read the dev server too."""

from __future__ import annotations

from collections import defaultdict

_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TOKEN_BUCKETS = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0)

HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "tgi_request_duration": ("End-to-end request duration in seconds", _DURATION_BUCKETS),
    "tgi_request_validation_duration": ("Request validation duration in seconds", _DURATION_BUCKETS),
    "tgi_request_queue_duration": ("Time spent queued in seconds", _DURATION_BUCKETS),
    "tgi_request_inference_duration": ("Inference duration in seconds", _DURATION_BUCKETS),
    "tgi_request_mean_time_per_token_duration": ("Mean time per generated token in seconds", _DURATION_BUCKETS),
    "tgi_request_generated_tokens": ("Generated tokens per request", _TOKEN_BUCKETS),
    "tgi_request_input_length": ("Input tokens per request", _TOKEN_BUCKETS),
    "tgi_request_max_new_tokens": ("max_new_tokens per request", _TOKEN_BUCKETS),
}


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1


class Metrics:
    """In-process registry; only touched from the event loop thread, so no locking."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = defaultdict(float)
        self.failures: dict[str, float] = defaultdict(float)
        self.histograms = {name: _Histogram(buckets) for name, (_, buckets) in HISTOGRAMS.items()}
        self.embed_counters: dict[str, float] = defaultdict(float)

    def count(self, name: str, amount: float = 1.0) -> None:
        self.counters[name] += amount

    def fail(self, label: str) -> None:
        self.failures[label] += 1

    def observe(self, name: str, value: float) -> None:
        self.histograms[name].observe(value)

    def render(self, *, queue_size: int, batch_size: int, batch_tokens: int) -> str:
        """Prometheus text exposition format 0.0.4, with the batcher's gauges as TGI names them.

        `queue_size`: admitted requests waiting for a batch slot; `batch_size`: sequences in the batch
        (prefilling or decoding); `batch_tokens`: their token budgets (input + max_new_tokens) summed.
        """
        lines: list[str] = []
        for name in ("tgi_request_count", "tgi_request_success"):
            lines += [f"# TYPE {name} counter", f"{name} {self.counters[name]:g}"]
        lines.append("# TYPE tgi_request_failure counter")
        for label in sorted(self.failures) or ["validation"]:
            lines.append(f'tgi_request_failure{{err="{label}"}} {self.failures[label]:g}')
        for name, (help_text, _) in HISTOGRAMS.items():
            histogram = self.histograms[name]
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for bound, bucket_count in zip(histogram.buckets, histogram.counts, strict=True):
                lines.append(f'{name}_bucket{{le="{bound:g}"}} {bucket_count}')
            lines.append(f'{name}_bucket{{le="+Inf"}} {histogram.count}')
            lines.append(f"{name}_sum {histogram.total:g}")
            lines.append(f"{name}_count {histogram.count}")
        lines += ["# TYPE tgi_queue_size gauge", f"tgi_queue_size {queue_size}"]
        lines += ["# TYPE tgi_batch_current_size gauge", f"tgi_batch_current_size {batch_size}"]
        lines += ["# TYPE tgi_batch_current_max_tokens gauge", f"tgi_batch_current_max_tokens {batch_tokens}"]
        for name in ("te_request_count", "te_request_success", "te_request_failure"):
            lines += [f"# TYPE {name} counter", f"{name} {self.embed_counters[name]:g}"]
        return "\n".join(lines) + "\n"
