"""Pseudo-labels: golden labels, batch-wide confidence share q, ignored rows, no autograd."""

from __future__ import annotations

import torch

from clda_deploy.uda.pseudo_label import ignored_rows, pseudo_labels


def _column(pairs: list[tuple[float, float]]) -> torch.Tensor:
    """Two-class logits for a one-pixel-wide image, one (class 0, class 1) pair per row -> [1,2,H,1]."""
    return torch.tensor(pairs).T.reshape(1, 2, len(pairs), 1)


def test_golden_labels_weight_and_confidence() -> None:
    # Max probabilities: sigmoid(0.1) = 0.525, sigmoid(5) = 0.9933, sigmoid(4) = 0.9820, sigmoid(3) = 0.9526.
    logits = _column([(0.1, 0.0), (0.0, 5.0), (4.0, 0.0), (0.0, 3.0)])
    labels, weight, confidence = pseudo_labels(logits, ignore_top=1, ignore_bottom=1, reference_height=4)
    assert labels.tolist() == [[[0], [1], [0], [1]]]
    assert labels.dtype == torch.long
    # q = 2 of 4 pixels >= 0.968; rows 0 and 3 are ignored.
    assert weight.tolist() == [[[0.0], [0.5], [0.5], [0.0]]]
    expected = torch.sigmoid(torch.tensor([0.1, 5.0, 4.0, 3.0])).reshape(1, 4, 1)
    torch.testing.assert_close(confidence, expected)


def test_share_is_one_scalar_for_the_whole_batch() -> None:
    confident = torch.zeros(1, 3, 4, 4)
    confident[:, 0] = 10.0  # p ~ 1
    unsure = torch.zeros(1, 3, 4, 4)  # p = 1/3
    _, weight, _ = pseudo_labels(torch.cat([confident, unsure]), ignore_top=0, ignore_bottom=0)
    assert torch.equal(weight, torch.full((2, 4, 4), 0.5))


def test_threshold_is_inclusive() -> None:
    logits = _column([(0.0, 0.0)])  # p = 0.5 exactly
    _, weight, _ = pseudo_labels(logits, threshold=0.5, ignore_top=0, ignore_bottom=0)
    assert weight.item() == 1.0


def test_ignored_rows_scale_with_crop_height() -> None:
    assert ignored_rows(512, 15) == 15 and ignored_rows(512, 120) == 120
    assert ignored_rows(256, 15) == 8  # 7.5 rounds half up
    assert ignored_rows(256, 120) == 60
    assert ignored_rows(1024, 15) == 30
    assert ignored_rows(256, 0) == 0


def test_default_rows_on_a_256_crop() -> None:
    logits = torch.zeros(2, 3, 256, 8)
    logits[:, 1] = 10.0
    _, weight, _ = pseudo_labels(logits)
    rows = weight[0, :, 0]
    assert torch.equal(rows[:8], torch.zeros(8))
    assert torch.equal(rows[256 - 60 :], torch.zeros(60))
    assert torch.equal(rows[8 : 256 - 60], torch.ones(256 - 68))


def test_zero_ignored_rows_keep_every_row() -> None:
    logits = torch.full((1, 2, 6, 3), 10.0)
    logits[:, 0] = 0.0
    _, weight, _ = pseudo_labels(logits, ignore_top=0, ignore_bottom=0)
    assert torch.equal(weight, torch.ones(1, 6, 3))  # weight[:, -0:] would have zeroed everything


def test_no_gradient_reaches_the_teacher_and_amp_logits_give_float32() -> None:
    logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    outputs = pseudo_labels(logits.half())
    assert not any(output.requires_grad for output in outputs)
    assert outputs[1].dtype == torch.float32 and outputs[2].dtype == torch.float32
