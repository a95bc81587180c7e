import json
import math

import numpy as np
import pytest

from clda_deploy.config import DatasetConfig
from clda_deploy.data import build_dataset, sampling
from clda_deploy.data.sampling import ClassStats, RareClassSampler, scaled_pixels

# Hand-made statistics at GTA scale (720x1280, so DAFormer's 3000-pixel threshold applies as is).
COUNTS = [
    [10000, 5000, 0, 0],
    [20000, 0, 4000, 0],
    [5000, 2000, 0, 0],
    [0, 0, 2500, 0],
]


def gta_scale_stats(counts):
    sizes = np.tile([720, 1280], (len(counts), 1))
    return ClassStats([f"{index}.png" for index in range(len(counts))], np.asarray(counts), sizes)


def expected_probabilities(totals, classes, temperature):
    """P(c) = exp((1 - f_c) / T) / sum, f_c = pixels of c / all labelled pixels."""
    frequencies = [total / sum(totals) for total in totals]
    weights = {c: math.exp((1 - frequencies[c]) / temperature) for c in classes}
    return [weights[c] / sum(weights.values()) if c in weights else 0.0 for c in range(len(totals))]


def test_scaled_pixels():
    assert scaled_pixels(3000, 720, 1280) == 3000
    assert scaled_pixels(1500, 360, 640) == 375
    assert scaled_pixels(3000, 32, 64) == 7  # 3000 * 2048 / 921600 = 6.67


@pytest.mark.parametrize("temperature", [0.1, 0.01])
def test_class_probabilities_golden(temperature):
    sampler = RareClassSampler(gta_scale_stats(COUNTS), num_classes=4, temperature=temperature)
    # totals 35000, 7000, 6500, 0 of 48500 labelled pixels; class 3 is absent -> never drawn.
    expected = expected_probabilities([35000, 7000, 6500, 0], [0, 1, 2], temperature)
    assert np.allclose(sampler.class_probabilities, expected, rtol=1e-12, atol=1e-300)
    assert sampler.class_probabilities[3] == 0.0
    assert {c: pool.tolist() for c, pool in sampler.pools.items()} == {0: [0, 1, 2], 1: [0], 2: [1]}


def test_classes_without_qualifying_images_are_dropped():
    counts = [row[:] for row in COUNTS]
    counts[3][3] = 100  # class 3 present, but no image holds > 3000 pixels of it
    sampler = RareClassSampler(gta_scale_stats(counts), num_classes=4, temperature=0.1)
    assert sampler.skipped_classes == [3] and sampler.class_probabilities[3] == 0.0
    expected = expected_probabilities([35000, 7000, 6500, 100], [0, 1, 2], 0.1)
    assert np.allclose(sampler.class_probabilities, expected)


def test_thresholds_scale_with_image_area():
    stats = ClassStats(["a", "b"], np.asarray([[8, 0], [7, 100]]), np.asarray([[32, 64], [32, 64]]))
    sampler = RareClassSampler(stats, num_classes=2)
    assert sampler.pools[0].tolist() == [0] and sampler.pools[1].tolist() == [1]
    assert sampler.crop_threshold(0) == 3  # 1500 * 2048 / 921600 = 3.33


def test_no_qualifying_image_is_an_error():
    stats = gta_scale_stats([[100, 200], [300, 0]])
    with pytest.raises(ValueError, match="no image holds"):
        RareClassSampler(stats, num_classes=2)


def test_sampling_is_deterministic_and_follows_the_probabilities():
    stats = gta_scale_stats(COUNTS)
    draws = [RareClassSampler(stats, 4, temperature=0.1, seed=3).sample() for _ in range(2)]
    first, second = RareClassSampler(stats, 4, temperature=0.1, seed=3), RareClassSampler(stats, 4, 0.1, seed=3)
    sequence = [first.sample() for _ in range(5000)]
    assert sequence[:50] == [second.sample() for _ in range(50)] and draws[0] == draws[1]
    classes = np.asarray([class_id for class_id, _ in sequence])
    frequencies = np.bincount(classes, minlength=4) / len(classes)
    assert np.allclose(frequencies, first.class_probabilities, atol=0.02)
    assert all(image in first.pools[class_id] for class_id, image in sequence)


