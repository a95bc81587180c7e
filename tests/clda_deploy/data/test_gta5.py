import numpy as np
import pytest
import torch

from clda_deploy.config import DatasetConfig
from clda_deploy.data import DATASET_FORMATS, base, build_dataset
from clda_deploy.data.base import DatasetError, SegmentationDataset
from clda_deploy.data.gta5 import build_gta5

# GTA5 ids (= Cityscapes labelIds) -> trainIds, golden from cityscapesScripts' labels.py.
RAW_IDS = [0, 1, 7, 8, 11, 26, 33, 6]
TRAIN_IDS = [255, 255, 0, 1, 2, 13, 18, 255]


def config(root, resize=None):
    return DatasetConfig(format="gta5", root=str(root), resize=resize)


def test_ids_are_mapped_to_train_ids(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)])
    dataset = build_dataset(config(root))
    assert isinstance(dataset, SegmentationDataset) and len(dataset) == 1 and "gta5" in DATASET_FORMATS
    item = dataset[0]
    assert item["label"].dtype == torch.int64
    assert item["label"][0, ::8].tolist() == TRAIN_IDS
    assert item["name"] == "images/00000.png" and item["index"] == 0
    assert dataset.num_classes == 19 and dataset.class_names[0] == "road" and len(dataset.palette) == 19


def test_eval_resizes_only_the_image(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)])
    item = build_dataset(config(root, resize=(16, 40)))[0]
    assert item["image"].shape == (3, 16, 40) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 64) and item["label_size"] == (32, 64)


def test_train_resizes_crops_and_flips(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)])
    dataset = build_dataset(config(root, resize=(48, 96)), train=True, crop=(24, 40), flip=True)
    item = dataset[0]
    assert item["image"].shape == (3, 24, 40) and item["label"].shape == (24, 40) and "label_size" not in item
    assert set(item["label"].unique().tolist()) <= set(TRAIN_IDS)


def test_flip_moves_image_and_label_together(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)])
    plain = build_dataset(config(root))[0]
    flips = [build_dataset(config(root), train=True, flip=True, seed=seed)[0] for seed in range(8)]
    flipped = [item for item in flips if not torch.equal(item["label"], plain["label"])]
    assert 0 < len(flipped) < 8
    for item in flipped:
        assert torch.equal(item["label"], plain["label"].flip(-1))
        assert torch.equal(item["image"], plain["image"].flip(-1))


def test_same_seed_same_crops_new_crops_each_draw(make_gta5, disk):
    labels = [disk.stripes(RAW_IDS), disk.stripes([7, 8, 26, 11])]
    root = make_gta5(labels)

    def crops(seed):
        dataset = build_dataset(config(root), train=True, crop=(16, 16), flip=True, seed=seed, cat_max_ratio=1.0)
        return [dataset[index]["image"] for index in (0, 1, 0, 1, 0, 1)]

    first, again, other = crops(0), crops(0), crops(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert not (torch.equal(first[0], first[2]) and torch.equal(first[2], first[4]))  # epochs differ


def test_label_counts_and_crop_with_class(make_gta5, disk):
    label = np.full((32, 64), 7)
    label[20:30, 50:60] = 26  # a 10x10 car (trainId 13)
    root = make_gta5([label])
    dataset = build_dataset(config(root), train=True, crop=(16, 16), cat_max_ratio=1.0)
    counts = dataset.label_counts(0)
    assert counts.shape == (19,) and counts[0] == 32 * 64 - 100 and counts[13] == 100
    assert build_dataset(config(root, resize=(64, 128))).label_counts(0)[13] == 400
    item = dataset.get_crop_with_class(0, 13, min_pixels=20)
    assert (item["label"] == 13).sum() > 20


def test_crop_with_absent_class_gives_up_after_max_tries(make_gta5, monkeypatch):
    root = make_gta5([np.full((32, 64), 7)])
    dataset = build_dataset(config(root), train=True, crop=(16, 16))
    reads = []
    original = base.read_image
    monkeypatch.setattr(base, "read_image", lambda path: reads.append(path) or original(path))
    item = dataset.get_crop_with_class(0, 13, min_pixels=1, max_tries=10)
    assert item["label"].shape == (16, 16) and len(reads) == 1  # decoded once, crops re-drawn
    assert dataset._draws[0] == 11


def test_unlabelled_mode_needs_no_labels_folder(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)])
    for path in (root / "labels").iterdir():
        path.unlink()
    (root / "labels").rmdir()
    item = build_gta5(config(root), labels=False)[0]
    assert (item["label"] == 255).all() and item["label"].shape == (32, 64)


def test_missing_root_names_folder_and_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere.*images/\*\.png"):
        build_dataset(config(tmp_path / "nowhere"))


def test_empty_images_folder(tmp_path):
    (tmp_path / "gta5" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no PNG images"):
        build_dataset(config(tmp_path / "gta5"))


def test_image_without_label_and_label_without_image(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)] * 2)
    (root / "labels" / "00001.png").unlink()
    with pytest.raises(DatasetError, match=r"have no label.*00001\.png"):
        build_dataset(config(root))
    (root / "images" / "00001.png").unlink()
    disk.write_label(root / "labels" / "00007.png", disk.stripes([7]))
    with pytest.raises(DatasetError, match=r"have no image.*00007\.png"):
        build_dataset(config(root))


def test_label_size_mismatch_is_reported_not_skipped(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS), disk.stripes(RAW_IDS)])
    disk.write_label(root / "labels" / "00001.png", np.zeros((30, 64)))
    with pytest.raises(DatasetError, match=r"00001\.png is 64x32 but .*00001\.png is 64x30"):
        build_dataset(config(root))


def test_unknown_label_ids_name_the_file(make_gta5, disk):
    root = make_gta5([disk.stripes([7, 34, 200])])
    dataset = build_dataset(config(root))
    with pytest.raises(DatasetError, match=r"labels/00000\.png.*\[34, 200\]"):
        dataset[0]


def test_corrupt_files_name_the_file(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS), disk.stripes(RAW_IDS)])
    (root / "images" / "00000.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"images/00000\.png: unreadable"):
        build_dataset(config(root))
    disk.write_image(root / "images" / "00000.png", disk.random_image())
    data = (root / "images" / "00001.png").read_bytes()
    (root / "images" / "00001.png").write_bytes(data[: len(data) // 2])  # header fine, pixels truncated
    dataset = build_dataset(config(root))
    with pytest.raises(DatasetError, match=r"images/00001\.png: unreadable"):
        dataset[1]


def test_rgb_label_is_rejected(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)])
    disk.write_image(root / "labels" / "00000.png", disk.random_image())
    with pytest.raises(DatasetError, match=r"00000\.png: expected a single-channel"):
        build_dataset(config(root))[0]


def test_dataloader_batches(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)] * 3)
    dataset = build_dataset(config(root), train=True, crop=(16, 16))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["label"].shape == (3, 16, 16)


def test_worker_crops_are_reproducible_and_change_per_epoch(make_gta5, disk):
    root = make_gta5([disk.stripes(RAW_IDS)] * 2)
    dataset = build_dataset(config(root), train=True, crop=(16, 16), flip=True, cat_max_ratio=1.0)

    def epochs():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)
        return [next(iter(loader))["image"] for _ in range(2)]

    first, second = epochs(), epochs()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], first[1])
