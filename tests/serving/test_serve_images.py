import io

import numpy as np
import pytest
from PIL import Image
from serving_testkit import image_bytes, jpeg_declaring, png_declaring, random_image

from clda_deploy.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from serving.errors import ApiError
from serving.images import decode_rgb, encode_png, histogram, overlay, sniff_format

LIMIT = 1_000_000


def status_of(call) -> int:
    with pytest.raises(ApiError) as info:
        call()
    return info.value.status


def test_sniff_trusts_magic_bytes_not_names():
    image = random_image(8, 8)
    assert sniff_format(image_bytes(image, "PNG")) == "PNG"
    assert sniff_format(image_bytes(image, "JPEG")) == "JPEG"
    gif = image_bytes(image, "GIF")
    with pytest.raises(ApiError, match="GIF") as info:
        sniff_format(gif)
    assert info.value.status == 415
    assert status_of(lambda: sniff_format(b"")) == 422
    assert status_of(lambda: sniff_format(b"plain text")) == 415
    assert status_of(lambda: sniff_format(image_bytes(image, "WEBP"))) == 415


def test_rgb_png_and_jpeg_round_trip():
    image = random_image(20, 30)
    np.testing.assert_array_equal(decode_rgb(image_bytes(image), LIMIT), image)
    smooth = np.full((16, 24, 3), (200, 100, 50), dtype=np.uint8)
    decoded = decode_rgb(image_bytes(smooth, "JPEG", quality=95), LIMIT)
    assert decoded.shape == (16, 24, 3) and np.abs(decoded.astype(int) - smooth).max() <= 3


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I;16", "CMYK"])
def test_every_mode_becomes_rgb(mode):
    base = Image.fromarray(random_image(12, 10))
    if mode == "I;16":
        grey = (np.arange(120, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
        image, fmt = Image.fromarray(grey), "PNG"
    elif mode == "CMYK":
        image, fmt = base.convert("CMYK"), "JPEG"
    elif mode == "P":
        image, fmt = base.convert("P"), "PNG"
        image.info["transparency"] = 0
    else:
        image, fmt = base.convert(mode), "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"transparency": 0} if mode == "P" else {}))
    decoded = decode_rgb(buffer.getvalue(), LIMIT)
    assert decoded.dtype == np.uint8 and decoded.shape == (12, 10, 3)
    if mode == "I;16":  # scaled, not clipped: 65535 -> 255, 0 -> 0, monotone
        assert decoded[0, 0, 0] == 0 and decoded[-1, -1, 0] == round(119 * 500 * 255 / 65535)
    if mode == "CMYK":
        assert np.abs(decoded.astype(int) - np.asarray(base)).mean() < 30  # lossy, but the colours survive


def test_sixteen_bit_rgb_png_is_read(tmp_path):
    import png  # pypng writes 16-bit RGB, which PIL reads as 8-bit RGB

    values = (np.arange(4 * 5 * 3).reshape(4, 15) * 1000).astype(np.uint16)
    path = tmp_path / "deep.png"
    with open(path, "wb") as stream:
        png.Writer(width=5, height=4, bitdepth=16, greyscale=False).write(stream, values.tolist())
    decoded = decode_rgb(path.read_bytes(), LIMIT)
    assert decoded.shape == (4, 5, 3)
    np.testing.assert_allclose(decoded.reshape(4, 15).astype(float), values / 257.0, atol=1.0)


def test_exif_orientation_is_applied():
    image = Image.fromarray(random_image(10, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_rgb(buffer.getvalue(), LIMIT).shape == (30, 10, 3)


def test_pixel_limit_checked_from_the_header():
    assert status_of(lambda: decode_rgb(png_declaring(30000, 30000), LIMIT)) == 413  # PIL's own bomb error
    assert status_of(lambda: decode_rgb(png_declaring(2000, 1000), LIMIT)) == 413  # our limit, below PIL's
    with pytest.raises(ApiError, match="2000x1000 = 2000000 pixels; the limit is 1000000"):
        decode_rgb(png_declaring(2000, 1000), LIMIT)
    assert status_of(lambda: decode_rgb(png_declaring(100, 100), LIMIT)) == 422  # small but undecodable


def test_jpeg_bomb_from_the_frame_header():
    with pytest.raises(ApiError, match="3000x2000 = 6000000 pixels; the limit is 1000000") as info:
        decode_rgb(jpeg_declaring(3000, 2000), LIMIT)
    assert info.value.status == 413
    with pytest.raises(ApiError, match="decompression bomb") as info:  # PIL's own guard fires first here
        decode_rgb(jpeg_declaring(60000, 60000), 4_000_000_000)
    assert info.value.status == 413


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_and_corrupt_images_are_422(fmt):
    data = image_bytes(random_image(64, 64), fmt)
    assert status_of(lambda: decode_rgb(data[: len(data) // 2], LIMIT)) == 422
    assert status_of(lambda: decode_rgb(data[:12], LIMIT)) == 422


def test_encoders_overlay_and_histogram():
    labels = np.array([[0, 1], [18, 0]], dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(labels)))
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), labels)
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    blend = overlay(image, labels, CITYSCAPES_PALETTE, alpha=1.0)
    assert tuple(blend[0, 1]) == CITYSCAPES_PALETTE[1]
    half = overlay(np.full((2, 2, 3), 200, dtype=np.uint8), labels, CITYSCAPES_PALETTE, alpha=0.5)
    assert tuple(half[0, 0]) == tuple(round(100 + c / 2) for c in CITYSCAPES_PALETTE[0])
    counts = histogram(labels, CITYSCAPES_CLASSES)
    assert counts["road"] == 2 and counts["sidewalk"] == 1 and counts["bicycle"] == 1
    assert len(counts) == 19 and sum(counts.values()) == 4
