"""Users' own data: ``root/images/*.{png,jpg,jpeg}``, ``root/masks/<same stem>.png`` (8-bit class
indices, 255 ignore) and ``root/classes.yaml``::

    classes:                       # or a plain list of names
      - {name: road, color: [128, 64, 128]}
      - {name: car, color: [0, 0, 142]}
    ignore_index: 255              # optional

Mask values outside 0..K-1 that are not the ignore index are errors naming the file and the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clda_deploy.config import DatasetConfig
from clda_deploy.data.base import DatasetError, SegmentationDataset, identity_lut, listing, pair_by_key, require_dir
from clda_deploy.data.labels import CITYSCAPES_PALETTE, IGNORE_INDEX

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LAYOUT = "<root>/images/*.png|jpg|jpeg, <root>/masks/<same stem>.png (class indices, 255 ignore), <root>/classes.yaml"


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX


def default_color(index: int) -> tuple[int, int, int]:
    """Cityscapes colours first, then a deterministic spread for further classes."""
    if index < len(CITYSCAPES_PALETTE):
        return CITYSCAPES_PALETTE[index]
    return ((index * 67) % 256, (index * 131) % 256, (index * 197) % 256)


def _parse_class(entry: Any, index: int, path: Path) -> tuple[str, tuple[int, int, int]]:
    if isinstance(entry, str):
        return entry, default_color(index)
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise DatasetError(f"{path}: class {index} must be a name or a {{name, color}} mapping, got {entry!r}")
    unknown = set(entry) - {"name", "color"}
    if unknown:
        raise DatasetError(f"{path}: class {index} has unknown keys {sorted(unknown)}; allowed: name, color")
    color = entry.get("color", default_color(index))
    valid = isinstance(color, (list, tuple)) and len(color) == 3
    if not valid or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color):
        raise DatasetError(f"{path}: class {entry['name']!r} color must be [r, g, b] integers in 0..255, got {color!r}")
    return entry["name"], (int(color[0]), int(color[1]), int(color[2]))


def _ignore_index(data: Any, num_classes: int, path: Path) -> int:
    ignore = data.get("ignore_index", IGNORE_INDEX) if isinstance(data, dict) else IGNORE_INDEX
    if isinstance(ignore, bool) or not isinstance(ignore, int) or not 0 <= ignore <= 255:
        raise DatasetError(f"{path}: ignore_index must be an integer in 0..255, got {ignore!r}")
    if ignore < num_classes:
        raise DatasetError(f"{path}: ignore_index {ignore} is also a class index; use a value >= {num_classes}")
    return ignore


def read_class_table(path: Path) -> ClassTable:
    """Parse and validate ``classes.yaml``: names unique and non-empty, colours [r,g,b], at most 255
    classes (8-bit masks with an ignore value)."""
    if not path.is_file():
        raise DatasetError(f"class list not found: {path}; expected layout: {LAYOUT}")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(data, dict):
        unknown = set(data) - {"classes", "ignore_index"}
        if unknown:
            raise DatasetError(f"{path}: unknown keys {sorted(unknown)}; allowed: classes, ignore_index")
    entries = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{path}: expected 'classes:' with a non-empty list of names or {{name, color}} entries")
    if len(entries) > 255:
        raise DatasetError(f"{path}: {len(entries)} classes do not fit 8-bit masks (at most 255)")
    parsed = [_parse_class(entry, index, path) for index, entry in enumerate(entries)]
    names = [name for name, _ in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates or not all(name.strip() for name in names):
        raise DatasetError(f"{path}: class names must be unique and non-empty; duplicates: {duplicates}")
    ignore = _ignore_index(data, len(names), path)
    return ClassTable(tuple(names), tuple(color for _, color in parsed), ignore)


def find_images(image_dir: Path) -> dict[str, Path]:
    """``{stem: path}`` of the images; two images with one stem (a.png, a.jpg) are an error."""
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if path.stem in images:
            both = f"{images[path.stem].name}, {path.name}"
            raise DatasetError(f"{image_dir}: two images share the stem {path.stem!r} ({both}); rename one")
        images[path.stem] = path
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}; expected layout: {LAYOUT}")
    return images


def build_folder(cfg: DatasetConfig, labels: bool = True, **dataset_kwargs: Any) -> SegmentationDataset:
    """Custom dataset from ``cfg.root`` (single split; ``cfg.split`` only names caches)."""
    root = require_dir(Path(cfg.root), LAYOUT)
    table = read_class_table(root / "classes.yaml")
    image_dir = require_dir(root / "images", LAYOUT)
    images = find_images(image_dir)
    if labels:
        mask_dir = require_dir(root / "masks", LAYOUT)
        masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
        wrong = [path.name for path in masks.values() if path.suffix.lower() != ".png"]
        if wrong:
            raise DatasetError(f"masks must be PNG (lossless class indices); found in {mask_dir}: {listing(wrong)}")
        samples = pair_by_key(images, masks, image_dir, mask_dir)
    else:
        samples = [(images[key], None) for key in sorted(images)]
    dataset_kwargs.setdefault("resize", cfg.resize)
    lut = identity_lut(len(table.names), table.ignore_index)
    return SegmentationDataset(
        root, samples, lut, class_names=table.names, palette=table.palette, format_name="folder", split=cfg.split,
        **dataset_kwargs,
    )  # fmt: skip
