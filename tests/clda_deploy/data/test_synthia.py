import os

import numpy as np
import pytest
from PIL import Image

from clda_deploy.config import DatasetConfig
from clda_deploy.data import build_dataset, synthia
from clda_deploy.data.base import DatasetError

# SYNTHIA ids -> trainIds, golden from DAFormer's tools/convert_datasets/synthia.py.
RAW_IDS = [3, 4, 2, 1, 8, 11, 0, 13, 22, 21]
TRAIN_IDS = [0, 1, 2, 10, 13, 18, 255, 255, 255, 3]


def config(root, resize=None):
    return DatasetConfig(format="synthia", root=str(root), resize=resize)


def test_reads_first_channel_of_16_bit_labels(tmp_path, disk):
    ids = disk.stripes([3, 21, 0])
    path = disk.write_synthia_label(tmp_path / "label.png", ids)
    assert np.asarray(Image.open(path))[..., 0].max() == 0  # why pypng: Pillow truncates 16-bit RGB
    assert np.array_equal(synthia.read_synthia_label(path), ids)
    gray = disk.write_synthia_label(tmp_path / "gray.png", ids, bitdepth=8, channels=1)
    assert np.array_equal(synthia.read_synthia_label(gray), ids)


def test_ids_mapped_through_the_converted_cache(make_synthia, disk, capsys):
    root = make_synthia([disk.stripes(RAW_IDS, width=80)])
    dataset = build_dataset(config(root))
    assert "converting 1 SYNTHIA labels" in capsys.readouterr().out
    cached = root / "GT" / "LABELS_trainIds" / "0000000.png"
    assert cached.is_file() and Image.open(cached).mode == "L"
    assert dataset[0]["label"][0, ::8].tolist() == TRAIN_IDS
    assert dataset[0]["name"] == "RGB/0000000.png"


def test_cache_is_reused_and_refreshed_when_stale(make_synthia, disk, monkeypatch, capsys):
    root = make_synthia([disk.stripes(RAW_IDS, width=80), disk.stripes([3])])
    build_dataset(config(root))
    capsys.readouterr()

    def fail(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(synthia, "convert_label", fail)
    assert build_dataset(config(root))[1]["label"].unique().tolist() == [0]
    assert "converting" not in capsys.readouterr().out
    monkeypatch.undo()
    source = root / "GT" / "LABELS" / "0000001.png"
    disk.write_synthia_label(source, disk.stripes([1]))
    stamp = (root / "GT" / "LABELS_trainIds" / "0000001.png").stat().st_mtime + 10
    os.utime(source, (stamp, stamp))
    assert build_dataset(config(root))[1]["label"].unique().tolist() == [10]
    assert "converting 1 SYNTHIA labels" in capsys.readouterr().out


def test_read_only_root_converts_into_the_user_cache(make_synthia, disk, monkeypatch, isolated_cache):
    root = make_synthia([disk.stripes(RAW_IDS, width=80)])
    writable = synthia.is_writable_dir
    monkeypatch.setattr(synthia, "is_writable_dir", lambda folder: root not in folder.parents and writable(folder))
    dataset = build_dataset(config(root))
    assert not (root / "GT" / "LABELS_trainIds").exists()
    caches = list(isolated_cache.glob("synthia_*/0000000.png"))
    assert len(caches) == 1 and dataset.samples[0].label == caches[0]
    assert dataset[0]["label"][0, ::8].tolist() == TRAIN_IDS


def test_invalid_ids_name_the_file_and_ids(make_synthia, disk):
    root = make_synthia([disk.stripes([3, 23, 300])])
    with pytest.raises(DatasetError, match=r"LABELS/0000000\.png.*\[23, 300\]"):
        build_dataset(config(root))
    assert not (root / "GT" / "LABELS_trainIds" / "0000000.png").exists()


def test_layout_errors(make_synthia, disk, tmp_path):
    with pytest.raises(DatasetError, match=r"RGB/\*\.png"):
        build_dataset(config(tmp_path / "missing"))
    root = make_synthia([disk.stripes([3]), disk.stripes([3])])
    (root / "GT" / "LABELS" / "0000001.png").unlink()
    with pytest.raises(DatasetError, match=r"have no label.*0000001\.png"):
        build_dataset(config(root))
    disk.write_synthia_label(root / "GT" / "LABELS" / "0000001.png", np.zeros((20, 64), dtype=np.int64))
    with pytest.raises(DatasetError, match=r"0000001\.png is 64x32 but .*0000001\.png is 64x20"):
        build_dataset(config(root))
    (root / "GT" / "LABELS" / "0000001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    with pytest.raises(DatasetError, match=r"0000001\.png: unreadable"):
        build_dataset(config(root))


def test_unlabelled_mode_skips_conversion(make_synthia, disk):
    root = make_synthia([disk.stripes([3])])
    dataset = synthia.build_synthia(config(root), labels=False)
    assert (dataset[0]["label"] == 255).all()
    assert not (root / "GT" / "LABELS_trainIds").exists()


def test_conversion_in_worker_processes(make_synthia, disk, monkeypatch):
    monkeypatch.setattr(synthia, "POOL_THRESHOLD", 2)
    monkeypatch.setattr(synthia.os, "cpu_count", lambda: 2)
    root = make_synthia([disk.stripes([3]), disk.stripes([1]), disk.stripes([8])])
    dataset = build_dataset(config(root))
    assert [dataset[index]["label"].unique().tolist() for index in range(3)] == [[0], [10], [13]]
