"""HRDA's loss weighting and MIC's block masks, with golden values."""

import math

import pytest
import torch

from clda_deploy.config import load_config
from clda_deploy.models.hrda import HRDAOutput
from clda_deploy.uda.masking import block_mask, masked_images
from clda_deploy.uda.pseudo_label import pseudo_labels
from clda_deploy.uda.scales import MultiResolution, SingleScale, build_train_forward, crop_to_box, hrda_loss


def uniform_logits(batch, classes, height, width, correct_margin, labels):
    """Logits where the label class scores ``correct_margin`` and the rest 0: CE = log(e^m + K - 1) - m."""
    logits = torch.zeros(batch, classes, height, width)
    logits.scatter_(1, labels.unsqueeze(1), correct_margin)
    return logits


def test_hrda_loss_weights_fused_and_detail_ce_and_crops_the_labels():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 4:, :] = 1
    box = (4, 0, 8, 4)  # the detail box sees only class 1
    fused = uniform_logits(1, 3, 8, 8, 2.0, labels)
    detail = uniform_logits(1, 3, 4, 4, 0.0, torch.ones(1, 4, 4, dtype=torch.long))
    output = HRDAOutput(fused=fused, detail=detail, box=box, context_features=[])
    loss, parts = hrda_loss(output, slice(None), labels, None, detail_weight=0.1)
    fused_ce, detail_ce = math.log(math.exp(2.0) + 2) - 2.0, math.log(3.0)
    assert parts["fused_ce"].item() == pytest.approx(fused_ce, abs=1e-6)
    assert parts["detail_ce"].item() == pytest.approx(detail_ce, abs=1e-6)
    assert loss.item() == pytest.approx(0.9 * fused_ce + 0.1 * detail_ce, abs=1e-6)
    weight = torch.full((1, 8, 8), 0.5)
    weighted, _ = hrda_loss(output, slice(None), labels, weight, detail_weight=0.1)
    assert weighted.item() == pytest.approx(0.5 * loss.item(), abs=1e-6)
    assert crop_to_box(labels, box).unique().tolist() == [1]


def test_train_forward_follows_uda_method():
    assert isinstance(build_train_forward(load_config(None, []), 0), SingleScale)
    hrda = build_train_forward(load_config(None, ["uda.method=hrda", "data.crop=[64,64]"]), 0)
    assert isinstance(hrda, MultiResolution) and hrda.detail_crop == (32, 32) and hrda.detail_weight == 0.1
    assert hrda.context_images(torch.zeros(1, 3, 64, 32)).shape == (1, 3, 32, 16)
    state = hrda.state_dict()
    first = torch.randint(100, (3,), generator=hrda.generator)
    hrda.load_state_dict(state)
    assert torch.equal(torch.randint(100, (3,), generator=hrda.generator), first)


def test_block_mask_keeps_patches_whose_draw_reaches_the_ratio():
    generator = torch.Generator().manual_seed(5)
    mask = block_mask(2, (5, 7), block=2, ratio=0.7, generator=generator)
    draws = torch.rand((2, 1, 3, 4), generator=torch.Generator().manual_seed(5))
    assert mask.shape == (2, 1, 5, 7)
    for row in range(5):
        for col in range(7):
            expected = (draws[:, 0, row // 2, col // 2] >= 0.7).float()
            torch.testing.assert_close(mask[:, 0, row, col], expected)


def test_block_mask_drops_about_the_ratio_of_patches():
    mask = block_mask(8, (256, 256), block=16, ratio=0.7, generator=torch.Generator().manual_seed(0))
    assert mask.unique().tolist() == [0.0, 1.0]
    assert 0.25 < mask.mean().item() < 0.35  # kept with probability 0.3


def test_masked_images_are_zero_where_masked():
    cfg = load_config(None, ["uda.mic=true", "uda.mic_block=4", "uda.color_jitter_p=0", "uda.blur_p=0"]).uda
    images = torch.randn(2, 3, 16, 16)
    masked = masked_images(images, cfg, torch.Generator().manual_seed(1))
    kept = masked.abs().sum(dim=1) > 0
    assert 0 < kept.float().mean() < 1
    torch.testing.assert_close(masked[:, :, kept[0]][0], images[:, :, kept[0]][0])


def test_pseudo_label_side_margins_scale_with_the_crop_height():
    logits = torch.zeros(1, 2, 256, 256)
    logits[:, 0] = 10.0
    _, weight, _ = pseudo_labels(logits, 0.9, 15, 120, reference_height=512, ignore_left=15, ignore_right=15)
    assert weight[0, 100, :8].eq(0).all() and weight[0, 100, -8:].eq(0).all()  # 15 of 512 -> 8 of 256
    assert weight[0, 100, 8:-8].eq(1).all()
