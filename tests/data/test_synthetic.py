"""SynthCity generator: determinism, file layout and ids, class coverage, domain gap, bad input."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clda_deploy.data import synthetic
from clda_deploy.data.labels import CITYSCAPES_LABELID_TO_TRAINID, GTA5_ID_TO_TRAINID, NUM_CLASSES
from clda_deploy.data.synthetic import generate_synthcity, render_scene
from clda_deploy.data.synthetic_style import (
    COLOUR_FIELDS,
    COLOUR_GAP,
    CONDITION_GAP,
    SOURCE_STYLE,
    STREET_STYLE,
    TARGET_CAMERA,
    TARGET_STYLE,
    CameraResponse,
    camera_color,
    resolve_style,
    target_style,
)

HEIGHT, WIDTH = 64, 128  # small, but poles and traffic lights still cover pixels


def _to_train_ids(label_ids: np.ndarray, table: dict[int, int]) -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in table.items():
        lut[label_id] = train_id
    return lut[label_ids]


@pytest.mark.parametrize("domain", ["source", "target"])
def test_render_scene_is_deterministic_and_well_formed(domain: str) -> None:
    image, labels = render_scene(3, 5, domain, HEIGHT, WIDTH)
    again_image, again_labels = render_scene(3, 5, domain, HEIGHT, WIDTH)
    other_image, other_labels = render_scene(3, 6, domain, HEIGHT, WIDTH)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert labels.shape == (HEIGHT, WIDTH) and labels.dtype == np.uint8
    assert int(labels.max()) < NUM_CLASSES
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(image, other_image) and not np.array_equal(labels, other_labels)
    assert not np.array_equal(image, render_scene(4, 5, domain, HEIGHT, WIDTH)[0])  # the seed matters too


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
    city, stem = synthetic.cityscapes_name("train", 0)
    gt_path = out / "target" / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png"
    target_label_ids = np.asarray(Image.open(gt_path))
    np.testing.assert_array_equal(_to_train_ids(target_label_ids, CITYSCAPES_LABELID_TO_TRAINID), target_train_ids)
    written = np.asarray(Image.open(out / "target" / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png"))
    np.testing.assert_array_equal(written, target_image)


def test_every_class_appears_in_any_40_consecutive_source_images() -> None:
    present = np.zeros(NUM_CLASSES, dtype=bool)
    for index in range(17, 57):  # a window that does not start at a multiple of the schedule period
        present[np.unique(render_scene(0, index, "source", HEIGHT, WIDTH)[1])] = True
    assert present.all(), f"missing trainIds {np.flatnonzero(~present).tolist()}"


def test_every_class_appears_in_small_source_and_val_runs(tmp_path: Path) -> None:
    summary = generate_synthcity(tmp_path / "run", 40, 1, 40, HEIGHT, WIDTH, seed=2, workers=2, progress=False)
    for split in ("source", "target_val"):
        frequencies = summary["class_frequencies"][split]
        assert len(frequencies) == NUM_CLASSES
        assert all(value > 0 for value in frequencies.values()), f"{split}: {frequencies}"
        assert abs(sum(frequencies.values()) - 1.0) < 1e-6


def _mean_road_color(domain: str, gap: float, count: int = 40) -> np.ndarray:
    """Average over images of each image's mean road colour (every image weighs the same)."""
    means = []
    for index in range(count):
        image, labels = render_scene(1, index, domain, HEIGHT, WIDTH, gap=gap)
        means.append(image[labels == 0].astype(np.float64).mean(axis=0))
    return np.mean(means, axis=0)


def test_domains_differ_at_gap_one_and_match_at_gap_zero() -> None:
    source = _mean_road_color("source", 1.0)
    assert np.abs(source - _mean_road_color("target", 1.0)).max() > 30
    assert np.abs(source - _mean_road_color("target", 0.0)).max() < 12  # sampling noise only
    zero_gap = dataclasses.replace(resolve_style("target", 0.0), name=SOURCE_STYLE.name)
    assert zero_gap == SOURCE_STYLE
    halfway = resolve_style("target", 0.5)
    assert SOURCE_STYLE.noise_sigma < halfway.noise_sigma < TARGET_STYLE.noise_sigma
    assert halfway.palette[0][0] != SOURCE_STYLE.palette[0][0]


