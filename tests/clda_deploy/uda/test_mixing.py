"""ClassMix masks, mixing, colour jitter, blur and the strong transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clda_deploy.data.transforms import preprocess
from clda_deploy.uda.mixing import (
    blur_kernel_size,
    class_mix_masks,
    color_jitter,
    gaussian_blur,
    mix,
    strong_transform,
)


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch: int = 2, height: int = 16, width: int = 24, seed: int = 0) -> torch.Tensor:
    """Normalized images of random uint8 RGB (in range, so the 0..1 clamp changes nothing)."""
    rng = np.random.default_rng(seed)
    return preprocess(rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8))


def _label(classes: list[int], height: int = 6, width: int = 8) -> torch.Tensor:
    """A [H,W] label with one vertical stripe per class plus an ignore stripe."""
    stripes = [*classes, 255]
    columns = torch.tensor([stripes[i * len(stripes) // width] for i in range(width)])
    return columns.expand(height, width).clone()


@pytest.mark.parametrize("classes, chosen", [([0, 1, 2, 3, 4], 3), ([2, 5, 7, 9], 2), ([13], 1), ([], 0)])
def test_masks_pick_half_of_the_present_classes(classes: list[int], chosen: int) -> None:
    labels = torch.stack([_label(classes), _label(classes[::-1])])
    masks = class_mix_masks(labels, _seeded())
    assert masks.shape == (2, 1, 6, 8) and masks.dtype == torch.float32
    for label, mask in zip(labels, masks[:, 0], strict=True):
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert not mask[label == 255].any()
        picked = set()
        for cls in label.unique().tolist():
            values = mask[label == cls].unique()
            assert values.numel() == 1, f"class {cls} is split by the mask"  # a union of whole classes
            if values.item() == 1.0:
                picked.add(cls)
        assert len(picked) == chosen


def test_masks_use_each_image_own_classes() -> None:
    labels = torch.stack([_label([0, 1]), _label([5, 6, 7, 8])])
    masks = class_mix_masks(labels, _seeded(3))
    assert len(set(labels[0][masks[0, 0] == 1].tolist())) == 1
    assert len(set(labels[1][masks[1, 0] == 1].tolist())) == 2


def test_masks_are_deterministic_given_the_seed() -> None:
    labels = torch.stack([_label(list(range(10)), width=20)] * 2)
    assert torch.equal(class_mix_masks(labels, _seeded(7)), class_mix_masks(labels, _seeded(7)))
    draws = {tuple(class_mix_masks(labels, _seeded(seed)).flatten().tolist()) for seed in range(8)}
    assert len(draws) > 1


def test_mix_golden_images_labels_and_weights() -> None:
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # [1,1,2,2]
    source = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]])  # [1,2,2,2]
    target = -source
    expected = torch.tensor([[[[1.0, -2.0], [-3.0, 4.0]], [[5.0, -6.0], [-7.0, 8.0]]]])
    assert torch.equal(mix(mask, source, target), expected)

    labels = mix(mask, torch.tensor([[[1, 2], [3, 4]]]), torch.tensor([[[9, 9], [255, 9]]]))
    assert labels.dtype == torch.long
    assert labels.tolist() == [[[1, 9], [255, 4]]]

    weights = mix(mask, torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.25))
    assert weights.tolist() == [[[1.0, 0.25], [0.25, 1.0]]]


def test_mix_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="share a shape"):
        mix(torch.ones(1, 1, 2, 2), torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 3))
    with pytest.raises(ValueError, match="does not fit"):
        mix(torch.ones(1, 1, 2, 2), torch.ones(2, 3, 2, 2), torch.ones(2, 3, 2, 2))


def test_color_jitter_probability_zero_and_one() -> None:
    images = _images()
    assert torch.equal(color_jitter(images, probability=0.0, generator=_seeded()), images)
    jittered = color_jitter(images, probability=1.0, generator=_seeded())
    assert jittered.shape == images.shape and jittered.dtype == images.dtype
    for index in range(images.shape[0]):
        assert not torch.allclose(jittered[index], images[index], atol=1e-3)


def test_color_jitter_strength_zero_is_identity() -> None:
    images = _images()
    torch.testing.assert_close(color_jitter(images, strength=0.0, probability=1.0), images, atol=1e-4, rtol=0)


def test_color_jitter_is_deterministic_given_the_seed() -> None:
    images = _images()
    first = color_jitter(images, probability=0.5, generator=_seeded(5))
    assert torch.equal(first, color_jitter(images, probability=0.5, generator=_seeded(5)))


@pytest.mark.parametrize("length, size", [(512, 51), (256, 25), (64, 7), (32, 3), (30, 3), (10, 1), (4, 1)])
def test_blur_kernel_size_rule(length: int, size: int) -> None:
    assert blur_kernel_size(length) == size


def test_blur_of_a_constant_image_is_constant() -> None:
    images = torch.full((2, 3, 40, 50), 0.7)
    torch.testing.assert_close(gaussian_blur(images, probability=1.0, generator=_seeded()), images)


def test_blur_probability_zero_and_one() -> None:
    images = _images(height=40, width=50)
    assert torch.equal(gaussian_blur(images, probability=0.0, generator=_seeded()), images)
    blurred = gaussian_blur(images, probability=1.0, generator=_seeded())
    assert blurred.shape == images.shape and blurred.dtype == images.dtype
    assert not torch.allclose(blurred, images, atol=1e-3)
    assert blurred.std() < images.std()  # blur smooths pixel noise


def test_strong_transform_is_deterministic_and_keeps_shape() -> None:
    images = _images(height=40, width=50)
    first = strong_transform(images, _seeded(11))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, strong_transform(images, _seeded(11)))
    assert torch.equal(strong_transform(images, _seeded(1), jitter_p=0.0, blur=False), images)
