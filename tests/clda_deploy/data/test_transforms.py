import numpy as np
import pytest
import torch

from clda_deploy.data import transforms


class ScriptedRng:
    """Returns the given offsets in order (top, left, top, left, ...) and counts the draws."""

    def __init__(self, offsets):
        self.offsets = list(offsets)
        self.calls = 0

    def integers(self, low, high):
        self.calls += 1
        value = self.offsets.pop(0) if self.offsets else 0
        assert low <= value < high
        return value


def test_normalization_golden_values():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 128)
    tensor = transforms.to_tensor_normalized(image)
    assert tensor.shape == (3, 2, 2) and tensor.dtype == torch.float32
    expected = [(255 - 123.675) / 58.395, (0 - 116.28) / 57.12, (128 - 103.53) / 57.375]
    assert torch.allclose(tensor[:, 0, 0], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(tensor[:, 1, 1], torch.tensor([-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375]))


def test_preprocess_batches_and_numpy_twin_are_identical():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    batch = transforms.preprocess(images)
    assert batch.shape == (3, 3, 5, 7)
    assert transforms.preprocess(images[0]).shape == (1, 3, 5, 7)
    assert torch.equal(transforms.preprocess(list(images)), batch)
    numpy_batch = transforms.preprocess_numpy(images)
    assert numpy_batch.dtype == np.float32 and np.array_equal(numpy_batch, batch.numpy())
    restored = transforms.denormalize(batch)
    assert torch.allclose(restored, torch.from_numpy(images).permute(0, 3, 1, 2).float(), atol=1e-3)
    assert np.allclose(transforms.denormalize_numpy(numpy_batch), restored.numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
        (np.zeros((4, 4), dtype=np.uint8), "RGB"),
        ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)], "share their size"),
        ([], "empty"),
    ],
)
def test_preprocess_rejects_bad_input(images, message):
    with pytest.raises(ValueError, match=message):
        transforms.preprocess_numpy(images)


def test_resize_image_bilinear_and_label_nearest():
    image = np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    assert transforms.resize_image(image, (4, 6)).shape == (4, 6, 3)
    assert transforms.resize_image(image, (8, 16)) is image
    label = np.zeros((8, 16), dtype=np.uint8)
    label[:, 8:] = 7
    label[0, 0] = 255
    resized = transforms.resize_label(label, (16, 32))
    assert resized.shape == (16, 32) and set(np.unique(resized)) <= {0, 7, 255}
    assert (resized[:, 16:] == 7).all() and (resized[:, 2:16] == 0).all()


def test_random_crop_pads_small_inputs_with_zero_and_ignore():
    image = np.full((4, 6, 3), 9, dtype=np.uint8)
    label = np.ones((4, 6), dtype=np.uint8)
    crop_image, crop_label = transforms.random_crop(
        image, label, (8, 10), cat_max_ratio=1.0, rng=np.random.default_rng(0)
    )
    assert crop_image.shape == (8, 10, 3) and crop_label.shape == (8, 10)
    assert (crop_image[:4, :6] == 9).all() and (crop_image[4:] == 0).all() and (crop_image[:, 6:] == 0).all()
    assert (crop_label[:4, :6] == 1).all() and (crop_label[4:] == 255).all() and (crop_label[:, 6:] == 255).all()


def _one_class_with_patch():
    """32x64 label of class 0 with class 1 in the 16 rightmost columns."""
    label = np.zeros((32, 64), dtype=np.uint8)
    label[:, 48:] = 1
    image = np.repeat(label[:, :, None], 3, axis=2) * 100
    return image, label


def test_random_crop_redraws_until_the_patch_is_included():
    image, label = _one_class_with_patch()
    # Offsets (top, left): (0, 0) and (0, 10) are one class only -> re-drawn; (0, 28) holds 12 of
    # 32 columns of class 1 (37.5%, class 0 62.5% < 75%) -> accepted, as mmseg's RandomCrop.
    rng = ScriptedRng([0, 0, 0, 10, 0, 28, 0, 5])
    crop_image, crop_label = transforms.random_crop(image, label, (32, 32), 0.75, rng=rng)
    assert rng.calls == 6
    assert np.array_equal(crop_label, label[:, 28:60]) and np.array_equal(crop_image, image[:, 28:60])
    assert (crop_label == 1).sum() == 12 * 32


def test_random_crop_keeps_the_last_draw_after_max_tries():
    image, label = _one_class_with_patch()
    rng = ScriptedRng([0, 0] * 10 + [0, 3])
    _, crop_label = transforms.random_crop(image, label, (32, 32), 0.75, rng=rng)
    assert rng.calls == 22  # first draw + 10 re-draws, the last one kept even though it fails
    assert np.array_equal(crop_label, label[:, 3:35])
    single = ScriptedRng([0, 0])
    transforms.random_crop(image, label, (32, 32), 1.0, rng=single)
    assert single.calls == 2  # cat_max_ratio 1: no re-draw


def test_random_crop_with_cat_max_ratio_includes_the_patch_far_more_often():
    image, label = _one_class_with_patch()

    def share_with_patch(ratio):
        hits = 0
        for seed in range(200):
            _, crop = transforms.random_crop(image, label, (32, 32), ratio, rng=np.random.default_rng(seed))
            hits += (crop == 1).mean() > 0.25
        return hits / 200

    assert share_with_patch(1.0) < 0.4  # 8 of 33 offsets qualify
    assert share_with_patch(0.75) > 0.85  # 1 - (25/33)^11 ~ 0.95


def test_hflip_mirrors_image_and_label_together():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    label = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    flipped_image, flipped_label = transforms.hflip(image, label)
    assert np.array_equal(flipped_label, [[3, 2, 1], [6, 5, 4]])
    assert np.array_equal(flipped_image[:, 0], image[:, 2]) and flipped_image.flags["C_CONTIGUOUS"]


def test_normalization_is_bit_identical_to_the_plain_formula():
    from clda_deploy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_numpy

    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    expected = ((image.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    result = normalize_numpy(image)
    assert result.flags["C_CONTIGUOUS"] and result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)
