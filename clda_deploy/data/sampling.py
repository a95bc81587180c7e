"""Rare class sampling (DAFormer, Hoyer et al. 2022, §3.3): sample a class c with
P(c) ∝ exp((1 − f_c) / T), then an image holding > 3000 pixels of c, then re-draw its crop until it
holds > 1500 pixels of c. Pixel thresholds are DAFormer's at GTA5 scale (1280×720) and scale linearly
with image area, so they mean the same on small images.

The per-image class counts are computed once per dataset (at the training resolution) and cached as
JSON next to the data (or in the user cache); a missing, empty, corrupt or stale file is rebuilt
with a message, not trusted: DAFormer users often hit exactly these stats-file problems.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from clda_deploy.config import ConfigError
from clda_deploy.data.base import DatasetError, SegmentationDataset, is_writable_dir, root_hash, user_cache_dir

REFERENCE_PIXELS = 1280 * 720  # GTA5 as resized by DAFormer
MIN_PIXELS = 3000  # DAFormer rcs_min_pixels: an image joins class c's pool above this
CROP_MIN_PIXELS = 1500  # DAFormer rcs_min_crop_ratio 0.5 x 3000: a crop must hold this much of c
STATS_VERSION = 1


def scaled_pixels(count: float, height: int, width: int, reference_pixels: int = REFERENCE_PIXELS) -> int:
    """A pixel threshold given at the reference size (1280×720), scaled to a ``height×width`` image."""
    return int(round(count * height * width / reference_pixels))


@dataclass
class ClassStats:
    """Per-image class pixel counts at the training resolution."""

    names: list[str]  # image names relative to the dataset root, in dataset order
    counts: np.ndarray  # int64 [N, K] pixels of each class (ignore excluded)
    sizes: np.ndarray  # int64 [N, 2] (height, width) the counts were taken at

    def to_json(self) -> dict[str, Any]:
        images = [
            {"name": name, "height": int(size[0]), "width": int(size[1]), "counts": [int(v) for v in row]}
            for name, size, row in zip(self.names, self.sizes, self.counts, strict=True)
        ]
        return {"version": STATS_VERSION, "num_classes": int(self.counts.shape[1]), "images": images}

    @classmethod
    def from_json(cls, data: Any, num_classes: int) -> ClassStats:
        """Parse and validate; raises ValueError saying what is wrong."""
        if not isinstance(data, dict) or data.get("version") != STATS_VERSION:
            raise ValueError(f"not a version-{STATS_VERSION} statistics file")
        if data.get("num_classes") != num_classes:
            raise ValueError(f"it has {data.get('num_classes')} classes, the dataset {num_classes}")
        images = data.get("images")
        if not isinstance(images, list) or not images:
            raise ValueError("it lists no images")
        counts = np.asarray([image["counts"] for image in images], dtype=np.int64)
        if counts.shape != (len(images), num_classes) or (counts < 0).any():
            raise ValueError(f"its counts table has shape {counts.shape}, expected ({len(images)}, {num_classes})")
        sizes = np.asarray([(image["height"], image["width"]) for image in images], dtype=np.int64)
        return cls([str(image["name"]) for image in images], counts, sizes)


def compute_class_stats(dataset: SegmentationDataset, progress: bool = True) -> ClassStats:
    """Count the pixels of each class in every label (the slow part: reads every label once)."""
    names, counts, sizes = [], [], []
    for index in tqdm(range(len(dataset)), desc="class statistics", unit="img", disable=not progress):
        names.append(dataset.name(index))
        counts.append(dataset.label_counts(index))
        sizes.append(dataset.label_shape(index))
    return ClassStats(names, np.asarray(counts, dtype=np.int64), np.asarray(sizes, dtype=np.int64))


def stats_file_name(dataset: SegmentationDataset) -> str:
    """``rcs_stats_<format>_<split>_<H>x<W>.json`` (``native`` when images are not resized)."""
    size = "native" if dataset.resize is None else f"{dataset.resize[0]}x{dataset.resize[1]}"
    split = dataset.split or "all"
    return f"rcs_stats_{dataset.format_name}_{split}_{size}.json"


def stats_path(dataset: SegmentationDataset) -> Path:
    """Next to the dataset when its root is writable, else the user cache (keyed by the root)."""
    if is_writable_dir(dataset.root):
        return dataset.root / stats_file_name(dataset)
    return user_cache_dir() / f"{root_hash(dataset.root)}_{stats_file_name(dataset)}"


def read_class_stats(path: Path, dataset: SegmentationDataset) -> ClassStats | None:
    """The cached statistics, or None (with a message saying why) when missing, corrupt or stale."""
    if not path.is_file():
        return None
    try:
        stats = ClassStats.from_json(json.loads(path.read_text()), dataset.num_classes)
        expected = [dataset.name(index) for index in range(len(dataset))]
        if stats.names != expected:
            raise ValueError(f"it lists {len(stats.names)} images, the dataset has {len(expected)} (or other names)")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        print(f"rare class sampling statistics {path} are unusable ({exc}); rebuilding them")
        return None
    return stats


def write_class_stats(stats: ClassStats, path: Path) -> None:
    """Atomic write (temp file + rename) so a crash never leaves a truncated file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(stats.to_json()))
    os.replace(temporary, path)


