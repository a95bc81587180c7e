import math

import pytest

from clda_deploy.statistics import paired_difference, summarize, t_quantile


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
