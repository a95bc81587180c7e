"""How GTA5 and Cityscapes name their files on disk: the one spelling the loaders and SynthCity share.

The loaders (``gta5.py``, ``cityscapes.py``) read these layouts and SynthCity's writer produces them,
so both import the names from here; a typo on either side would otherwise yield a benchmark the
loaders cannot find. Kept apart from the loaders because they import torch, which the generator's
worker processes should not pay for.
"""

from __future__ import annotations

# GTA5: <root>/images/<name>.png and <root>/labels/<name>.png (labelIds) with the same names.
GTA5_IMAGE_DIR = "images"
GTA5_LABEL_DIR = "labels"

# Cityscapes: <root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png and
# <root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png, where <stem> is <city>_<sequence>_<frame>.
CITYSCAPES_IMAGE_DIR = "leftImg8bit"
CITYSCAPES_LABEL_DIR = "gtFine"
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_LABELID_SUFFIX = "_gtFine_labelIds.png"
CITYSCAPES_TRAINID_SUFFIX = "_gtFine_labelTrainIds.png"  # cityscapesScripts' createTrainIdLabelImgs


def gta5_paths(name: str) -> tuple[str, str]:
    """(image, label) paths of the GTA5 sample ``name`` (e.g. "00012.png") relative to the root."""
    return f"{GTA5_IMAGE_DIR}/{name}", f"{GTA5_LABEL_DIR}/{name}"


def cityscapes_stem_of(city: str, sequence: int, frame: int) -> str:
    """Cityscapes file stem, e.g. ("aachen", 12, 19) -> "aachen_000012_000019"."""
    return f"{city}_{sequence:06d}_{frame:06d}"


def cityscapes_paths(split: str, city: str, stem: str) -> tuple[str, str]:
    """(image, labelIds) paths of one Cityscapes sample relative to the root."""
    return (
        f"{CITYSCAPES_IMAGE_DIR}/{split}/{city}/{stem}{CITYSCAPES_IMAGE_SUFFIX}",
        f"{CITYSCAPES_LABEL_DIR}/{split}/{city}/{stem}{CITYSCAPES_LABELID_SUFFIX}",
    )
