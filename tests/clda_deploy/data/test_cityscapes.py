import shutil

import numpy as np
import pytest

from clda_deploy.config import DatasetConfig
from clda_deploy.data import build_dataset
from clda_deploy.data.base import DatasetError
from clda_deploy.data.cityscapes import CityscapesDataset, cityscapes_stem

# Cityscapes labelIds -> trainIds, golden from cityscapesScripts' labels.py.
RAW_IDS = [7, 8, 0, 24, 26, 33, 4, 20]
TRAIN_IDS = [0, 1, 255, 11, 13, 18, 255, 7]


def config(root, split="val", resize=None):
    return DatasetConfig(format="cityscapes", root=str(root), split=split, resize=resize)


def test_label_ids_mapped_to_train_ids(make_cityscapes, disk):
    root = make_cityscapes([disk.stripes(RAW_IDS)])
    dataset = build_dataset(config(root))
    assert isinstance(dataset, CityscapesDataset)
    item = dataset[0]
    assert item["label"][0, ::8].tolist() == TRAIN_IDS
    assert item["name"] == "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    assert dataset.stem(0) == "lindau_000000_000019" and dataset.city(0) == "lindau"
    assert dataset.prediction_name(0) == "lindau_000000_000019_gtFine_labelIds.png"
    assert cityscapes_stem(item["name"]) == "lindau_000000_000019"


def test_label_train_ids_files_are_accepted(make_cityscapes, disk):
    root = make_cityscapes([disk.stripes([0, 1, 255, 18])], kind="labelTrainIds")
    assert build_dataset(config(root))[0]["label"][0, ::16].tolist() == [0, 1, 255, 18]


def test_eval_and_train_shapes(make_cityscapes, disk):
    root = make_cityscapes([disk.stripes(RAW_IDS)], split="train")
    evaluation = build_dataset(config(root, "train", resize=(16, 32)))[0]
    assert evaluation["image"].shape == (3, 16, 32) and evaluation["label_size"] == (32, 64)
    training = build_dataset(config(root, "train", resize=(16, 32)), train=True, crop=(8, 8))[0]
    assert training["image"].shape == (3, 8, 8) and training["label"].shape == (8, 8)


def test_target_train_is_read_without_labels(make_cityscapes, disk):
    root = make_cityscapes([disk.stripes([7, 8])], split="train")
    shutil.rmtree(root / "gtFine")
    dataset = build_dataset(config(root, "train"), train=True, crop=(16, 16), labels=False)
    item = dataset[0]
    assert (item["label"] == 255).all() and item["label"].shape == (16, 16)
    assert (dataset.label_counts(0) == 0).all()


def test_missing_folders_name_the_expected_layout(make_cityscapes, disk, tmp_path):
    with pytest.raises(DatasetError, match=r"absent.*leftImg8bit/<split>/<city>"):
        build_dataset(config(tmp_path / "absent"))
    root = make_cityscapes([disk.stripes(RAW_IDS)])
    with pytest.raises(DatasetError, match=r"leftImg8bit/test"):
        build_dataset(config(root, "test"))
    shutil.rmtree(root / "gtFine")
    with pytest.raises(DatasetError, match=r"gtFine/val"):
        build_dataset(config(root))


def test_unpaired_files_are_errors(make_cityscapes, disk):
    root = make_cityscapes([disk.stripes(RAW_IDS), disk.stripes(RAW_IDS)])
    label = root / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(DatasetError, match=r"no \*_gtFine_labelIds\.png.*lindau_000001_000019_leftImg8bit\.png"):
        build_dataset(config(root))
    disk.write_label(label, disk.stripes(RAW_IDS))
    disk.write_label(root / "gtFine" / "val" / "ulm" / "ulm_000005_000019_gtFine_labelIds.png", disk.stripes([7]))
    with pytest.raises(DatasetError, match=r"have no image.*ulm_000005_000019_gtFine_labelIds\.png"):
        build_dataset(config(root))


def test_size_mismatch_and_bad_ids(make_cityscapes, disk):
    root = make_cityscapes([disk.stripes([7, 34])])
    with pytest.raises(DatasetError, match=r"lindau_000000_000019_gtFine_labelIds\.png.*\[34\]"):
        build_dataset(config(root))[0]
    disk.write_label(
        root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", np.zeros((16, 64))
    )
    with pytest.raises(DatasetError, match=r"leftImg8bit\.png is 64x32 but .*labelIds\.png is 64x16"):
        build_dataset(config(root))
