"""Cityscapes: ``root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
``root/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (labelIds -> trainIds).

A ``<stem>_gtFine_labelTrainIds.png`` (cityscapesScripts' createTrainIdLabelImgs) is accepted when
the labelIds file is absent. UDA reads the target-train split with ``labels=False``: labels are all
ignore and the gtFine folder is not even needed, so adaptation can never see target labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clda_deploy.config import DatasetConfig
from clda_deploy.data.base import DatasetError, Sample, SegmentationDataset, identity_lut, listing, require_dir
from clda_deploy.data.labels import CITYSCAPES_LABELID_TO_TRAINID, CITYSCAPES_VALID_LABELIDS, NUM_CLASSES, build_lut
from clda_deploy.data.layouts import (
    CITYSCAPES_IMAGE_DIR,
    CITYSCAPES_IMAGE_SUFFIX,
    CITYSCAPES_LABEL_DIR,
    CITYSCAPES_LABELID_SUFFIX,
    CITYSCAPES_TRAINID_SUFFIX,
)

LAYOUT = (
    f"<root>/{CITYSCAPES_IMAGE_DIR}/<split>/<city>/<stem>{CITYSCAPES_IMAGE_SUFFIX} and "
    f"<root>/{CITYSCAPES_LABEL_DIR}/<split>/<city>/<stem>{CITYSCAPES_LABELID_SUFFIX} (or {CITYSCAPES_TRAINID_SUFFIX})"
)


def cityscapes_stem(name: str | Path) -> str:
    """``.../aachen_000000_000019_leftImg8bit.png`` -> ``aachen_000000_000019``; the stem that
    Cityscapes' tools and the benchmark's submission format (``<stem>*.png``) expect."""
    file_name = Path(name).name
    if not file_name.endswith(CITYSCAPES_IMAGE_SUFFIX):
        raise ValueError(f"{name}: not a Cityscapes image name (expected <stem>{CITYSCAPES_IMAGE_SUFFIX})")
    return file_name[: -len(CITYSCAPES_IMAGE_SUFFIX)]


class CityscapesDataset(SegmentationDataset):
    """SegmentationDataset that also knows the Cityscapes stem and city of each sample."""

    def stem(self, index: int) -> str:
        """Cityscapes file stem of sample ``index``, e.g. ``aachen_000000_000019``."""
        return cityscapes_stem(self.samples[index].image)

    def city(self, index: int) -> str:
        return self.samples[index].image.parent.name

    def prediction_name(self, index: int, suffix: str = CITYSCAPES_LABELID_SUFFIX) -> str:
        """File name of a prediction in the submission format, e.g. ``<stem>_gtFine_labelIds.png``."""
        return self.stem(index) + suffix


def find_images(image_dir: Path) -> list[Path]:
    """All ``<city>/*_leftImg8bit.png`` under ``image_dir``, sorted."""
    images = sorted(path for path in image_dir.glob(f"*/*{CITYSCAPES_IMAGE_SUFFIX}") if path.is_file())
    if not images:
        raise DatasetError(f"no *{CITYSCAPES_IMAGE_SUFFIX} images in {image_dir}/<city>/; expected layout: {LAYOUT}")
    return images


def _label_sample(image: Path, label_dir: Path, trainid_lut: np.ndarray) -> Sample | None:
    folder = label_dir / image.parent.name
    stem = cityscapes_stem(image)
    if (folder / (stem + CITYSCAPES_LABELID_SUFFIX)).is_file():
        return Sample(image, folder / (stem + CITYSCAPES_LABELID_SUFFIX))
    if (folder / (stem + CITYSCAPES_TRAINID_SUFFIX)).is_file():
        return Sample(image, folder / (stem + CITYSCAPES_TRAINID_SUFFIX), trainid_lut)
    return None


def labelled_samples(images: list[Path], image_dir: Path, label_dir: Path) -> list[Sample]:
    """Pair images with gtFine labels; unpaired images or labels are errors naming the files."""
    trainid_lut = identity_lut(NUM_CLASSES)
    samples = [_label_sample(image, label_dir, trainid_lut) for image in images]
    missing = [image for image, sample in zip(images, samples, strict=True) if sample is None]
    if missing:
        raise DatasetError(
            f"{len(missing)} image(s) in {image_dir} have no *{CITYSCAPES_LABELID_SUFFIX} "
            f"(or *{CITYSCAPES_TRAINID_SUFFIX}) in {label_dir}/<city>/: {listing(path.name for path in missing)}"
        )
    stems = {cityscapes_stem(image) for image in images}
    labels = [*label_dir.glob(f"*/*{CITYSCAPES_LABELID_SUFFIX}"), *label_dir.glob(f"*/*{CITYSCAPES_TRAINID_SUFFIX}")]
    orphans = sorted({path.name for path in labels if path.name.split(f"_{CITYSCAPES_LABEL_DIR}_")[0] not in stems})
    if orphans:
        raise DatasetError(f"{len(orphans)} label(s) in {label_dir} have no image in {image_dir}: {listing(orphans)}")
    return [sample for sample in samples if sample is not None]


def build_cityscapes(cfg: DatasetConfig, labels: bool = True, **dataset_kwargs: Any) -> CityscapesDataset:
    """Cityscapes split ``cfg.split``; ``labels=False`` reads images only (UDA target-train)."""
    root = require_dir(Path(cfg.root), LAYOUT)
    image_dir = require_dir(root / CITYSCAPES_IMAGE_DIR / cfg.split, LAYOUT)
    images = find_images(image_dir)
    if labels:
        label_dir = require_dir(root / CITYSCAPES_LABEL_DIR / cfg.split, LAYOUT)
        samples = labelled_samples(images, image_dir, label_dir)
    else:
        samples = [Sample(image, None) for image in images]
    lut = build_lut(CITYSCAPES_LABELID_TO_TRAINID, CITYSCAPES_VALID_LABELIDS)
    dataset_kwargs.setdefault("resize", cfg.resize)
    return CityscapesDataset(root, samples, lut, format_name="cityscapes", split=cfg.split, **dataset_kwargs)
