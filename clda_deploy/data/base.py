"""The one dataset class every format builds: (image, label) file pairs + a raw-id -> trainId table.

Bad input fails loudly with the file name and the problem (missing folders, unpaired files, size
mismatches read from PNG headers at construction, unknown label ids and corrupt files at read time):
silently skipped samples shift class statistics and make results irreproducible.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from clda_deploy.data import transforms
from clda_deploy.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, IGNORE_INDEX, map_labels
from clda_deploy.errors import CldaError

MAX_LISTED = 10  # file names quoted in one error message


class DatasetError(CldaError, ValueError):
    """A problem with a dataset on disk; the message names the file or folder and the fix."""


class Sample(NamedTuple):
    image: Path
    label: Path | None  # None: an unlabelled sample (label all ignore)
    lut: np.ndarray | None = None  # per-sample raw-id table overriding the dataset's one


def user_cache_dir() -> Path:
    """``$CLDA_CACHE_DIR``, else ``$XDG_CACHE_HOME/clda_deploy``, else ``~/.cache/clda_deploy``."""
    if os.environ.get("CLDA_CACHE_DIR"):
        return Path(os.environ["CLDA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "clda_deploy"


def root_hash(root: str | Path) -> str:
    """Short stable hash of a dataset root, to keep per-dataset caches apart in the user cache."""
    return hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]


def is_writable_dir(folder: Path) -> bool:
    """Create ``folder`` if needed and prove it is writable with a probe file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def listing(items: Iterable[Any]) -> str:
    """``a, b, c (+N more)`` for error messages."""
    items = [str(item) for item in items]
    extra = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + extra


def require_dir(folder: Path, layout: str) -> Path:
    """Raise naming ``folder`` and the expected ``layout`` when it does not exist."""
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}; expected layout: {layout}")
    return folder


