"""Label tables: the 19 Cityscapes trainIds and the id maps of every supported dataset.

Every dataset is mapped to Cityscapes trainIds (0..18) with 255 as ignore, the convention of
DAFormer and the Cityscapes benchmark. The maps are lookup tables (numpy arrays) so that a whole
label image is converted with one fancy-indexing operation.
"""

from __future__ import annotations

import numpy as np

from clda_deploy.errors import CldaError


class LabelIdError(CldaError, ValueError):
    """A label image holds ids outside the dataset's id table; the message names the file and the ids."""


IGNORE_INDEX = 255
NUM_CLASSES = 19

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# Cityscapes labelIds (0..33; -1 "license plate" never appears in gtFine PNGs) -> trainIds.
# From cityscapesScripts/helpers/labels.py; ids not listed here are "ignoreInEval".
CITYSCAPES_LABELID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_VALID_LABELIDS: frozenset[int] = frozenset(range(34))

# GTA5 (Richter et al. 2016) uses the Cityscapes labelIds, so the map is the same one;
# DAFormer's tools/convert_datasets/gta.py writes exactly this table.
GTA5_ID_TO_TRAINID: dict[int, int] = dict(CITYSCAPES_LABELID_TO_TRAINID)
GTA5_VALID_IDS: frozenset[int] = frozenset(range(34))

# SYNTHIA-RAND-CITYSCAPES class ids (first channel of the 16-bit LABELS PNGs) -> trainIds,
# as in DAFormer's tools/convert_datasets/synthia.py. 0 void, 13 parking-slot, 14 road-work
# and 22 lanemarking are ignored. Terrain (16), truck (18) and train (20) are mapped but
# (nearly) absent from RAND-CITYSCAPES, hence the 16-class evaluation subset.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
    8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}  # fmt: skip
SYNTHIA_VALID_IDS: frozenset[int] = frozenset(range(23))

# Synthia evaluation subsets (trainIds): 16 classes (no terrain, truck, train) and
# 13 classes (also no wall, fence, pole), as reported in DAFormer/CLDA tables.
SYNTHIA_16_CLASSES: tuple[int, ...] = tuple(i for i in range(NUM_CLASSES) if i not in (9, 14, 16))
SYNTHIA_13_CLASSES: tuple[int, ...] = tuple(i for i in SYNTHIA_16_CLASSES if i not in (3, 4, 5))
EVAL_SUBSETS: dict[int, tuple[int, ...]] = {
    19: tuple(range(NUM_CLASSES)),
    16: SYNTHIA_16_CLASSES,
    13: SYNTHIA_13_CLASSES,
}

# Cityscapes "thing" classes (instances), used by DAFormer's ImageNet feature distance.
THING_CLASSES: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def build_lut(id_to_train: dict[int, int], valid_ids: frozenset[int], size: int = 256) -> np.ndarray:
    """Lookup table `lut[raw_id] -> trainId`; 255 for valid-but-ignored ids.

    Ids outside ``valid_ids`` map to -1 so that a loader can report them as corrupt labels
    instead of silently ignoring them.
    """
    lut = np.full(size, -1, dtype=np.int16)
    for raw in valid_ids:
        lut[raw] = IGNORE_INDEX
    for raw, train in id_to_train.items():
        lut[raw] = train
    return lut


def map_labels(raw: np.ndarray, lut: np.ndarray, source: str = "label") -> np.ndarray:
    """Map a raw id image through ``lut``; raise naming ``source`` and the bad ids if any."""
    if raw.size and int(raw.max()) >= lut.shape[0]:
        bad = np.unique(raw[raw >= lut.shape[0]])[:10].tolist()
        raise LabelIdError(f"{source}: label ids {bad} are outside the dataset's id table")
    mapped = lut[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])[:10].tolist()
        raise LabelIdError(f"{source}: label ids {bad} are outside the dataset's id table")
    return mapped.astype(np.uint8)


def trainid_to_labelid_lut() -> np.ndarray:
    """trainId -> Cityscapes labelId (for the benchmark's submission format); ignore -> 0."""
    lut = np.zeros(256, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABELID_TO_TRAINID.items():
        lut[train_id] = label_id
    return lut


def colorize(labels: np.ndarray, palette: tuple[tuple[int, int, int], ...] = CITYSCAPES_PALETTE) -> np.ndarray:
    """trainId map [H,W] -> RGB uint8 [H,W,3]; ignore and unknown ids are black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table[labels]
