"""Latency summaries: percentiles by linear interpolation (numpy's default, the usual definition),
so p50 of an even count is the mean of the two middle samples and results do not depend on the
order in which samples arrived."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    ordered = sorted(float(v) for v in values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values_ms: Sequence[float]) -> dict[str, float | int]:
    """``{"n", "mean", "std", "min", "p50", "p90", "p99", "max"}`` of a sample in milliseconds.

    ``std`` is the sample standard deviation (n-1); 0 for a single sample.
    """
    if not values_ms:
        raise ValueError("cannot summarize an empty sample: no request or iteration completed")
    values = [float(v) for v in values_ms]
    count = len(values)
    mean = sum(values) / count
    variance = sum((v - mean) ** 2 for v in values) / (count - 1) if count > 1 else 0.0
    summary: dict[str, float | int] = {"n": count, "mean": mean, "std": math.sqrt(variance), "min": min(values)}
    summary.update({f"p{q}": percentile(values, q) for q in PERCENTILES})
    summary["max"] = max(values)
    return summary


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator
