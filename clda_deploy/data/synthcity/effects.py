"""SynthCity photographic effects: how a ``DomainStyle`` turns a flat rendering into a photograph.

Each class has one procedural material (asphalt, bricks, tiles, foliage, ...); its texture is a fixed
screen-space pattern, computed once per process and image size and cropped at a random offset per
image, so that materials cost a lookup rather than a synthesis per image. The style's knobs scale
the textures, the light, the atmosphere, the optics, the sensor and the codec.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image

from clda_deploy.data.labels import NUM_CLASSES
from clda_deploy.data.synthcity.objects import TrainId
from clda_deploy.data.synthcity.style import DomainStyle

SMOOTH, ASPHALT, BRICKS, STRIPES, TILES, FOLIAGE, CLOUDS, GRASS, FABRIC = range(9)
# The procedural material (texture) each class is painted with.
_MATERIAL_OF = {
    TrainId.ROAD: ASPHALT, TrainId.SIDEWALK: TILES, TrainId.BUILDING: BRICKS, TrainId.WALL: BRICKS,
    TrainId.FENCE: STRIPES, TrainId.POLE: FABRIC, TrainId.TRAFFIC_LIGHT: SMOOTH, TrainId.TRAFFIC_SIGN: SMOOTH,
    TrainId.VEGETATION: FOLIAGE, TrainId.TERRAIN: GRASS, TrainId.SKY: CLOUDS, TrainId.PERSON: FABRIC,
    TrainId.RIDER: FABRIC, TrainId.CAR: SMOOTH, TrainId.TRUCK: STRIPES, TrainId.BUS: SMOOTH,
    TrainId.TRAIN: SMOOTH, TrainId.MOTORCYCLE: SMOOTH, TrainId.BICYCLE: SMOOTH,
}  # fmt: skip
assert sorted(_MATERIAL_OF) == list(range(NUM_CLASSES)), "every class needs a material"
CLASS_MATERIAL = np.array([_MATERIAL_OF[train_id] for train_id in range(NUM_CLASSES)], dtype=np.intp)
GROUND_CLASSES = np.zeros(256, dtype=bool)
GROUND_CLASSES[[TrainId.ROAD, TrainId.SIDEWALK, TrainId.TERRAIN]] = True  # they receive cast shadows


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Value noise with features of about ``cell`` pixels, roughly in [-1, 1]."""
    low = rng.standard_normal((max(2, int(height / cell) + 2), max(2, int(width / cell) + 2))).astype(np.float32)
    image = Image.fromarray(low, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image) * 0.6, -1.0, 1.0)


def _brick_pattern(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    brick_height = max(2, round(4 * scale))
    brick_width = max(4, round(10 * scale))
    rows = np.arange(height)[:, None] // brick_height
    columns = (np.arange(width)[None, :] + (rows % 2) * (brick_width // 2)) // brick_width
    shades = rng.uniform(-0.45, 0.45, size=(int(rows.max()) + 1, int(columns.max()) + 2)).astype(np.float32)
    pattern = shades[rows, columns]
    mortar = (np.arange(height)[:, None] % brick_height == 0) | (
        (np.arange(width)[None, :] + (rows % 2) * (brick_width // 2)) % brick_width == 0
    )
    return np.where(mortar, np.float32(0.9), pattern)


@functools.lru_cache(maxsize=4)
def texture_bank(height: int, width: int) -> np.ndarray:
    """[materials, 2H, 2W] float32 patterns in about [-1, 1]; fixed seed, so every process has the same."""
    rng = np.random.default_rng(20240917)
    size = (2 * height, 2 * width)
    scale = max(height / 256.0, 0.25)  # pattern sizes follow the image size
    rows = np.arange(size[0], dtype=np.float32)[:, None]
    columns = np.arange(size[1], dtype=np.float32)[None, :]
    fine = np.clip(0.5 * rng.standard_normal(size, dtype=np.float32), -1.0, 1.0)

    def blotches(cell: float) -> np.ndarray:
        return _smooth_noise(rng, size[0], size[1], cell * scale)

    tile = max(3, round(9 * scale))
    grout = ((rows % tile) < 1) | ((columns % (1.6 * tile)) < 1)
    patterns = {
        SMOOTH: np.zeros(size, np.float32),
        ASPHALT: 0.5 * fine + 0.6 * blotches(14),
        BRICKS: _brick_pattern(rng, size[0], size[1], scale),
        STRIPES: 0.7 * np.sin(columns * (2 * math.pi / max(3.0, 5 * scale))) + 0.2 * fine,
        TILES: np.where(grout, -0.8, 0.2 * blotches(9)),
        FOLIAGE: blotches(3) + 0.5 * blotches(9),
        CLOUDS: 0.9 * blotches(40) + 0.1 * fine,
        GRASS: 0.6 * fine + 0.6 * blotches(20),
        FABRIC: 0.35 * fine,
    }
    bank = np.stack([patterns[material] for material in range(len(patterns))])
    return np.clip(bank, -1.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=4)
def noise_bank(height: int, width: int) -> np.ndarray:
    """[2H, 2W, 3] standard normal noise, cropped at a random offset per image (cheaper than drawing)."""
    return np.random.default_rng(7).standard_normal((2 * height, 2 * width, 3), dtype=np.float32)


def _random_crop(rng: np.random.Generator, bank: np.ndarray, height: int, width: int, axis: int) -> np.ndarray:
    top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
    index = [slice(None)] * bank.ndim
    index[axis], index[axis + 1] = slice(top, top + height), slice(left, left + width)
    return bank[tuple(index)]


def _light_gain(labels: np.ndarray, shadow: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel brightness factor [H,W]: material texture x illumination gradient x cast shadows."""
    height, width = labels.shape
    crop = _random_crop(rng, texture_bank(height, width), height, width, axis=1)
    texture = np.take_along_axis(crop, CLASS_MATERIAL[labels][None], axis=0)[0]
    gain = 1.0 + style.texture_strength * texture
    angle = rng.uniform(0.0, 2.0 * math.pi)
    rows = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None] * math.sin(angle)
    columns = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :] * math.cos(angle)
    gain *= 1.0 + style.illumination_gradient * 0.5 * (rows + columns)
    if style.shadow_strength > 0:
        gain[(shadow > 0) & GROUND_CLASSES[labels]] *= 1.0 - style.shadow_strength
    return gain


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable binomial blur with variance sigma^2 (3-tap passes, edges replicated; cheaper than PIL's)."""
    if sigma <= 0.05:
        return image
    passes = math.ceil(sigma**2 / (2.0 / 3.0))
    side = sigma**2 / (2.0 * passes)
    for _ in range(passes):
        for axis in (0, 1):
            source = np.moveaxis(image, axis, 0)
            blurred = (1.0 - 2.0 * side) * source
            blurred[1:] += side * source[:-1]
            blurred[:-1] += side * source[1:]
            blurred[0] += side * source[0]
            blurred[-1] += side * source[-1]
            image = np.moveaxis(blurred, 0, axis)
    return image


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through an in-memory JPEG: block and ringing artefacts of a real camera pipeline."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def apply_style(
    rgb: np.ndarray,
    labels: np.ndarray,
    shadow: np.ndarray,
    style: DomainStyle,
    rng: np.random.Generator,
    horizon_y: float,
) -> np.ndarray:
    """Turn a flat rendering into the domain's photograph.

    rgb uint8 [H,W,3] (flat colours), labels uint8 [H,W] trainIds, shadow uint8 [H,W] (non-zero where
    a cast shadow falls) -> uint8 [H,W,3]. Order follows a camera: scene light, atmosphere, optics,
    sensor, codec.
    """
    height, width = labels.shape
    image = rgb.astype(np.float32) * _light_gain(labels, shadow, style, rng)[..., None]
    if style.haze > 0:
        distance = np.abs(np.arange(height, dtype=np.float32) - horizon_y) / (0.2 * height)
        weight = (style.haze * np.exp(-distance))[:, None, None]
        image = image * (1.0 - weight) + weight * np.asarray(style.haze_color, dtype=np.float32)
    image = _blur(image, style.blur_sigma)
    if style.noise_sigma > 0:
        image += style.noise_sigma * _random_crop(rng, noise_bank(height, width), height, width, axis=0)
    out = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    low, high = style.jpeg_quality_range
    quality = int(rng.integers(low, high + 1))
    return out if quality >= 100 else _jpeg(out, quality)
