"""Tiny on-disk datasets in every supported layout, built in tmp_path (32x64 images by default)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import png
import pytest
from PIL import Image

HEIGHT, WIDTH = 32, 64


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Keep every user-cache write (Synthia labels, RCS stats fallback) inside the test folder."""
    cache = tmp_path / "user_cache"
    monkeypatch.setenv("CLDA_CACHE_DIR", str(cache))
    return cache


def random_image(seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def write_label(path: Path, ids: np.ndarray, palette: bool = False) -> Path:
    """8-bit single-channel id PNG (mode P like real GTA5 labels, or L)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.ascontiguousarray(ids.astype(np.uint8))
    if palette:
        image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
        image.putpalette([value for index in range(256) for value in (index, 255 - index, index // 2)])
    else:
        image = Image.fromarray(ids)
    image.save(path)
    return path


def write_synthia_label(path: Path, ids: np.ndarray, bitdepth: int = 16, channels: int = 3) -> Path:
    """SYNTHIA-style label: class id in the FIRST channel; the others hold instance-like junk > 255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = ids.shape
    if channels == 3:
        other = np.full_like(ids, 300 if bitdepth == 16 else 7)
        pixels = np.stack([ids, other, other + 1], axis=-1).reshape(height, width * 3)
    else:
        pixels = ids
    writer = png.Writer(width, height, greyscale=channels == 1, bitdepth=bitdepth)
    with open(path, "wb") as handle:
        writer.write(handle, pixels.astype(np.uint16 if bitdepth == 16 else np.uint8).tolist())
    return path


def stripes(ids: list[int], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A label of vertical stripes, one per id, left to right (last stripe takes the remainder)."""
    label = np.zeros((height, width), dtype=np.int64)
    step = width // len(ids)
    for position, value in enumerate(ids):
        label[:, position * step :] = value
    return label


@pytest.fixture
def disk():
    """The writers above, for tests (importing from conftest is ambiguous across test folders)."""
    return SimpleNamespace(
        random_image=random_image, write_image=write_image, write_label=write_label,
        write_synthia_label=write_synthia_label, stripes=stripes, height=HEIGHT, width=WIDTH,
    )  # fmt: skip


@pytest.fixture
def make_gta5(tmp_path):
    def make(labels: list[np.ndarray], root: Path | None = None) -> Path:
        root = root or tmp_path / "gta5"
        for index, label in enumerate(labels):
            height, width = label.shape
            write_image(root / "images" / f"{index:05d}.png", random_image(index, height, width))
            write_label(root / "labels" / f"{index:05d}.png", label, palette=True)
        return root

    return make


@pytest.fixture
def make_synthia(tmp_path):
    def make(labels: list[np.ndarray], root: Path | None = None) -> Path:
        root = root or tmp_path / "synthia"
        for index, label in enumerate(labels):
            height, width = label.shape
            write_image(root / "RGB" / f"{index:07d}.png", random_image(index, height, width))
            write_synthia_label(root / "GT" / "LABELS" / f"{index:07d}.png", label)
        return root

    return make


@pytest.fixture
def make_cityscapes(tmp_path):
    def make(labels: list[np.ndarray], split: str = "val", city: str = "lindau", kind: str = "labelIds") -> Path:
        root = tmp_path / "cityscapes"
        for index, label in enumerate(labels):
            stem = f"{city}_{index:06d}_000019"
            height, width = label.shape
            write_image(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", random_image(index, height, width)
            )
            write_label(root / "gtFine" / split / city / f"{stem}_gtFine_{kind}.png", label)
        return root

    return make


@pytest.fixture
def make_folder(tmp_path):
    def make(masks: list[np.ndarray], classes_yaml: str | None, extension: str = ".png") -> Path:
        root = tmp_path / "custom"
        for index, mask in enumerate(masks):
            height, width = mask.shape
            write_image(root / "images" / f"frame{index}{extension}", random_image(index, height, width))
            write_label(root / "masks" / f"frame{index}.png", mask)
        if classes_yaml is not None:
            (root / "classes.yaml").write_text(classes_yaml)
        return root

    return make
