"""Statistics of measurements: over seeds (mean ± std and Student-t 95 % confidence intervals, for
single rows and for paired differences) and over timings (percentiles, ratios).

A paired difference (two rows trained with the same seeds, so same init and data order) removes
the seed's own variance, which is what lets a handful of seeds resolve effects smaller than the
seed-to-seed spread. Percentiles interpolate linearly (numpy's default, the usual definition), so
p50 of an even count is the mean of the two middle samples and results do not depend on the order
in which samples arrived. Pure Python: no SciPy at run time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["t_quantile", "summarize", "paired_difference", "percentile", "summarize_timings", "ratio"]

PERCENTILES = (50, 90, 99)

# Two-sided 95 % (0.975 quantile) of Student's t for 1..30 degrees of freedom.
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
         2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)  # fmt: skip
_Z975 = 1.959964


def t_quantile(degrees_of_freedom: int) -> float:
    """The 0.975 quantile of Student's t (exact to 4 decimals up to 30 df, Cornish-Fisher beyond)."""
    if degrees_of_freedom < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 seeds), got {degrees_of_freedom}")
    if degrees_of_freedom <= len(_T975):
        return _T975[degrees_of_freedom - 1]
    z, nu = _Z975, float(degrees_of_freedom)
    return z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean", "std", "ci95": [low, high] | None}`` (sample std; no interval for one value)."""
    if not values:
        raise ValueError("no values to summarize")
    n, mean = len(values), statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    ci = None
    if n > 1:
        half = t_quantile(n - 1) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"n": n, "mean": mean, "std": std, "ci95": ci}


def paired_difference(first: Mapping[int, float], second: Mapping[int, float]) -> dict[str, Any]:
    """``first - second`` over the seeds both have: ``summarize`` of the per-seed differences, plus
    ``"seeds"`` and ``"per_seed"``. Raises ValueError when they share no seed."""
    seeds = sorted(set(first) & set(second))
    if not seeds:
        raise ValueError("the two rows share no seed: a paired difference needs the same seeds on both")
    differences = [first[seed] - second[seed] for seed in seeds]
    return {**summarize(differences), "seeds": seeds, "per_seed": differences}


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


def summarize_timings(values_ms: Sequence[float]) -> dict[str, float | int]:
    """``{"n", "mean", "std", "min", "p50", "p90", "p99", "max"}`` of a sample in milliseconds
    (``std`` as in ``summarize``: the sample standard deviation, 0 for a single sample)."""
    if not values_ms:
        raise ValueError("cannot summarize an empty sample: no request or iteration completed")
    values = [float(v) for v in values_ms]
    spread = summarize(values)
    summary: dict[str, float | int] = {"n": spread["n"], "mean": spread["mean"], "std": spread["std"]}
    summary["min"] = min(values)
    summary.update({f"p{q}": percentile(values, q) for q in PERCENTILES})
    summary["max"] = max(values)
    return summary


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator
