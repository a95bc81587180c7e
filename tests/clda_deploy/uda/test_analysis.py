"""Analyses (Fig. 2-5): LSR summary, linear CKA golden values and invariances, PVR (Eq. 3), plots."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clda_deploy.models.segmenter import Segmenter, build_segmenter
from clda_deploy.uda.analysis import (
    block_outputs,
    cka_correspondence,
    cka_matrix,
    linear_cka,
    lsr_summary,
    module_pvr,
    plot_cka_heatmap,
    plot_lsr_distribution,
    plot_pvr_heatmap,
    plot_similarity_heatmaps,
    pvr,
    scores_matrix,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019) linear CKA written out in NumPy, feature-space form."""
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


# ----- Fig. 3: linear CKA -----------------------------------------------------------------------
def test_cka_hand_computed_examples() -> None:
    # centred x = (-1, 0, 1), y = (0, -1, 1): ||y^T x||^2 = 1, ||x^T x|| = ||y^T y|| = 2
    assert linear_cka([[1.0], [2.0], [3.0]], [[1.0], [0.0], [2.0]]) == pytest.approx(0.25, abs=1e-12)
    # centred x = [[2,-1],[-1,2],[-1,-1]] / 3, y = (1, 1, -2) / 3: (2/9) / (sqrt(90)/9 * 6/9) = 1/sqrt(10)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    y = np.array([[1.0], [1.0], [0.0]])
    assert linear_cka(x, y) == pytest.approx(1 / math.sqrt(10), abs=1e-12)
    assert linear_cka(torch.tensor(x, dtype=torch.float32), y) == pytest.approx(1 / math.sqrt(10), abs=1e-7)


@pytest.mark.parametrize("n, p", [(60, 8), (6, 40)])  # feature-space form and Gram form
def test_cka_self_invariances_and_reference(n: int, p: int) -> None:
    generator = np.random.default_rng(0)
    x, y = generator.normal(size=(n, p)), generator.normal(size=(n, p + 3)) + 0.5
    y[:, :p] += x  # correlated
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    value = linear_cka(x, y)
    assert value == pytest.approx(_reference_cka(x, y), abs=1e-10)
    q, _ = np.linalg.qr(generator.normal(size=(p, p)))
    assert linear_cka(x @ q, y) == pytest.approx(value, abs=1e-10)  # orthogonal transform
    assert linear_cka(7.5 * x, y) == pytest.approx(value, abs=1e-10)  # isotropic scaling
    assert linear_cka(x + 3.0, y) == pytest.approx(value, abs=1e-10)  # centring removes offsets
    assert 0.0 <= value <= 1.0


def test_cka_of_independent_features_is_small_and_degenerate_inputs() -> None:
    generator = np.random.default_rng(1)
    assert linear_cka(generator.normal(size=(1000, 4)), generator.normal(size=(1000, 4))) < 0.05
    assert linear_cka(np.ones((5, 3)), generator.normal(size=(5, 3))) == 0.0  # constant features
    with pytest.raises(ValueError, match="same n"):
        linear_cka(np.zeros((4, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\[n, p\]"):
        linear_cka(np.zeros(4), np.zeros(4))


def _reference_debiased_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s ``cka(gram_linear(x), gram_linear(y), debiased=True)`` (google-research code)."""

    def center_gram(gram: np.ndarray) -> np.ndarray:
        gram, n = gram.copy(), gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
        return gram

    gram_x, gram_y = center_gram(x @ x.T), center_gram(y @ y.T)
    return float(gram_x.ravel() @ gram_y.ravel() / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y)))


def test_debiased_cka_removes_the_small_n_bias() -> None:
    generator = np.random.default_rng(2)
    x, y = generator.normal(size=(10, 500)), generator.normal(size=(10, 500))
    assert linear_cka(x, y) > 0.9  # plain CKA of independent features is near 1 when n << p
    assert abs(linear_cka(x, y, debiased=True)) < 0.15
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)
    y[:, :100] += 2 * x[:, :100]
    assert linear_cka(x, y, debiased=True) == pytest.approx(_reference_debiased_cka(x, y), abs=1e-10)
    matrix, _, _ = cka_matrix({"a": x}, {"b": y, "a": x}, debiased=True)
    assert matrix[0, 0] == pytest.approx(_reference_debiased_cka(x, y), abs=1e-10)
    assert matrix[0, 1] == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(x[:3], y[:3], debiased=True)


def test_cka_matrix_and_correspondence() -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 30, generator=generator), torch.randn(20, 7, generator=generator)
    teacher = {"stage1.block00": a, "stage1.block01": b, "stage2.block00": a * 2}
    student = {"stage1.block00": b @ torch.linalg.qr(torch.randn(7, 7, generator=generator))[0], "stage2.block00": a}
    matrix, rows, cols = cka_matrix(teacher, student)
    assert matrix.shape == (3, 2) and rows == list(teacher) and cols == list(student)
    assert matrix[1, 0] == pytest.approx(1.0, abs=1e-10) and matrix[0, 1] == pytest.approx(1.0, abs=1e-10)
    assert matrix[0, 0] == pytest.approx(linear_cka(a, student["stage1.block00"]), abs=1e-10)
    correspondence = cka_correspondence(matrix, rows, cols)
    assert correspondence["stage1.block00"][0] == "stage1.block01"
    assert correspondence["stage2.block00"][0] == "stage1.block00"  # first of the tied maxima
    with pytest.raises(ValueError, match="same n"):
        cka_matrix({"x": a}, {"y": a[:10]})


@pytest.fixture(scope="module")
def tiny() -> Segmenter:
    torch.manual_seed(0)
    return build_segmenter("mit_cpu_student", num_classes=4, head_channels=16)


def test_block_outputs_shapes_pooling_and_hooks(tiny: Segmenter) -> None:
    images = torch.randn(3, 3, 32, 64)
    names = ["stage1.block00", "stage4.block00"]
    outputs = block_outputs(tiny, [images[:2], {"image": images[2:], "label": None}], names, max_tokens=16)
    # stage 1: 8 x 16 = 128 tokens -> 16 kept x 32 channels; stage 4: 1 x 2 = 2 tokens x 256 channels
    assert outputs["stage1.block00"].shape == (3, 16 * 32) and outputs["stage4.block00"].shape == (3, 2 * 256)
    assert block_outputs(tiny, images, names, max_tokens=None)["stage1.block00"].shape == (3, 128 * 32)
    assert block_outputs(tiny, images, names, pool="mean")["stage4.block00"].shape == (3, 256)
    assert all(not tiny.block(name)._forward_hooks for name in names)  # hooks removed
    full = block_outputs(tiny, images)
    assert list(full) == tiny.block_names()
    matrix, _, _ = cka_matrix(full, full)
    assert np.allclose(np.diag(matrix), 1.0)
    with pytest.raises(ValueError, match="pool"):
        block_outputs(tiny, images, pool="max")


# ----- Fig. 4: PVR --------------------------------------------------------------------------------
def test_module_pvr_golden() -> None:
    zeros, ones = nn.Linear(3, 2), nn.Linear(3, 2)
    nn.init.zeros_(zeros.weight), nn.init.zeros_(zeros.bias), nn.init.ones_(ones.weight), nn.init.ones_(ones.bias)
    assert module_pvr(zeros, ones) == 1.0
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 2.0]])), a.bias.fill_(0.0)
        b.weight.copy_(torch.tensor([[0.0, 4.0]])), b.bias.fill_(3.0)
    assert module_pvr(a, b) == pytest.approx((1 + 2 + 3) / 3)  # sum |difference| / D with D = 3
    with pytest.raises(ValueError, match="same structure"):
        module_pvr(nn.Linear(2, 1), nn.Linear(3, 1))
    with pytest.raises(ValueError, match="without parameters"):
        module_pvr(nn.ReLU(), nn.ReLU())


def test_pvr_per_block_and_module(tiny: Segmenter) -> None:
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        for parameter in other.block("stage3.block01").attn.parameters():
            parameter.add_(0.5)
    values = pvr(tiny, other)
    assert list(values) == tiny.block_names() and set(values["stage1.block00"]) == {"attn", "mlp"}
    assert values["stage3.block01"]["attn"] == pytest.approx(0.5, abs=1e-6)
    assert all(
        v == 0.0 for name, row in values.items() for m, v in row.items() if (name, m) != ("stage3.block01", "attn")
    )
    only_proj = pvr(tiny, other, modules=("attn.proj",), names=["stage3.block01"])
    assert list(only_proj) == ["stage3.block01"] and only_proj["stage3.block01"]["attn.proj"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="block lists differ"):
        pvr(tiny, build_segmenter("mit_cpu_teacher", num_classes=4, head_channels=16))


# ----- Fig. 2 and 5 numbers -----------------------------------------------------------------------
TEACHER_SALIENCY = [
    {"block": "stage1.block00", "lsr": 2.0, "delta": 2.0, "salient": True},
    {"block": "stage3.block00", "lsr": 0.05, "delta": -0.05, "salient": False},
    {"block": "stage3.block01", "lsr": 0.0, "delta": 0.0, "salient": False},
    {"block": "stage4.block00", "lsr": 0.15, "delta": 0.15, "salient": True},
]
STUDENT_SALIENCY = [
    {"block": "stage3.block00", "lsr": 1.0, "delta": 1.0, "salient": True},
    {"block": "stage4.block00", "lsr": 3.0, "delta": -3.0, "salient": True},
]
CHANNEL = {"stage4.block01": {"stage4.block00": 0.9}, "stage3.block05": {"stage3.block00": 0.8, "stage3.block01": 0.2}}
TOKEN = {"stage3.block05": {"stage3.block00": 0.1, "stage3.block01": 0.3}, "stage4.block01": {"stage4.block00": 0.5}}


def test_lsr_summary() -> None:
    summary = lsr_summary(TEACHER_SALIENCY)
    assert summary == {
        "blocks": 4,
        "salient": 2,
        "non_salient": 2,
        "non_salient_fraction": 0.5,
        "mean_lsr": pytest.approx(2.2 / 4),
        "max_lsr": 2.0,
    }
    assert lsr_summary([])["blocks"] == 0


def test_scores_matrix_in_forward_order_with_gaps() -> None:
    matrix, rows, cols = scores_matrix(CHANNEL)
    assert rows == ["stage3.block05", "stage4.block01"]
    assert cols == ["stage3.block00", "stage3.block01", "stage4.block00"]
    np.testing.assert_array_equal(matrix[0], [0.8, 0.2, np.nan])
    np.testing.assert_array_equal(matrix[1], [np.nan, np.nan, 0.9])


# ----- plots --------------------------------------------------------------------------------------
def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plots_write_png_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _assert_png(plot_lsr_distribution(TEACHER_SALIENCY, STUDENT_SALIENCY, tmp_path / "fig2" / "lsr.png"))
    matrix, rows, cols = cka_matrix({"a": np.eye(4), "b": np.ones((4, 2))}, {"c": np.eye(4)})
    _assert_png(plot_cka_heatmap(matrix, rows, cols, tmp_path / "cka.png"))
    values = {"stage1.block00": {"attn": 0.1, "mlp": 0.05}, "stage2.block00": {"attn": 0.3, "mlp": 0.02}}
    _assert_png(plot_pvr_heatmap(values, tmp_path / "pvr.png"))
    _assert_png(plot_similarity_heatmaps(CHANNEL, TOKEN, str(tmp_path / "similarity.png")))
