import numpy as np
import pytest
import torch

from clda_deploy import build_segmenter
from clda_deploy.profiling import count_flops, matmul_rate, time_alternating, time_predictor


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_segmenter("mit_cpu_student", head_channels=32).eval()


def test_flops_positive_and_scale_with_pixels(tiny_model):
    small = count_flops(tiny_model, 64, 128)
    large = count_flops(tiny_model, 128, 256)
    assert small > 1e7
    # Convolutions and linear layers scale with the pixel count; attention with reduced keys
    # (sr ratios) almost does: doubling H and W gives ~4x.
    assert 3.8 < large / small < 4.4
    assert count_flops(tiny_model, 64, 128, batch=2) == 2 * small


def test_meta_count_equals_real_cpu_count(tiny_model):
    """The CPU path must count the CPU flash-attention kernel too (PyTorch's counter does not)."""
    assert count_flops(tiny_model, 64, 128, device="meta") == count_flops(tiny_model, 64, 128, device="cpu")
    assert next(tiny_model.parameters()).device.type == "cpu", "counting must not move the model"


def test_matmul_rate_positive():
    rate = matmul_rate(threads=1, size=256, repeats=2, min_seconds=0.01)
    assert rate.gflops > 0 and rate.threads == 1
    assert rate.seconds_per_matmul > 0 and rate.size == 256
    assert rate.gflops == pytest.approx(2 * 256**3 / rate.seconds_per_matmul / 1e9)
    assert set(rate.to_json()) == {"gflops", "size", "repeats", "seconds_per_matmul", "threads", "device", "dtype"}


class _Predictor:
    def __init__(self, device: str) -> None:
        self.device, self.calls = device, 0

    def predict(self, images, want_logits=True):
        self.calls += 1


def test_timing_synchronizes_cuda_before_the_clock_stops(monkeypatch):
    import clda_deploy.profiling as profiling

    synced = []
    monkeypatch.setattr(profiling, "synchronize", lambda device: synced.append(device))
    predictor = _Predictor("cuda:0")
    times = time_predictor(predictor, np.zeros((1, 3, 8, 8), np.float32), warmup=2, iters=3)
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert predictor.calls == 5 and synced == ["cuda:0"] * 5
    with pytest.raises(ValueError, match="iters"):
        time_predictor(predictor, np.zeros((1, 3, 8, 8), np.float32), warmup=0, iters=0)


def test_alternating_timing_interleaves_and_drops_the_warmup(monkeypatch):
    import clda_deploy.profiling as profiling

    clock = iter(range(1000))
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(clock) / 1000.0)
    calls = []
    first_ms, second_ms = time_alternating(lambda: calls.append("a"), lambda: calls.append("b"), warmup=1, iters=2)
    assert calls == ["a", "b"] * 3, "A and B alternate, warm-up round included"
    assert first_ms == pytest.approx([1.0, 1.0]) and second_ms == pytest.approx([1.0, 1.0])


def test_round_robin_alternates_every_call():
    from clda_deploy.profiling import time_round_robin

    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    times = time_round_robin(calls, warmup=1, iters=2)
    assert order == ["a", "b", "c"] * 3  # one warm-up round, then two timed rounds, each in turn
    assert {name: len(values) for name, values in times.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(value >= 0 for values in times.values() for value in values)
