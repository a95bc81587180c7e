import numpy as np
import pytest

from clda_deploy.data import labels


def test_nineteen_classes_with_palette():
    assert len(labels.CITYSCAPES_CLASSES) == labels.NUM_CLASSES == 19
    assert len(labels.CITYSCAPES_PALETTE) == 19
    assert labels.CITYSCAPES_CLASSES[0] == "road" and labels.CITYSCAPES_CLASSES[18] == "bicycle"


@pytest.mark.parametrize(
    ("raw", "train"),
    # Golden values from cityscapesScripts' labels.py.
    [(7, 0), (8, 1), (11, 2), (12, 3), (13, 4), (17, 5), (19, 6), (20, 7), (21, 8), (22, 9), (23, 10),
     (24, 11), (25, 12), (26, 13), (27, 14), (28, 15), (31, 16), (32, 17), (33, 18),
     (0, 255), (1, 255), (6, 255), (9, 255), (10, 255), (14, 255), (15, 255), (16, 255), (18, 255),
     (29, 255), (30, 255)],
)  # fmt: skip
def test_cityscapes_and_gta_ids(raw, train):
    for id_map, valid in ((labels.CITYSCAPES_LABELID_TO_TRAINID, labels.CITYSCAPES_VALID_LABELIDS),
                          (labels.GTA5_ID_TO_TRAINID, labels.GTA5_VALID_IDS)):  # fmt: skip
        lut = labels.build_lut(id_map, valid)
        assert labels.map_labels(np.array([raw]), lut)[0] == train


@pytest.mark.parametrize(
    ("raw", "train"),
    # Golden values from DAFormer's tools/convert_datasets/synthia.py.
    [(1, 10), (2, 2), (3, 0), (4, 1), (5, 4), (6, 8), (7, 5), (8, 13), (9, 7), (10, 11), (11, 18),
     (12, 17), (15, 6), (16, 9), (17, 12), (18, 14), (19, 15), (20, 16), (21, 3),
     (0, 255), (13, 255), (14, 255), (22, 255)],
)  # fmt: skip
def test_synthia_ids(raw, train):
    lut = labels.build_lut(labels.SYNTHIA_ID_TO_TRAINID, labels.SYNTHIA_VALID_IDS, size=65536)
    assert labels.map_labels(np.array([raw], dtype=np.uint16), lut)[0] == train


def test_synthia_subsets():
    names = labels.CITYSCAPES_CLASSES
    sixteen = {names[i] for i in labels.SYNTHIA_16_CLASSES}
    thirteen = {names[i] for i in labels.SYNTHIA_13_CLASSES}
    assert len(sixteen) == 16 and not sixteen & {"terrain", "truck", "train"}
    assert len(thirteen) == 13 and not thirteen & {"wall", "fence", "pole"}
    assert thirteen < sixteen


def test_out_of_table_ids_raise_with_source():
    lut = labels.build_lut(labels.GTA5_ID_TO_TRAINID, labels.GTA5_VALID_IDS)
    with pytest.raises(ValueError, match=r"frame\.png: label ids \[40, 200\]"):
        labels.map_labels(np.array([7, 40, 200]), lut, source="frame.png")
    with pytest.raises(ValueError, match="outside"):
        labels.map_labels(np.array([300]), lut, source="x")


def test_trainid_to_labelid_inverts_cityscapes_map():
    lut = labels.trainid_to_labelid_lut()
    for label_id, train_id in labels.CITYSCAPES_LABELID_TO_TRAINID.items():
        assert lut[train_id] == label_id
    assert lut[255] == 0


def test_colorize_uses_palette_and_blacks_out_ignore():
    rgb = labels.colorize(np.array([[0, 255]], dtype=np.uint8))
    assert tuple(rgb[0, 0]) == labels.CITYSCAPES_PALETTE[0] and tuple(rgb[0, 1]) == (0, 0, 0)
