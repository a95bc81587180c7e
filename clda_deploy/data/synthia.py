"""SYNTHIA-RAND-CITYSCAPES: ``root/RGB/*.png`` + ``root/GT/LABELS/*.png`` of the same names.

The labels are 16-bit 3-channel PNGs with the class id in the first channel (R; OpenCV's BGR
``[:, :, -1]`` is the same channel). Pillow truncates 16-bit RGB to 8 bits (ids become 0), so they
are decoded with pypng, which is slow in pure Python: each label is converted ONCE to an 8-bit
trainId PNG in ``root/GT/LABELS_trainIds/`` (or the user cache when the root is read-only) and the
cache is read afterwards. DAFormer does this offline (tools/convert_datasets/synthia.py) and users
forget; here it happens on first use, with a message and a progress bar.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import png
from PIL import Image
from tqdm import tqdm

from clda_deploy.config import DatasetConfig
from clda_deploy.data.base import (
    DatasetError,
    SegmentationDataset,
    check_sizes,
    identity_lut,
    is_writable_dir,
    pair_by_key,
    png_files,
    require_dir,
    require_png_images,
    root_hash,
    user_cache_dir,
)
from clda_deploy.data.labels import NUM_CLASSES, SYNTHIA_ID_TO_TRAINID, SYNTHIA_VALID_IDS, build_lut, map_labels

LAYOUT = "<root>/RGB/*.png and <root>/GT/LABELS/*.png with the same file names (16-bit labels, id in channel 1)"
CACHE_NAME = "LABELS_trainIds"
POOL_THRESHOLD = 16  # convert in worker processes from this many files on


def read_synthia_label(path: str | Path) -> np.ndarray:
    """Class ids ``[H,W]`` (uint16) from the FIRST channel of a 1- or 3-channel, 8- or 16-bit PNG."""
    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        dtype = np.uint16 if info["bitdepth"] > 8 else np.uint8
        pixels = np.vstack([np.asarray(row, dtype=dtype) for row in rows])
    except (png.Error, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt SYNTHIA label PNG ({exc})") from None
    return pixels.reshape(height, width, info["planes"])[:, :, 0]


def convert_label(source: str | Path, target: str | Path) -> None:
    """Write the 8-bit trainId PNG of one SYNTHIA label (atomically: temp file + rename, so an
    interrupted conversion never leaves a truncated cache file)."""
    lut = build_lut(SYNTHIA_ID_TO_TRAINID, SYNTHIA_VALID_IDS, size=65536)  # covers every 16-bit value
    try:
        train_ids = map_labels(read_synthia_label(source), lut, source=str(source))
    except DatasetError:
        raise
    except ValueError as exc:
        raise DatasetError(f"{exc} (valid SYNTHIA ids: 0..{max(SYNTHIA_VALID_IDS)})") from None
    target = Path(target)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    Image.fromarray(train_ids).save(temporary, format="PNG")
    os.replace(temporary, target)


def _convert_pair(pair: tuple[str, str]) -> None:
    convert_label(*pair)


def cache_folder(root: Path) -> Path:
    """``root/GT/LABELS_trainIds`` when writable, else ``<user cache>/synthia_<hash of root>``."""
    preferred = root / "GT" / CACHE_NAME
    if is_writable_dir(preferred):
        return preferred
    fallback = user_cache_dir() / f"synthia_{root_hash(root)}"
    if not is_writable_dir(fallback):
        raise DatasetError(f"cannot write the SYNTHIA label cache to {preferred} nor to {fallback}")
    return fallback


def _is_fresh(source: Path, target: Path) -> bool:
    return target.is_file() and target.stat().st_mtime >= source.stat().st_mtime


def ensure_converted(labels: list[Path], cache_dir: Path, progress: bool = True) -> list[Path]:
    """Cached trainId PNG of every label (same file names), converting the missing or stale ones."""
    targets = [cache_dir / label.name for label in labels]
    todo = [(str(s), str(t)) for s, t in zip(labels, targets, strict=True) if not _is_fresh(s, t)]
    if not todo:
        return targets
    print(f"converting {len(todo)} SYNTHIA labels (16-bit) to 8-bit trainId PNGs in {cache_dir} (once) ...")
    bar = tqdm(total=len(todo), desc="synthia labels", unit="file", disable=not progress)
    workers = min(8, os.cpu_count() or 1)
    if len(todo) >= POOL_THRESHOLD and workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_convert_pair, todo, chunksize=8):
                bar.update(1)
    else:
        for pair in todo:
            _convert_pair(pair)
            bar.update(1)
    bar.close()
    return targets


def build_synthia(
    cfg: DatasetConfig, labels: bool = True, progress: bool = True, **dataset_kwargs: Any
) -> SegmentationDataset:
    """SYNTHIA dataset from ``cfg.root``; converts the labels to the trainId cache on first use."""
    root = require_dir(Path(cfg.root), LAYOUT)
    image_dir = root / "RGB"
    images = require_png_images(image_dir, LAYOUT)
    if labels:
        label_dir = require_dir(root / "GT" / "LABELS", LAYOUT)
        pairs = pair_by_key(images, png_files(label_dir), image_dir, label_dir)
        check_sizes(pairs)
        cached = ensure_converted([pair.label for pair in pairs], cache_folder(root), progress)
        samples = [(pair.image, label) for pair, label in zip(pairs, cached, strict=True)]
    else:
        samples = [(images[key], None) for key in sorted(images)]
    dataset_kwargs.setdefault("resize", cfg.resize)
    return SegmentationDataset(
        root, samples, identity_lut(NUM_CLASSES), format_name="synthia", split=cfg.split, validate_sizes=False,
        **dataset_kwargs,
    )  # fmt: skip
