"""SynthCity on disk: GTA5 and Cityscapes layouts and ids, reuse and refusal of folders, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clda_deploy.data.labels import CITYSCAPES_LABELID_TO_TRAINID, GTA5_ID_TO_TRAINID, NUM_CLASSES
from clda_deploy.data.synthcity import generate_synthcity, render_scene, writer

HEIGHT, WIDTH = 64, 128  # small, but poles and traffic lights still cover pixels


def _to_train_ids(label_ids: np.ndarray, table: dict[int, int]) -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in table.items():
        lut[label_id] = train_id
    return lut[label_ids]


def test_generate_writes_gta5_and_cityscapes_layouts(tmp_path: Path) -> None:
    out = tmp_path / "synthcity"
    summary = generate_synthcity(out, 3, 4, 2, HEIGHT, WIDTH, seed=7, workers=1, progress=False)
    assert summary["counts"] == {"source": 3, "target_train": 4, "target_val": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthcity"]  # no partial folder left behind
    assert sorted(p.name for p in (out / "source" / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in (out / "source" / "labels").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    cities = {}
    for split, count in (("train", 4), ("val", 2)):
        images = sorted((out / "target" / "leftImg8bit" / split).glob("*/*.png"))
        assert len(images) == count
        for path in images:
            match = re.fullmatch(r"([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png", path.name)
            assert match and match.group(1) == path.parent.name
            label_name = path.name.replace("leftImg8bit", "gtFine_labelIds")
            assert (out / "target" / "gtFine" / split / path.parent.name / label_name).is_file()
        cities[split] = {path.parent.name for path in images}
    assert cities["train"].isdisjoint(cities["val"])
    record = json.loads((out / "synthcity.json").read_text())
    assert record["parameters"]["seed"] == 7 and record["summary"]["size"] == [HEIGHT, WIDTH]


def test_written_files_hold_label_ids_and_the_rendered_pixels(tmp_path: Path) -> None:
    out = tmp_path / "synthcity"
    generate_synthcity(out, 2, 2, 1, HEIGHT, WIDTH, seed=11, workers=1, progress=False)
    image, train_ids = render_scene(11, 1, "source", HEIGHT, WIDTH)
    with Image.open(out / "source" / "labels" / "00001.png") as label_file:
        assert label_file.mode == "L"
        label_ids = np.asarray(label_file)
    assert set(np.unique(label_ids).tolist()) <= set(GTA5_ID_TO_TRAINID)  # labelIds, not trainIds
    np.testing.assert_array_equal(_to_train_ids(label_ids, GTA5_ID_TO_TRAINID), train_ids)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "source" / "images" / "00001.png")), image)
    target_image, target_train_ids = render_scene(11, 0, "target", HEIGHT, WIDTH)
    city, stem = writer.cityscapes_name("train", 0)
    gt_path = out / "target" / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png"
    target_label_ids = np.asarray(Image.open(gt_path))
    np.testing.assert_array_equal(_to_train_ids(target_label_ids, CITYSCAPES_LABELID_TO_TRAINID), target_train_ids)
    written = np.asarray(Image.open(out / "target" / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png"))
    np.testing.assert_array_equal(written, target_image)


def test_every_class_appears_in_small_source_and_val_runs(tmp_path: Path) -> None:
    summary = generate_synthcity(tmp_path / "run", 40, 1, 40, HEIGHT, WIDTH, seed=2, workers=2, progress=False)
    for split in ("source", "target_val"):
        frequencies = summary["class_frequencies"][split]
        assert len(frequencies) == NUM_CLASSES
        assert all(value > 0 for value in frequencies.values()), f"{split}: {frequencies}"
        assert abs(sum(frequencies.values()) - 1.0) < 1e-6


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"num_source": 0}, "num_source"),
        ({"num_target": -1}, "num_target"),
        ({"num_val": 0}, "num_val"),
        ({"height": 0}, "height"),
        ({"width": 0}, "width"),
        ({"gap": 2.0}, "gap"),
        ({"workers": 0}, "workers"),
        ({"seed": -1}, "seed"),
    ],
)
def test_generate_rejects_bad_arguments(tmp_path: Path, arguments: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        generate_synthcity(tmp_path / "out", **{"num_source": 1, "num_target": 1, "num_val": 1, **arguments})
    assert not any(tmp_path.iterdir())


def test_existing_folder_is_reused_or_refused(tmp_path: Path) -> None:
    out = tmp_path / "synthcity"
    arguments = {"num_source": 1, "num_target": 1, "num_val": 1, "height": 32, "width": 64, "workers": 1}
    generate_synthcity(out, progress=False, **arguments)
    assert generate_synthcity(out, progress=False, **arguments)["reused"] is True
    with pytest.raises(FileExistsError, match=r"synthcity.*num_source"):  # also a ValueError, for the CLI
        generate_synthcity(out, progress=False, **{**arguments, "num_source": 2})
    assert (out / "source" / "images" / "00000.png").is_file()  # user data untouched
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "holiday.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match="photos"):
        generate_synthcity(stranger, progress=False, **arguments)


def test_failed_run_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(task: tuple) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "_write_sample", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthcity(tmp_path / "out", 1, 1, 1, 32, 64, workers=1, progress=False)
    assert not any(tmp_path.iterdir())
