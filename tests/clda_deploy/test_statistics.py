import math

import numpy as np
import pytest

from clda_deploy.statistics import paired_difference, percentile, ratio, summarize, summarize_timings, t_quantile


def test_t_quantiles_golden_and_continuous_past_the_table():
    assert t_quantile(1) == pytest.approx(12.7062) and t_quantile(4) == pytest.approx(2.7764)
    assert t_quantile(30) == pytest.approx(2.0423)
    assert t_quantile(31) == pytest.approx(2.0395, abs=5e-4) and t_quantile(120) == pytest.approx(1.9799, abs=5e-4)
    with pytest.raises(ValueError, match="2 seeds"):
        t_quantile(0)


def test_summary_golden_values():
    result = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764 * math.sqrt(2.5) / math.sqrt(5)
    assert result["mean"] == 3.0 and result["std"] == pytest.approx(math.sqrt(2.5))
    assert result["ci95"] == pytest.approx([3.0 - half, 3.0 + half])
    assert summarize([7.0]) == {"n": 1, "mean": 7.0, "std": 0.0, "ci95": None}


def test_paired_difference_removes_the_seed_effect():
    # Seeds differ by 10 points, the rows by a steady +0.5: unpaired spreads hide it, pairing does not.
    first = {0: 10.5, 1: 20.5, 2: 30.5}
    second = {0: 10.0, 1: 20.0, 2: 30.0, 3: 99.0}
    result = paired_difference(first, second)
    assert result["seeds"] == [0, 1, 2] and result["per_seed"] == pytest.approx([0.5, 0.5, 0.5])
    assert result["mean"] == pytest.approx(0.5) and result["ci95"] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_percentiles_golden():
    values = [float(v) for v in range(10, 0, -1)]  # 10..1, unsorted on purpose
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert percentile([7.0], 99) == 7.0


def test_percentiles_match_numpy_linear():
    values = np.random.default_rng(0).lognormal(size=37)
    for q in (1, 25, 50, 90, 99):
        assert percentile(values.tolist(), q) == pytest.approx(float(np.percentile(values, q)))


def test_summary_golden():
    summary = summarize_timings([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert summary["n"] == 10
    assert summary["mean"] == pytest.approx(5.5)
    assert summary["std"] == pytest.approx(3.0276503540974917)
    assert (summary["min"], summary["max"]) == (1.0, 10.0)
    assert (summary["p50"], summary["p90"], summary["p99"]) == pytest.approx((5.5, 9.1, 9.91))
    assert summarize_timings([4.0])["std"] == 0.0


def test_bad_inputs_and_ratio():
    with pytest.raises(ValueError, match="empty"):
        summarize_timings([])
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None and ratio(1.0, 0.0) is None
