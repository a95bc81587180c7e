"""Untrusted image bytes -> RGB uint8 ``[H,W,3]``, and label maps -> PNG bytes.

Order matters for safety: the magic bytes pick the decoder (a Content-Type can lie), then the size
is read from the header alone (PIL opens lazily) and checked against the pixel limit, and only then
are pixels decoded. So a 30000x30000 "decompression bomb" costs a header parse, not gigabytes.
Every failure is an ``ApiError`` with a 413, 415 or 422 status, never a 500.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from clda_deploy.data.labels import colorize
from serving.errors import ApiError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Common types that are not accepted, only to name them in the 415 message.
_OTHER_MAGIC = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def sniff_format(data: bytes) -> str:
    """``"PNG"`` or ``"JPEG"`` from the first bytes; 415 for anything else, 422 for an empty body."""
    if not data:
        raise ApiError(422, "the image is empty (0 bytes): send a PNG or JPEG image")
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    found = next((name for magic, name in _OTHER_MAGIC.items() if data.startswith(magic)), None)
    if found is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        found = "WebP"
    what = f"a {found} image" if found else f"not a PNG or JPEG image (first bytes {data[:8].hex()})"
    raise ApiError(415, f"the body is {what}: only PNG and JPEG are accepted")


def allow_pixels(max_pixels: int) -> None:
    """Raise PIL's process-wide bomb threshold to ``max_pixels`` if it is lower, so PIL never refuses
    an image our own limit accepts; it is never lowered (other code in the process may rely on it)."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open ``data`` lazily and enforce ``max_pixels`` from the header, before decoding pixels."""
    kind = sniff_format(data)
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; we check ourselves below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"the image is too large: {exc} The limit is {max_pixels} pixels.") from None
    except Exception as exc:  # PIL raises many types for broken headers
        raise ApiError(422, f"the {kind} header cannot be read ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ApiError(422, f"the {kind} image declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ApiError(
            413, f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PNG/JPEG mode -> RGB. 16-bit grey is scaled (PIL's convert would clip it at 255)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(values * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids PIL's warning for palette images with transparency
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_rgb(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 RGB ``[H,W,3]`` in display orientation (EXIF applied); alpha dropped."""
    image = open_checked(data, max_pixels)
    kind = image.format or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # a broken EXIF block must not reject a decodable image
                pass
            rgb = np.asarray(_to_rgb(image), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"the image is too large: {exc} The limit is {max_pixels} pixels.") from None
    except Exception as exc:  # truncated data, bad CRC, corrupt Huffman tables, ...
        raise ApiError(422, f"the {kind} image cannot be decoded ({type(exc).__name__}: {exc})") from None
    assert rgb.ndim == 3 and rgb.shape[2] == 3, f"decoder returned shape {rgb.shape}"
    return np.ascontiguousarray(rgb)


def encode_png(array: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 ``[H,W]`` (mode L) or ``[H,W,3]`` (RGB) -> PNG bytes; level 1: latency over a few bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: tuple[tuple[int, int, int], ...], alpha: float
) -> np.ndarray:
    """Blend ``colorize(labels)`` over the RGB ``image`` (both ``[H,W,...]``): uint8 ``[H,W,3]``."""
    colours = colorize(labels, palette).astype(np.float32)
    blended = image.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def histogram(labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    """Pixel count per class name (every class listed, zeros included, so the schema is stable)."""
    counts = np.bincount(labels.ravel(), minlength=max(len(classes), 256))
    return {name: int(counts[index]) for index, name in enumerate(classes)}
