import pytest
import torch

from clda_deploy import build_segmenter
from serving.bench.flops import count_flops, matmul_rate


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
    assert rate["gflops"] > 0 and rate["threads"] == 1
    assert rate["seconds_per_matmul"] > 0 and rate["size"] == 256