def make_dataset(make_gta5, disk, images=2, resize=None):
    labels = []
    for index in range(images):
        label = np.full((32, 64), 7)
        label[10:20, 5 + index : 25 + index] = 26  # 200 pixels of car (trainId 13)
        labels.append(label)
    root = make_gta5(labels)
    return build_dataset(DatasetConfig(format="gta5", root=str(root), resize=resize), train=True, crop=(16, 16))


def test_stats_cached_then_reused(make_gta5, disk, monkeypatch, capsys):
    dataset = make_dataset(make_gta5, disk)
    stats = sampling.class_stats(dataset, progress=False)
    path = dataset.root / "rcs_stats_gta5_train_native.json"
    assert path.is_file() and "building rare class sampling statistics for 2 images (once)" in capsys.readouterr().out
    assert stats.counts[0, 13] == 200 and stats.counts[0, 0] == 32 * 64 - 200 and stats.sizes.tolist() == [[32, 64]] * 2

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sampling, "compute_class_stats", fail)
    again = sampling.class_stats(dataset, progress=False)
    assert np.array_equal(again.counts, stats.counts) and again.names == ["images/00000.png", "images/00001.png"]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"version": 1, "num_classes": 19, "images": []})])
def test_corrupt_or_empty_cache_is_rebuilt(make_gta5, disk, capsys, content):
    dataset = make_dataset(make_gta5, disk, resize=(16, 32))
    path = dataset.root / "rcs_stats_gta5_train_16x32.json"
    path.write_text(content)
    stats = sampling.class_stats(dataset, progress=False)
    output = capsys.readouterr().out
    assert "unusable" in output and "building rare class sampling statistics" in output
    assert stats.counts[0, 13] == 50 and json.loads(path.read_text())["images"][0]["counts"][13] == 50


def test_stale_cache_is_rebuilt(make_gta5, disk, capsys):
    dataset = make_dataset(make_gta5, disk)
    sampling.class_stats(dataset, progress=False)
    disk.write_image(dataset.root / "images" / "00002.png", disk.random_image())
    disk.write_label(dataset.root / "labels" / "00002.png", np.full((32, 64), 7), palette=True)
    grown = build_dataset(DatasetConfig(format="gta5", root=str(dataset.root)))
    capsys.readouterr()
    assert len(sampling.class_stats(grown, progress=False).names) == 3
    assert "it lists 2 images, the dataset has 3" in capsys.readouterr().out


def test_read_only_root_uses_the_user_cache(make_gta5, disk, monkeypatch, isolated_cache):
    dataset = make_dataset(make_gta5, disk)
    monkeypatch.setattr(sampling, "is_writable_dir", lambda folder: False)
    path = sampling.stats_path(dataset)
    assert path.parent == isolated_cache and path.name.endswith("_rcs_stats_gta5_train_native.json")
    sampling.class_stats(dataset, progress=False)
    assert path.is_file() and not (dataset.root / path.name).exists()


def test_sample_crop_holds_the_rare_class(make_gta5, disk):
    dataset = make_dataset(make_gta5, disk, images=3)
    sampler = RareClassSampler.from_dataset(dataset, progress=False, min_pixels=1000, crop_min_pixels=20000)
    assert sampler.crop_threshold(0) == 44  # 20000 * 2048 / 921600
    assert set(sampler.pools) == {0, 13}
    for _ in range(10):
        item = sampler.sample_crop(dataset)
        assert "rcs_class" in item and item["image"].shape == (3, 16, 16)
        if item["rcs_class"] == 13:
            assert (item["label"] == 13).sum() > 44
