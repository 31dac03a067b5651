"""Log-scale duration histograms: integer arrays that add up, so percentiles merge across any range.

Bucket 0 holds durations under FLOOR_SECONDS (0.01 s, zero included); bucket i (1..BUCKETS-2) holds
[FLOOR·R^(i-1), FLOOR·R^i) with R = 2^(1/4); the last bucket holds everything from FLOOR·R^(BUCKETS-2) (about
175 days) up. A percentile is read as the geometric middle of the bucket holding the nearest-rank sample, so it lies
in the same bucket as the raw data's nearest-rank percentile: the error is at most a factor R^(1/2) ≈ 1.09 either
way (±9 %) for durations between 10 ms and 175 days. Arrays are stored trimmed after their last non-zero bucket;
missing buckets count as zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

FLOOR_SECONDS = 0.01
RATIO = 2**0.25
BUCKETS = 124
_LOG_RATIO = math.log(RATIO)


def bucket_of(seconds: float) -> int:
    """The index of the bucket that holds `seconds` (negative durations, from clock skew, count as zero)."""
    if seconds < FLOOR_SECONDS:
        return 0
    index = math.floor(math.log(seconds / FLOOR_SECONDS) / _LOG_RATIO) + 1
    # Float rounding at an exact edge may land one bucket low or high; settle it against the edges themselves.
    if index > 1 and seconds < lower_edge(index):
        index -= 1
    elif index < BUCKETS - 1 and seconds >= lower_edge(index + 1):
        index += 1
    return min(index, BUCKETS - 1)


def lower_edge(index: int) -> float:
    """The smallest duration bucket `index` holds (0 for bucket 0)."""
    return 0.0 if index == 0 else FLOOR_SECONDS * RATIO ** (index - 1)


def upper_edge(index: int) -> float:
    """The duration just above bucket `index` (infinite for the overflow bucket)."""
    return math.inf if index >= BUCKETS - 1 else FLOOR_SECONDS * RATIO**index


def representative(index: int) -> float:
    """The value a percentile reads from bucket `index`: its geometric middle (half the floor for bucket 0, the
    lower edge for the overflow bucket)."""
    if index == 0:
        return FLOOR_SECONDS / 2
    if index >= BUCKETS - 1:
        return lower_edge(index)
    return math.sqrt(lower_edge(index) * upper_edge(index))


def histogram_of(durations: Iterable[float]) -> list[int]:
    """The trimmed bucket array of `durations` (seconds)."""
    counts = [0] * BUCKETS
    for seconds in durations:
        counts[bucket_of(seconds)] += 1
    return trimmed(counts)


def trimmed(counts: Sequence[int]) -> list[int]:
    """`counts` without its trailing zeros (what the rollup tables store)."""
    end = len(counts)
    while end and not counts[end - 1]:
        end -= 1
    return list(counts[:end])


def merged(arrays: Iterable[Sequence[int] | None]) -> list[int]:
    """The element-wise sum of bucket arrays of any lengths."""
    total: list[int] = []
    for array in arrays:
        if not array:
            continue
        if len(array) > len(total):
            total.extend([0] * (len(array) - len(total)))
        for index, count in enumerate(array):
            total[index] += count
    return total


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The q-th percentile (0 < q ≤ 1) of the durations counted in `counts`, by nearest rank: the value of the
    bucket holding the ceil(q·n)-th smallest duration. None when the array is empty."""
    n = sum(counts)
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return representative(index)
    return representative(len(counts) - 1)  # unreachable: seen reaches n


def raw_percentile(durations: Sequence[float], q: float) -> float | None:
    """The nearest-rank q-th percentile of raw durations, the definition `percentile` approximates."""
    if not durations:
        return None
    ordered = sorted(durations)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]