def test_camera_response_golden_values() -> None:
    identity = CameraResponse(white_balance=(1.0, 1.0, 1.0), saturation=1.0, contrast=1.0, gamma=1.0, gain=1.0)
    assert camera_color((60, 62, 96), identity) == (60, 62, 96)
    grey = CameraResponse(white_balance=(1.0, 1.0, 1.0), saturation=0.0, contrast=1.0, gamma=1.0, gain=1.0)
    assert camera_color((255, 0, 0), grey) == (76, 76, 76)  # Rec. 601 luma of red: 0.299 * 255
    assert camera_color((255, 255, 255), CameraResponse((2.0, 2.0, 2.0), 1.0, 1.0, 1.0, 1.0)) == (255, 255, 255)
    # The default street camera on the source road colour (white balance, saturation 0.45, contrast 0.8,
    # gamma 1.25, worked through by hand): warm, desaturated, darker.
    assert camera_color((60, 62, 96), TARGET_CAMERA) == (60, 57, 57)


def test_street_palette_is_the_source_palette_through_the_camera() -> None:
    for source_materials, street_materials in zip(SOURCE_STYLE.palette, STREET_STYLE.palette, strict=True):
        assert street_materials == tuple(camera_color(color, TARGET_CAMERA) for color in source_materials)
    assert STREET_STYLE.tyre_color == camera_color(SOURCE_STYLE.tyre_color, TARGET_CAMERA)


def test_target_style_takes_colours_and_conditions_at_their_own_gaps() -> None:
    assert TARGET_STYLE == target_style(COLOUR_GAP, CONDITION_GAP)
    assert resolve_style("target", 1.0) is TARGET_STYLE
    # Colours 1.2 times the camera's change, clipped to 0..255 (golden: the source road colour).
    road, street_road = SOURCE_STYLE.palette[0][0], STREET_STYLE.palette[0][0]
    assert (road, street_road) == ((60, 62, 96), (60, 57, 57))
    assert TARGET_STYLE.palette[0][0] == (60, 56, 49)  # 62 - 5 * 1.2 = 56, 96 - 39 * 1.2 = 49.2
    assert target_style(1.0, 1.0) == dataclasses.replace(STREET_STYLE, name="target")
    # Conditions half way: noise 0 -> 5 gives 2.5, texture 0.04 -> 0.32 gives 0.18.
    assert TARGET_STYLE.noise_sigma == pytest.approx(2.5)
    assert TARGET_STYLE.texture_strength == pytest.approx(0.18)
    only_colour = target_style(1.0, 0.0)
    for field in dataclasses.fields(TARGET_STYLE):
        expected = STREET_STYLE if field.name in COLOUR_FIELDS else SOURCE_STYLE
        if field.name != "name":
            assert getattr(only_colour, field.name) == getattr(expected, field.name), field.name


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"domain": "night"}, "domain"),
        ({"height": 0}, "height"),
        ({"width": -4}, "width"),
        ({"gap": 1.6}, "gap"),
        ({"gap": -0.1}, "gap"),
        ({"index": -1}, "index"),
        ({"seed": -3}, "seed"),
    ],
)
def test_render_scene_rejects_bad_arguments(arguments: dict, name: str) -> None:
    call = {"seed": 0, "index": 0, "domain": "source", "height": HEIGHT, "width": WIDTH, **arguments}
    with pytest.raises(ValueError, match=name):
        render_scene(**call)


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

    monkeypatch.setattr(synthetic, "_write_sample", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_synthcity(tmp_path / "out", 1, 1, 1, 32, 64, workers=1, progress=False)
    assert not any(tmp_path.iterdir())
