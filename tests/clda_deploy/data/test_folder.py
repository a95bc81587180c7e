import numpy as np
import pytest

from clda_deploy.config import DatasetConfig
from clda_deploy.data import build_dataset
from clda_deploy.data.base import DatasetError

CLASSES = """
classes:
  - {name: background, color: [0, 0, 0]}
  - {name: crop, color: [0, 200, 0]}
  - {name: weed, color: [200, 0, 0]}
"""


def config(root, resize=None):
    return DatasetConfig(format="folder", root=str(root), resize=resize)


def test_masks_are_class_indices_with_ignore(make_folder, disk):
    root = make_folder([disk.stripes([0, 1, 2, 255])], CLASSES, extension=".jpg")
    dataset = build_dataset(config(root, resize=(16, 32)))
    assert dataset.class_names == ("background", "crop", "weed") and dataset.num_classes == 3
    assert dataset.palette == ((0, 0, 0), (0, 200, 0), (200, 0, 0))
    item = dataset[0]
    assert item["label"][0, ::16].tolist() == [0, 1, 2, 255]
    assert item["image"].shape == (3, 16, 32) and item["name"] == "images/frame0.jpg"


def test_plain_name_list_and_custom_ignore_index(make_folder, disk):
    root = make_folder([disk.stripes([0, 1, 200])], "classes: [sky, ground]\nignore_index: 200\n")
    dataset = build_dataset(config(root))
    assert dataset.class_names == ("sky", "ground") and len(dataset.palette) == 2
    assert dataset[0]["label"][0, ::22].tolist() == [0, 1, 255]
    root.joinpath("classes.yaml").write_text("[sky, ground]\n")
    assert build_dataset(config(root)).class_names == ("sky", "ground")


def test_mask_values_beyond_the_classes_name_file_and_values(make_folder, disk):
    root = make_folder([disk.stripes([0, 3, 7])], CLASSES)
    with pytest.raises(DatasetError, match=r"masks/frame0\.png.*\[3, 7\]"):
        build_dataset(config(root))[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "class list not found"),
        ("classes: [a, b, a]", r"unique.*\['a'\]"),
        ("classes: []", "non-empty list"),
        ("classes: [{name: a, color: [1, 2]}]", r"color must be \[r, g, b\]"),
        ("classes: [{name: a, colour: [1, 2, 3]}]", "unknown keys"),
        ("classes: [a]\nignore_index: 0", "also a class index"),
        ("classes: [a]\nignored: 255", "unknown keys"),
        ("classes: [a\n", "not valid YAML"),
    ],
)
def test_bad_class_lists(make_folder, disk, text, message):
    root = make_folder([disk.stripes([0])], text)
    with pytest.raises(DatasetError, match=message) as error:
        build_dataset(config(root))
    assert "classes.yaml" in str(error.value)


def test_pairing_errors(make_folder, disk):
    root = make_folder([disk.stripes([0]), disk.stripes([1])], CLASSES)
    disk.write_label(root / "masks" / "extra.png", disk.stripes([0]))
    with pytest.raises(DatasetError, match=r"have no image.*extra\.png"):
        build_dataset(config(root))
    (root / "masks" / "extra.png").unlink()
    (root / "masks" / "frame1.png").unlink()
    with pytest.raises(DatasetError, match=r"have no label.*frame1\.png"):
        build_dataset(config(root))
    disk.write_image(root / "images" / "frame0.jpg", disk.random_image())
    with pytest.raises(DatasetError, match=r"frame0\.jpg, frame0\.png|frame0\.png, frame0\.jpg"):
        build_dataset(config(root))


def test_non_png_masks_and_missing_folders(make_folder, disk, tmp_path):
    root = make_folder([disk.stripes([0])], CLASSES)
    (root / "masks" / "frame0.png").rename(root / "masks" / "frame0.jpg")
    with pytest.raises(DatasetError, match=r"must be PNG.*frame0\.jpg"):
        build_dataset(config(root))
    with pytest.raises(DatasetError, match=r"custom_missing.*classes\.yaml"):
        build_dataset(config(tmp_path / "custom_missing"))
    (root / "masks" / "frame0.jpg").unlink()
    (root / "masks").rmdir()
    with pytest.raises(DatasetError, match=r"masks"):
        build_dataset(config(root))
    assert (build_dataset(config(root), labels=False)[0]["label"] == 255).all()


def test_size_mismatch(make_folder, disk):
    root = make_folder([disk.stripes([0])], CLASSES)
    disk.write_label(root / "masks" / "frame0.png", np.zeros((8, 8)))
    with pytest.raises(DatasetError, match=r"frame0\.png is 64x32 but .*frame0\.png is 8x8"):
        build_dataset(config(root))
