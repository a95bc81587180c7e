"""Helpers for the service tests, in a uniquely named module (``from conftest import`` is ambiguous
across test folders): a fake Predictor that really computes (labels are a function of the pixels,
so a test can check that every request gets its own answer), a loader that hands it out for
placeholder model files, a real uvicorn server in a thread, a raw-socket upload whose body trickles,
and image builders (bombs included)."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from clda_deploy.artifacts import identify
from clda_deploy.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from clda_deploy.data.transforms import denormalize_numpy
from clda_deploy.runtime import ModelInfo, Prediction
from serving.settings import Settings

NUM_CLASSES = len(CITYSCAPES_CLASSES)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def expected_labels(image: np.ndarray) -> np.ndarray:
    """What FakePredictor answers for a uint8 RGB image ``[H,W,3]``: red channel // 14, as trainIds."""
    return np.minimum(image[..., 0].astype(np.int64) // 14, NUM_CLASSES - 1).astype(np.uint8)


class FakePredictor:
    """Implements clda_deploy.runtime.Predictor with real numpy work on the preprocessed batch.

    ``gate``: predict blocks until it is set (to hold warm-up or a batch). ``delay``: seconds per call.
    ``batches`` records the shape of every batch it computed.
    """

    def __init__(self, path: Path, backend: str = "onnxruntime", gate: threading.Event | None = None, delay=0.0):
        self.backend = backend
        self.device = "cpu"
        self.providers = ("CPUExecutionProvider",)
        self.info = ModelInfo(identify(path).model, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, str(path))
        self.gate = gate
        self.delay = delay
        self.batches: list[tuple[int, ...]] = []
        self.closed = False
        self.lock = threading.Lock()

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        assert images.dtype == np.float32 and images.ndim == 4 and images.shape[1] == 3
        if self.gate is not None:
            assert self.gate.wait(30), "test gate never opened"
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.batches.append(tuple(images.shape))
        red = np.clip(np.rint(denormalize_numpy(images)[:, 0]), 0, 255).astype(np.uint8)
        labels = np.stack([expected_labels(np.stack([plane] * 3, axis=-1)) for plane in red])
        logits = None
        if want_logits:
            logits = np.eye(NUM_CLASSES, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
        return Prediction(logits, labels)

    def close(self) -> None:
        self.closed = True


class FakeLoader:
    """``create_app(loader=...)``: one FakePredictor per file, remembered by model name."""

    def __init__(self, gate: threading.Event | None = None, delay: float = 0.0, fail: tuple[str, ...] = ()):
        self.gate, self.delay, self.fail = gate, delay, fail
        self.predictors: dict[str, FakePredictor] = {}

    def __call__(self, path: Path, backend: str, device: str, threads: int | None) -> FakePredictor:
        artifact = identify(path)
        if artifact.model in self.fail:
            raise RuntimeError(f"{path} is corrupt")
        predictor = FakePredictor(path, backend, self.gate, self.delay)
        self.predictors[f"{artifact.model}/{backend}"] = predictor
        return predictor


def make_models_dir(root: Path, names: tuple[str, ...] = ("student", "teacher")) -> Path:
    folder = root / "export"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.onnx").write_bytes(b"placeholder: the fake loader never reads it")
    (folder / "parity.json").write_text("{}")  # other files are ignored
    return folder


def make_settings(root: Path, **overrides) -> Settings:
    overrides.setdefault("models", make_models_dir(root))
    overrides.setdefault("warmup_height", 64)
    overrides.setdefault("warmup_width", 64)
    return Settings(**overrides)


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.01)


def image_bytes(array: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@contextlib.contextmanager
def running_server(app, timeout: float = 20.0):
    """Serve ``app`` with a real uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for such sockets;
    # without it every response waits ~40 ms for a delayed ACK (Nagle), and latencies measure that.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def png_declaring(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A well-formed PNG header declaring ``width`` x ``height`` with a tiny IDAT: a decompression bomb shape."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(image_bytes(random_image(8, 8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


class ClampedPredictor(FakePredictor):
    """A FakePredictor that never answers above class ``CEILING``: labels min(red // 14, 9)."""

    CEILING = 9

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        labels = np.minimum(super().predict(images, want_logits=False).labels, self.CEILING)
        logits = np.eye(NUM_CLASSES, dtype=np.float32)[labels].transpose(0, 3, 1, 2) if want_logits else None
        return Prediction(logits, labels)


class ClampingLoader(FakeLoader):
    """A FakeLoader whose model ``clamped`` is a ClampedPredictor, so that a comparison of it with
    another model disagrees exactly where red >= 140 (classes 10..18 become 9): a test can count it."""

    def __init__(self, clamped: str = "teacher", **kwargs) -> None:
        super().__init__(**kwargs)
        self.clamped = clamped

    def __call__(self, path: Path, backend: str, device: str, threads: int | None) -> FakePredictor:
        predictor = super().__call__(path, backend, device, threads)
        if identify(path).model != self.clamped:
            return predictor
        clamped = ClampedPredictor(path, backend, self.gate, self.delay)
        self.predictors[f"{self.clamped}/{backend}"] = clamped
        return clamped


def banded_image(height: int, width: int, bands: tuple[tuple[int, int], ...], seed: int = 0) -> np.ndarray:
    """Random green and blue, red constant per band of rows: ``bands`` = ((rows, red), ...), top first."""
    image = random_image(height, width, seed)
    top = 0
    for rows, red in bands:
        image[top : top + rows, :, 0] = red
        top += rows
    assert top == height, f"bands cover {top} rows of {height}"
    return image


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class SlowUpload:
    """A ``POST`` to ``path`` whose body trickles: the head and the PNG magic now, then one byte per
    ``send_byte()``; ``poll()`` collects the answer (status, time) once the server sends it."""

    def __init__(self, url: str, length: int = 4096, client: str | None = None, path: str = "/v1/segment") -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        forwarded = f"X-Forwarded-For: {client}\r\n" if client else ""
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n"
        self.sock.sendall((head + forwarded + "\r\n").encode() + PNG_MAGIC)
        self.sock.setblocking(False)
        self.started = time.monotonic()
        self.reply = b""
        self.answered_after: float | None = None
        self.closed = False  # the server closed the connection (after its answer, or without one)

    @property
    def status(self) -> int | None:
        return int(self.reply.split(b" ", 2)[1]) if self.reply.startswith(b"HTTP/1.1 ") else None

    def poll(self) -> None:
        while not self.closed:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # a reset: whatever arrived before it is kept
                chunk = b""
            if not chunk:
                self.closed = True
            self.reply += chunk
            if self.answered_after is None and b"\r\n\r\n" in self.reply:
                self.answered_after = time.monotonic() - self.started

    def send_byte(self) -> None:
        if self.answered_after is None and not self.closed:
            try:
                self.sock.send(b"\0")
            except OSError:  # the server closed: its answer, if any, is read by the next poll
                pass

    def close(self) -> None:
        self.sock.close()
