import pytest
import torch

from clda_deploy.inference import predict_logits, resize_logits, resolve_device, slide_windows


def pixelwise_model(images: torch.Tensor) -> torch.Tensor:
    """A translation-equivariant 'model': per-pixel linear map to 2 classes."""
    return torch.cat([images[:, :1] * 2.0, images[:, 1:2] - images[:, 2:3]], dim=1)


def test_slide_windows_cover_and_end_at_borders():
    boxes = slide_windows(10, 17, crop=(4, 8), stride=(3, 6))
    assert all(0 <= t < b <= 10 and 0 <= left < r <= 17 for t, left, b, r in boxes)
    assert max(b for _, _, b, _ in boxes) == 10 and max(r for _, _, _, r in boxes) == 17
    covered = torch.zeros(10, 17)
    for t, left, b, r in boxes:
        covered[t:b, left:r] = 1
    assert covered.all()


def test_small_image_is_one_window():
    assert slide_windows(5, 6, crop=(8, 8), stride=(4, 4)) == [(0, 0, 5, 6)]


def test_slide_equals_whole_for_pixelwise_model():
    images = torch.randn(2, 3, 13, 21)
    whole = predict_logits(pixelwise_model, images, "whole")
    slide = predict_logits(pixelwise_model, images, "slide", crop=(6, 8), stride=(4, 5))
    torch.testing.assert_close(slide, whole)


def test_unknown_mode_and_resize():
    with pytest.raises(ValueError, match="'whole' or 'slide'"):
        predict_logits(pixelwise_model, torch.zeros(1, 3, 4, 4), "tiles")
    logits = torch.randn(1, 2, 4, 4)
    assert resize_logits(logits, (4, 4)) is logits
    assert resize_logits(logits, (8, 6)).shape == (1, 2, 8, 6)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