def png_files(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the PNG files directly in ``folder``."""
    return {path.stem: path for path in sorted(folder.iterdir()) if path.is_file() and path.suffix.lower() == ".png"}


def require_png_images(image_dir: Path, layout: str) -> dict[str, Path]:
    """``png_files`` of an existing, non-empty image folder; errors name the folder and the layout."""
    images = png_files(require_dir(image_dir, layout))
    if not images:
        raise DatasetError(f"no PNG images in {image_dir}; expected layout: {layout}")
    return images


def pair_by_key(images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path) -> list[Sample]:
    """Pair files sharing a key (stem); any image without label or label without image is an error."""
    missing_labels = sorted(set(images) - set(labels))
    if missing_labels:
        names = listing(images[key].name for key in missing_labels)
        raise DatasetError(f"{len(missing_labels)} image(s) in {image_dir} have no label in {label_dir}: {names}")
    missing_images = sorted(set(labels) - set(images))
    if missing_images:
        names = listing(labels[key].name for key in missing_images)
        raise DatasetError(f"{len(missing_images)} label(s) in {label_dir} have no image in {image_dir}: {names}")
    return [Sample(images[key], labels[key]) for key in sorted(images)]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image file ({exc})") from None


def check_sizes(samples: Sequence[Sample]) -> None:
    """Every label must have its image's size (a few real GTA5 images do not: report them all)."""
    mismatched = []
    for sample in samples:
        if sample.label is None:
            continue
        image_wh, label_wh = image_size(sample.image), image_size(sample.label)
        if image_wh != label_wh:
            image_text, label_text = f"{image_wh[0]}x{image_wh[1]}", f"{label_wh[0]}x{label_wh[1]}"
            mismatched.append(f"{sample.image} is {image_text} but {sample.label} is {label_text}")
    if mismatched:
        raise DatasetError(
            f"{len(mismatched)} label(s) differ in size from their image (width x height); fix or remove "
            f"these pairs: {listing(mismatched)}"
        )


def read_image(path: Path) -> np.ndarray:
    """uint8 RGB ``[H,W,3]``; the error names the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or corrupt image file ({exc})") from None


def read_raw_label(path: Path) -> np.ndarray:
    """Raw id map ``[H,W]`` from a single-channel (L, P, I;16, I) PNG."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DatasetError(f"{path}: expected a single-channel id PNG (mode L or P), got mode {image.mode}")
            raw = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: unreadable or corrupt label file ({exc})") from None
    if raw.dtype.kind == "i" and raw.size and raw.min() < 0:
        raise DatasetError(f"{path}: negative label ids {np.unique(raw[raw < 0])[:MAX_LISTED].tolist()}")
    return raw


def identity_lut(num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Table for files that already hold class indices: 0..K-1 kept, ``ignore_index`` -> 255,
    everything else -1 (reported as an error by ``map_labels``)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = IGNORE_INDEX
    return lut


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/label pairs -> ``{"image": float32 [3,H,W] normalized, "label": int64 [H,W] trainIds
    (255 ignore), "name": path relative to root, "index": int}``.

    Training mode: resize image and label to ``resize``, random ``crop`` with ``cat_max_ratio``,
    random horizontal flip. Eval mode: only the image is resized; the label keeps its native size
    (``"label_size"``: (h, w)), because mmseg/DAFormer score logits rescaled to the label's size.
    """

    def __init__(
        self,
        root: str | Path,
        samples: Sequence[Sample | tuple[Path, Path | None]],
        lut: np.ndarray,
        *,
        class_names: Sequence[str] = CITYSCAPES_CLASSES,
        palette: Sequence[tuple[int, int, int]] = CITYSCAPES_PALETTE,
        resize: tuple[int, int] | None = None,
        crop: tuple[int, int] | None = None,
        train: bool = False,
        cat_max_ratio: float = 0.75,
        flip: bool = False,
        seed: int = 0,
        format_name: str = "custom",
        split: str = "",
        validate_sizes: bool = True,
    ) -> None:
        self.root = Path(root)
        self.samples = [Sample(*sample) for sample in samples]
        if not self.samples:
            raise DatasetError(f"no images found in dataset folder {self.root}")
        self.lut = lut
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.palette = tuple(tuple(int(v) for v in color) for color in palette)
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        self.train, self.cat_max_ratio, self.flip, self.seed = train, cat_max_ratio, flip, seed
        self.format_name, self.split = format_name, split
        self._draws: dict[int, int] = {}
        if validate_sizes:
            check_sizes(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        """Path of image ``index`` relative to the dataset root (posix), used to name outputs."""
        path = self.samples[index].image
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def read_label(self, index: int, image_shape: tuple[int, int] | None = None) -> np.ndarray:
        """trainId map uint8 ``[H,W]`` at native size; all 255 for an unlabelled sample."""
        sample = self.samples[index]
        if sample.label is None:
            if image_shape is None:
                width, height = image_size(sample.image)
                image_shape = (height, width)
            return np.full(image_shape, IGNORE_INDEX, dtype=np.uint8)
        lut = self.lut if sample.lut is None else sample.lut
        try:
            return map_labels(read_raw_label(sample.label), lut, source=str(sample.label))
        except DatasetError:
            raise
        except ValueError as exc:
            raise DatasetError(str(exc)) from None

    def read_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Native-size uint8 RGB ``[H,W,3]`` and trainIds ``[H,W]``."""
        image = read_image(self.samples[index].image)
        label = self.read_label(index, image.shape[:2])
        if label.shape != image.shape[:2]:
            raise DatasetError(f"{self.samples[index].label}: size {label.shape} differs from image {image.shape[:2]}")
        return image, label

    def rng(self, index: int) -> np.random.Generator:
        """Generator for one draw of sample ``index``: seeded by (seed, index, how often this index
        was drawn in this process, the DataLoader worker's seed), so a given seed and order gives the
        same crops while each epoch still gets new ones (workers get a fresh torch seed per epoch)."""
        draw = self._draws.get(index, 0)
        self._draws[index] = draw + 1
        worker = torch.utils.data.get_worker_info()
        worker_seed = 0 if worker is None else int(worker.seed)
        return np.random.default_rng([int(self.seed), int(index), draw, worker_seed])

    def augment(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Training pipeline (DAFormer order): resize -> random crop (cat_max_ratio) -> flip(p=0.5)."""
        if self.resize is not None:
            image, label = transforms.resize_image(image, self.resize), transforms.resize_label(label, self.resize)
        if self.crop is not None:
            image, label = transforms.random_crop(image, label, self.crop, self.cat_max_ratio, IGNORE_INDEX, rng)
        if self.flip and rng.random() < 0.5:
            image, label = transforms.hflip(image, label)
        return image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"sample index {index} out of range for {len(self.samples)} samples")
        return self.make_item(index, *self.read_sample(index))

    def make_item(self, index: int, image: np.ndarray, label: np.ndarray) -> dict[str, Any]:
        """Sample dict from decoded native-size arrays (augmented in training mode)."""
        item: dict[str, Any] = {"name": self.name(index), "index": index}
        if self.train:
            image, label = self.augment(image, label, self.rng(index))
        else:
            item["label_size"] = tuple(label.shape)
            if self.resize is not None:
                image = transforms.resize_image(image, self.resize)
        item["image"] = transforms.to_tensor_normalized(image)
        item["label"] = torch.from_numpy(label.astype(np.int64))
        return item

    def label_counts(self, index: int) -> np.ndarray:
        """int64 ``[num_classes]`` pixel counts of each class at the resized training resolution
        (ignore excluded), the per-image statistics of rare class sampling."""
        label = self.read_label(index)
        if self.resize is not None:
            label = transforms.resize_label(label, self.resize)
        counts = np.bincount(label.ravel(), minlength=256)
        return counts[: self.num_classes].astype(np.int64)

    def label_shape(self, index: int) -> tuple[int, int]:
        """(height, width) of the training-resolution label of sample ``index``."""
        if self.resize is not None:
            return self.resize
        width, height = image_size(self.samples[index].image)
        return height, width

    def get_crop_with_class(self, index: int, class_id: int, min_pixels: int, max_tries: int = 10) -> dict[str, Any]:
        """A training sample of image ``index`` whose crop holds > ``min_pixels`` of ``class_id``:
        DAFormer's rare class sampling re-draws the crop up to ``max_tries`` times and keeps the last
        one if none qualifies. The files are decoded once; only the augmentation is re-drawn."""
        image, label = self.read_sample(index)
        item = self.make_item(index, image, label)
        for _ in range(max_tries):
            if int((item["label"] == class_id).sum()) > min_pixels:
                break
            item = self.make_item(index, image, label)
        return item
