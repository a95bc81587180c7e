"""GTA5 (Richter et al. 2016): ``root/images/*.png`` + ``root/labels/*.png`` of the same names.

Labels hold Cityscapes labelIds (palette PNGs), mapped to trainIds with ``GTA5_ID_TO_TRAINID``.
A few real GTA5 images differ in size from their labels; they are reported by name, not skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clda_deploy.config import DatasetConfig
from clda_deploy.data.base import SegmentationDataset, pair_by_key, png_files, require_dir, require_png_images
from clda_deploy.data.labels import GTA5_ID_TO_TRAINID, GTA5_VALID_IDS, build_lut
from clda_deploy.data.layouts import GTA5_IMAGE_DIR, GTA5_LABEL_DIR

LAYOUT = (
    f"<root>/{GTA5_IMAGE_DIR}/*.png and <root>/{GTA5_LABEL_DIR}/*.png with the same file names "
    "(labels: GTA5/Cityscapes labelIds)"
)


def build_gta5(cfg: DatasetConfig, labels: bool = True, **dataset_kwargs: Any) -> SegmentationDataset:
    """GTA5 dataset from ``cfg.root`` (single split; ``cfg.split`` only names caches); ``labels=False``
    reads images only."""
    root = require_dir(Path(cfg.root), LAYOUT)
    image_dir = root / GTA5_IMAGE_DIR
    images = require_png_images(image_dir, LAYOUT)
    if labels:
        label_dir = require_dir(root / GTA5_LABEL_DIR, LAYOUT)
        samples = pair_by_key(images, png_files(label_dir), image_dir, label_dir)
    else:
        samples = [(images[key], None) for key in sorted(images)]
    lut = build_lut(GTA5_ID_TO_TRAINID, GTA5_VALID_IDS)
    dataset_kwargs.setdefault("resize", cfg.resize)
    return SegmentationDataset(root, samples, lut, format_name="gta5", split=cfg.split, **dataset_kwargs)
