"""Over a thousand malformed requests (seeded, bounded in size): each must be a JSON 4xx, and the
service must still be ready and correct afterwards."""

import struct
import zlib

import numpy as np
from fastapi.testclient import TestClient
from serving_testkit import (
    FakeLoader,
    image_bytes,
    jpeg_declaring,
    make_settings,
    png_declaring,
    random_image,
    wait_ready,
)

from serving.app import create_app

MAX_BYTES = 32 * 1024
CONTENT_TYPES = ["image/png", "image/jpeg", "application/octet-stream", "image/gif", "text/plain", "application/json"]


def png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, type) of every chunk after the signature."""
    chunks, position = [], 8
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append((position, position + 12 + length, data[position + 4 : position + 8]))
        position += 12 + length
    return chunks


def truncated_png(rng) -> bytes:
    data = image_bytes(random_image(int(rng.integers(8, 48)), int(rng.integers(8, 48)), int(rng.integers(1 << 30))))
    start, end, _ = next(chunk for chunk in png_chunks(data) if chunk[2] == b"IDAT")
    return data[: int(rng.integers(0, end - 4))]  # cut before the IDAT's end: never decodable


def corrupt_png_crc(rng) -> bytes:
    data = bytearray(image_bytes(random_image(16, 16, int(rng.integers(1 << 30)))))
    start, end, _ = next(chunk for chunk in png_chunks(bytes(data)) if chunk[2] == b"IDAT")
    data[int(rng.integers(start + 8, end - 4))] ^= 0xFF  # PIL verifies chunk CRCs
    return bytes(data)


def truncated_jpeg(rng) -> bytes:
    data = image_bytes(
        random_image(int(rng.integers(16, 64)), int(rng.integers(16, 64)), int(rng.integers(1 << 30))), "JPEG"
    )
    scan = data.index(b"\xff\xda")
    return data[: int(rng.integers(0, scan + (len(data) - scan) // 2))]


def zero_size_png() -> bytes:
    header = struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + crc


def other_format(rng) -> bytes:
    fmt = ["GIF", "BMP", "TIFF", "WEBP"][int(rng.integers(4))]
    return image_bytes(random_image(8, 8, int(rng.integers(1 << 30))), fmt)


def raw(data: bytes, content_type: str | None = "image/png", query: str = "") -> dict:
    headers = {} if content_type is None else {"content-type": content_type}
    return {"url": f"/v1/segment{query}", "content": data, "headers": headers}


def multipart(data: bytes, field: str = "file", query: str = "") -> dict:
    return {"url": f"/v1/segment{query}", "files": {field: ("upload.png", data, "image/png")}}


def malformed_requests(rng):
    """(request kwargs, allowed statuses) for each kind of bad input, seeded."""
    good = image_bytes(random_image(16, 16))
    for _ in range(250):  # random bytes under any content type
        data = rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8).tobytes()
        content_type = CONTENT_TYPES[int(rng.integers(len(CONTENT_TYPES)))]
        yield (raw(data, content_type) if rng.random() < 0.7 else multipart(data)), {415, 422}
    for _ in range(150):
        yield raw(truncated_png(rng), "image/png"), {415, 422}
    for _ in range(150):
        yield raw(truncated_jpeg(rng), "image/jpeg"), {415, 422}
    for _ in range(60):
        yield multipart(corrupt_png_crc(rng)), {422}
    for _ in range(80):  # decompression bombs: header declares a huge image, the body is tiny
        width, height = (int(value) for value in rng.integers(3000, 60000, 2))
        data = png_declaring(width, height) if rng.random() < 0.5 else jpeg_declaring(width, height)
        yield (raw(data) if rng.random() < 0.5 else multipart(data)), {413}
    for _ in range(40):  # oversized bodies, with and without a Content-Length that says so
        data = b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES + int(rng.integers(1, 4096)))
        chunks = iter([data[: len(data) // 2], data[len(data) // 2 :]])
        yield [raw(data), multipart(data), raw(chunks)][int(rng.integers(3))], {413}
    for _ in range(60):
        yield raw(other_format(rng), CONTENT_TYPES[int(rng.integers(3))]), {415}
    for _ in range(120):  # bad parameters with a good image
        junk = "".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(1, 12))))
        query = [f"?format={junk}", f"?model={junk}", f"?backend={junk}", f"?model={'m' * 300}", "?format="][
            int(rng.integers(5))
        ]
        yield raw(good, "image/png", query), {404, 422}
    for _ in range(60):  # broken multipart envelopes
        kind = int(rng.integers(4))
        if kind == 0:
            yield raw(b"--b\r\n" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)), "multipart/form-data"), {422}
        elif kind == 1:
            yield raw(b"garbage", "multipart/form-data; boundary=xyz"), {422}
        elif kind == 2:
            yield multipart(good, field="image"), {422}
        else:
            yield {"url": "/v1/segment", "files": {"file": (None, b"not a file")}}, {422}
    for _ in range(40):
        yield raw(zero_size_png() if rng.random() < 0.5 else b"", "image/png"), {422}


def test_a_thousand_malformed_requests_are_all_json_4xx(tmp_path):
    app = create_app(make_settings(tmp_path, max_bytes=MAX_BYTES), loader=FakeLoader())
    rng = np.random.default_rng(20250101)
    seen: dict[int, int] = {}
    with TestClient(app) as client:
        wait_ready(client)
        for count, (request, allowed) in enumerate(malformed_requests(rng), start=1):
            response = client.post(**request)
            assert response.status_code in allowed, (count, request.get("url"), response.status_code, response.text)
            body = response.json()
            assert body["error"]["code"] == response.status_code and body["error"]["message"]
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert count >= 1000
        assert set(seen) == {404, 413, 415, 422}, seen
        assert client.get("/readyz").status_code == 200
        image = random_image(24, 24, seed=5)
        response = client.post("/v1/segment", content=image_bytes(image), headers={"content-type": "image/png"})
        assert response.status_code == 200 and response.headers["x-model"] == "student"
        assert app.state.registry.entries[("student", "onnxruntime")].batcher.depth == 0  # every slot came back
        metrics = client.get("/metrics").text
        assert f'status="413"}} {float(seen[413])}' in metrics


def test_bit_flipped_images_never_cause_a_server_error(tmp_path):
    """Random single-byte damage may leave a decodable image (200) or not (4xx), never 5xx."""
    app = create_app(make_settings(tmp_path), loader=FakeLoader())
    rng = np.random.default_rng(7)
    sources = [image_bytes(random_image(24, 32, 1)), image_bytes(random_image(24, 32, 2), "JPEG")]
    with TestClient(app) as client:
        wait_ready(client)
        for _ in range(200):
            data = bytearray(sources[int(rng.integers(2))])
            for position in rng.integers(0, len(data), int(rng.integers(1, 4))):
                data[position] = int(rng.integers(256))
            response = client.post("/v1/segment", content=bytes(data), headers={"content-type": "image/jpeg"})
            assert response.status_code < 500, response.text
        assert client.get("/readyz").status_code == 200