def class_stats(dataset: SegmentationDataset, progress: bool = True, path: str | Path | None = None) -> ClassStats:
    """Cached per-image class counts of ``dataset``; computed once and written to ``path``
    (default ``stats_path(dataset)``)."""
    path = stats_path(dataset) if path is None else Path(path)
    stats = read_class_stats(path, dataset)
    if stats is not None:
        return stats
    print(f"building rare class sampling statistics for {len(dataset)} images (once) -> {path}")
    stats = compute_class_stats(dataset, progress=progress)
    write_class_stats(stats, path)
    return stats


class RareClassSampler:
    """Draw ``(class_id, image_index)`` pairs as DAFormer's RCS; deterministic given ``seed``.

    Classes absent from the data never get drawn; present classes without any image above the
    pixel threshold are dropped (with a message) and the rest renormalized.
    """

    def __init__(
        self,
        stats: ClassStats,
        num_classes: int,
        temperature: float = 0.01,
        min_pixels: int = MIN_PIXELS,
        reference_pixels: int = REFERENCE_PIXELS,
        seed: int = 0,
        crop_min_pixels: int = CROP_MIN_PIXELS,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"rare class sampling temperature must be positive, got {temperature}")
        counts = stats.counts[:, :num_classes].astype(np.float64)
        total = counts.sum(axis=0)
        if total.sum() <= 0:
            raise DatasetError("rare class sampling: the labels contain no labelled pixel at all")
        self.num_classes, self.stats, self.reference_pixels = num_classes, stats, reference_pixels
        self.crop_min_pixels = crop_min_pixels
        self.class_frequencies = total / total.sum()
        areas = stats.sizes[:, 0] * stats.sizes[:, 1]
        thresholds = np.round(min_pixels * areas / reference_pixels)
        qualifying = counts > thresholds[:, None]
        present = [c for c in range(num_classes) if total[c] > 0]
        self.pools = {c: np.flatnonzero(qualifying[:, c]) for c in present if qualifying[:, c].any()}
        self.skipped_classes = [c for c in present if c not in self.pools]
        if not self.pools:
            raise DatasetError(f"rare class sampling: no image holds > {min_pixels} pixels (at 1280x720) of any class")
        if self.skipped_classes:
            print(f"rare class sampling: classes {self.skipped_classes} have no image above the threshold; skipped")
        self.classes = np.asarray(sorted(self.pools), dtype=np.int64)
        logits = (1.0 - self.class_frequencies[self.classes]) / temperature
        weights = np.exp(logits - logits.max())
        self.class_probabilities = np.zeros(num_classes, dtype=np.float64)
        self.class_probabilities[self.classes] = weights / weights.sum()
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_dataset(cls, dataset: SegmentationDataset, progress: bool = True, **kwargs: Any) -> RareClassSampler:
        """Sampler over ``dataset`` using its cached statistics (built once when missing)."""
        return cls(class_stats(dataset, progress=progress), dataset.num_classes, **kwargs)

    def sample(self) -> tuple[int, int]:
        """``(class_id, image_index)``: class by P(c), then an image of that class's pool, uniformly."""
        class_id = int(self.rng.choice(self.classes, p=self.class_probabilities[self.classes]))
        return class_id, int(self.rng.choice(self.pools[class_id]))

    def crop_threshold(self, image_index: int) -> int:
        """Pixels of the sampled class a crop of image ``image_index`` must exceed (1500 at 1280x720)."""
        height, width = self.stats.sizes[image_index]
        return scaled_pixels(self.crop_min_pixels, int(height), int(width), self.reference_pixels)

    def sample_crop(self, dataset: SegmentationDataset, max_tries: int = 10) -> dict[str, Any]:
        """One training sample: draw (c, i), then re-draw i's crop up to ``max_tries`` times until it
        holds > the crop threshold of c. Adds ``"rcs_class"`` to the sample."""
        class_id, image_index = self.sample()
        item = dataset.get_crop_with_class(image_index, class_id, self.crop_threshold(image_index), max_tries)
        item["rcs_class"] = class_id
        return item
