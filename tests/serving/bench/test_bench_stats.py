import numpy as np
import pytest

from serving.bench.stats import percentile, ratio, summarize


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
    summary = summarize([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert summary["n"] == 10
    assert summary["mean"] == pytest.approx(5.5)
    assert summary["std"] == pytest.approx(3.0276503540974917)
    assert (summary["min"], summary["max"]) == (1.0, 10.0)
    assert (summary["p50"], summary["p90"], summary["p99"]) == pytest.approx((5.5, 9.1, 9.91))
    assert summarize([4.0])["std"] == 0.0


def test_bad_inputs_and_ratio():
    with pytest.raises(ValueError, match="empty"):
        summarize([])
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None and ratio(1.0, 0.0) is None
