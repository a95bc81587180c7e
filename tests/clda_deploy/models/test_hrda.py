"""HRDA's pieces on hand-built tensors: crop geometry, scale fusion, sliding-window averaging, and the
segmenter's three forwards (whole, training with a detail box, sliding detail)."""

import pytest
import torch

from clda_deploy.checkpoint import segmenter_from_config
from clda_deploy.config import load_config
from clda_deploy.models.hrda import HRDAOutput, HRDASegmenter, detail_crop_box, fuse_scales, place_windows


def test_detail_box_lies_inside_on_multiples_of_8_and_is_seeded():
    boxes = set()
    for seed in range(40):
        top, left, bottom, right = detail_crop_box((64, 96), (32, 32), torch.Generator().manual_seed(seed))
        assert (bottom - top, right - left) == (32, 32)
        assert 0 <= top and bottom <= 64 and 0 <= left and right <= 96
        assert top % 8 == 0 and left % 8 == 0
        boxes.add((top, left))
    # offsets are uniform over the multiples of 8 that fit: 5 rows (0..32) x 9 columns (0..64)
    assert {top for top, _ in boxes} == {0, 8, 16, 24, 32}
    assert {left for _, left in boxes} >= {0, 64}
    again = [detail_crop_box((64, 96), (32, 32), torch.Generator().manual_seed(3)) for _ in range(2)]
    assert again[0] == again[1]
    with pytest.raises(ValueError, match="does not fit"):
        detail_crop_box((16, 16), (32, 32))


def test_fusion_without_a_box_blends_detail_and_context_by_the_attention():
    context = torch.full((1, 2, 2, 2), 4.0)  # stride 8 grid of a 16x16 input
    attention = torch.full((1, 2, 2, 2), 0.25)
    detail = torch.full((1, 2, 4, 4), 8.0)  # stride 4 grid
    fused = fuse_scales(context, attention, detail, None, (4, 4))
    # a * detail + up((1 - a) * context) = 0.25 * 8 + 0.75 * 4
    torch.testing.assert_close(fused, torch.full((1, 2, 4, 4), 5.0))


def test_fusion_with_a_box_is_context_only_outside_it():
    context = torch.full((1, 1, 4, 4), 2.0)
    attention = torch.full((1, 1, 4, 4), 0.5)
    detail = torch.full((1, 1, 4, 4), 10.0)  # detail logits for a 4x4-cell box of the 8x8 grid
    fused = fuse_scales(context, attention, detail, (0, 4, 4, 8), (8, 8))
    inside, outside = fused[0, 0, 1:3, 5:7], fused[0, 0, 5:, :3]  # away from the bilinear seam
    torch.testing.assert_close(inside, torch.full_like(inside, 0.5 * 10 + 0.5 * 2))
    torch.testing.assert_close(outside, torch.full_like(outside, 2.0))  # a = 0 there: (1 - 0) * context


def test_place_windows_averages_the_overlap():
    left = torch.ones((1, 1, 2, 2))
    right = torch.full((1, 1, 2, 2), 3.0)
    merged = place_windows([left, right], [(0, 0, 2, 2), (0, 1, 2, 3)], (2, 3))
    expected = torch.tensor([[[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]]])
    torch.testing.assert_close(merged, expected)
    with pytest.raises(ValueError, match="do not cover"):
        place_windows([left], [(0, 0, 2, 2)], (2, 3))


@pytest.fixture(scope="module")
def hrda_model() -> HRDASegmenter:
    torch.manual_seed(0)
    cfg = load_config(None, ["uda.method=hrda", "model.encoder=mit_cpu_student", "model.head_channels=16",
                             "data.crop=[64,64]"])  # fmt: skip
    model = segmenter_from_config(cfg).eval()
    assert isinstance(model, HRDASegmenter) and model.detail_crop == (32, 32) and model.slide_stride == (16, 16)
    return model


def test_whole_forward_gives_input_size_logits(hrda_model):
    with torch.no_grad():
        assert hrda_model(torch.randn(2, 3, 64, 96)).shape == (2, 19, 64, 96)


def test_training_forward_returns_fused_and_detail_for_the_box(hrda_model):
    with torch.no_grad():
        output = hrda_model(torch.randn(2, 3, 64, 64), detail_box=(8, 16, 40, 48))
    assert isinstance(output, HRDAOutput)
    assert output.fused.shape == (2, 19, 64, 64) and output.detail.shape == (2, 19, 32, 32)
    assert len(output.context_features) == 4 and output.context_features[0].shape[-2:] == (8, 8)


def test_sliding_detail_equals_the_whole_forward_when_one_window_covers_the_image(hrda_model, monkeypatch):
    monkeypatch.setattr(hrda_model, "detail_crop", (64, 64))
    image = torch.randn(1, 3, 64, 64)  # one detail window covers the image
    with torch.no_grad():
        torch.testing.assert_close(hrda_model.slide_forward(image), hrda_model(image), rtol=1e-5, atol=1e-5)


def test_sliding_detail_averages_overlapping_windows(hrda_model):
    image = torch.randn(1, 3, 64, 64)  # 32x32 windows with stride 16: 3 x 3 windows
    with torch.no_grad():
        slid, whole = hrda_model.pseudo_label_logits(image), hrda_model(image)
    assert slid.shape == whole.shape == (1, 19, 64, 64)
    assert not torch.allclose(slid, whole)  # windows see less context than the whole image


def test_the_attention_head_is_class_wise_and_in_the_state_dict(hrda_model):
    keys = hrda_model.state_dict()
    assert hrda_model.attention_head.conv_seg.out_channels == 19
    assert any(key.startswith("attention_head.") for key in keys)
