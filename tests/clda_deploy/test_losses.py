"""Losses: golden values on tiny hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from clda_deploy.losses import downscale_label_ratio, masked_feature_distance, pixel_weighted_cross_entropy

# Two pixels, two classes: pixel 0 has p = (1/2, 1/2), pixel 1 has p = (1/4, 3/4).
LOGITS = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # [1,2,1,2]
CE0, CE1 = math.log(2.0), math.log(4.0 / 3.0)  # CE for targets 0 and 1


def test_cross_entropy_unweighted_matches_torch() -> None:
    target = torch.tensor([[[0, 1]]])
    loss = pixel_weighted_cross_entropy(LOGITS, target)
    assert loss.item() == pytest.approx((CE0 + CE1) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(LOGITS, target).item(), rel=1e-6)


def test_cross_entropy_pixel_weights() -> None:
    target = torch.tensor([[[0, 1]]])
    weight = torch.tensor([[[0.5, 2.0]]])
    loss = pixel_weighted_cross_entropy(LOGITS, target, weight)
    assert loss.item() == pytest.approx((0.5 * CE0 + 2.0 * CE1) / 2, rel=1e-6)


def test_cross_entropy_scalar_weight() -> None:
    target = torch.tensor([[[0, 1]]])
    loss = pixel_weighted_cross_entropy(LOGITS, target, 0.25)
    assert loss.item() == pytest.approx(0.25 * (CE0 + CE1) / 2, rel=1e-6)


def test_ignored_pixels_count_in_the_denominator() -> None:
    # mmseg weight_reduce_loss(mean, avg_factor=None): ignored pixel -> 0, still divided by 2.
    target = torch.tensor([[[0, 255]]])
    loss = pixel_weighted_cross_entropy(LOGITS, target, torch.tensor([[[3.0, 7.0]]]))
    assert loss.item() == pytest.approx(3.0 * CE0 / 2, rel=1e-6)
    assert pixel_weighted_cross_entropy(LOGITS, torch.full((1, 1, 2), 255)).item() == 0.0


def test_cross_entropy_gradient_flows_to_logits() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    pixel_weighted_cross_entropy(logits, torch.tensor([[[0, 1]]]), torch.tensor([[[1.0, 0.0]]])).backward()
    # Only pixel 0 has weight: dCE/dz = (p - onehot) / 2 pixels.
    expected = torch.tensor([[[[-0.25, 0.0]], [[0.25, 0.0]]]])
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize(
    "target, weight, match",
    [
        (torch.tensor([[0, 1]]), None, r"target must be \[B,H,W\]"),
        (torch.tensor([[[0.0, 1.0]]]), None, "long class ids"),
        (torch.tensor([[[0, 1]]]), torch.ones(1, 2, 1), r"weight must be \[B,H,W\]"),
    ],
)
def test_cross_entropy_rejects_bad_shapes(target, weight, match) -> None:
    with pytest.raises(ValueError, match=match):
        pixel_weighted_cross_entropy(LOGITS, target, weight)


def test_downscale_label_ratio_golden() -> None:
    label = torch.tensor(
        [
            [11, 11, 13, 13],
            [11, 11, 13, 0],
            [6, 6, 255, 255],
            [0, 0, 255, 11],
        ]
    ).unsqueeze(0)
    # TL: all 11. TR: 13 covers 3/4 = min ratio -> 13. BL: 6 and 0 tie at 1/2 -> ignore.
    # BR: ignore is the majority (3/4) -> ignore.
    expected = torch.tensor([[[11, 13], [255, 255]]])
    torch.testing.assert_close(downscale_label_ratio(label, (2, 2)), expected)


def test_downscale_label_ratio_pads_non_multiples_with_ignore() -> None:
    label = torch.full((1, 3, 3), 7)
    # 3x3 -> 2x2: blocks of 2x2 after padding to 4x4 with ignore; only the top-left block is
    # fully 7 (the others hold 2/4 or 1/4 of 7 and the rest padding).
    expected = torch.tensor([[[7, 255], [255, 255]]])
    torch.testing.assert_close(downscale_label_ratio(label, (2, 2)), expected)


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    # Per-pixel difference vectors (C=2): (3,4) -> 5, (1,0) -> 1, (0,0) -> 0, (6,8) -> 10.
    features = torch.tensor([[[[3.0, 1.0], [0.0, 6.0]], [[4.0, 0.0], [0.0, 8.0]]]])  # [1,2,2,2]
    return features, torch.zeros_like(features)


THING_LABEL = torch.tensor(
    [
        [11, 11, 13, 13],
        [11, 11, 13, 13],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ]
).unsqueeze(0)  # things (person 11, car 13) in the top row of 2x2 blocks only


def test_feature_distance_golden() -> None:
    features, reference = _features()
    distance = masked_feature_distance(features, reference, THING_LABEL)
    assert distance.item() == pytest.approx((5.0 + 1.0) / 2)
    # Every pixel masked when the stuff classes count too.
    all_classes = masked_feature_distance(features, reference, THING_LABEL, thing_classes=(0, 1, 11, 13))
    assert all_classes.item() == pytest.approx((5.0 + 1.0 + 0.0 + 10.0) / 4)


def test_feature_distance_empty_mask_is_zero_and_differentiable() -> None:
    features, reference = _features()
    features.requires_grad_(True)
    distance = masked_feature_distance(features, reference, torch.zeros(1, 4, 4, dtype=torch.long))
    assert distance.item() == 0.0
    distance.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_feature_distance_gradient_is_finite_where_features_match() -> None:
    # Pixel (1,0) of the masked area has features == reference; the norm's gradient must not be NaN.
    features = torch.zeros(1, 2, 2, 2, requires_grad=True)
    masked_feature_distance(features, torch.zeros(1, 2, 2, 2), THING_LABEL).backward()
    assert torch.isfinite(features.grad).all()


def test_feature_distance_does_not_train_the_reference() -> None:
    features, reference = _features()
    reference.requires_grad_(True)
    features.requires_grad_(True)
    masked_feature_distance(features, reference, THING_LABEL).backward()
    assert reference.grad is None
    assert features.grad is not None
