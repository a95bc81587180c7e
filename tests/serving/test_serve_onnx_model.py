"""The service on a real exported model: a tiny student saved with save_model, exported with
``python -m export``, served by ONNX Runtime (in process and through ``python -m serving``) and
by PyTorch, with answers checked against the PyTorch model on the same preprocessed input."""

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serving_testkit import image_bytes, random_image, wait_ready

from clda_deploy import build_segmenter, load_segmenter
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config
from clda_deploy.data.transforms import preprocess_numpy
from serving.app import create_app
from serving.settings import Settings

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[serve])")
pytestmark = pytest.mark.slow  # exports a model in a subprocess (~15 s on a 2-core CPU)

REPO = Path(__file__).resolve().parents[2]
SMALL = ["model.encoder=mit_cpu_student", "model.head_channels=32"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(export folder with student.onnx, the student's model.safetensors)."""
    root = tmp_path_factory.mktemp("real_model")
    config = load_config(None, SMALL)
    torch.manual_seed(0)
    model = build_segmenter(config.model.encoder, config.model.head, config.model.num_classes, head_channels=32)
    checkpoint = save_model(root / "model.safetensors", model.eval(), config, role="student")
    out = root / "export"
    command = [sys.executable, "-m", "export", "--checkpoint", str(checkpoint), "--out", str(out), "--no-check"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (out / "student.onnx").is_file()
    return out, checkpoint


def torch_labels(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    """PyTorch's answer on the service's input: the image padded to a multiple of 32, then cropped."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((0, -height % 32), (0, -width % 32), (0, 0)))
    with torch.no_grad():
        logits = load_segmenter(str(checkpoint))(torch.from_numpy(preprocess_numpy(padded)))
    return logits.argmax(1)[0, :height, :width].numpy().astype(np.uint8)


def test_onnxruntime_and_torch_backends_agree_with_pytorch(exported):
    out, checkpoint = exported
    settings = Settings(models=out, torch_checkpoints={"student": checkpoint}, warmup_height=64, warmup_width=64)
    image = random_image(45, 70, seed=4)
    expected = torch_labels(checkpoint, image)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=120)
        models = {entry["backend"]: entry for entry in client.get("/v1/models").json()["models"]}
        assert set(models) == {"onnxruntime", "torch"} and models["onnxruntime"]["default"]
        assert "CPUExecutionProvider" in models["onnxruntime"]["providers"]
        for backend in ("onnxruntime", "torch"):
            response = client.post(
                f"/v1/segment?backend={backend}", content=image_bytes(image), headers={"content-type": "image/png"}
            )
            assert response.status_code == 200 and response.headers["x-backend"] == backend
            labels = np.asarray(Image.open(io.BytesIO(response.content)))
            assert labels.shape == (45, 70)
            assert (labels == expected).mean() >= 0.999, (backend, (labels == expected).mean())
        body = client.post("/v1/segment?format=json", content=image_bytes(image)).json()
        assert sum(body["histogram"].values()) == 45 * 70


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_python_m_serving_serves_the_export_folder(exported):
    out, _ = exported
    port = free_port()
    env = {**os.environ, "CLDA_WARMUP_HEIGHT": "64", "CLDA_WARMUP_WIDTH": "64", "CLDA_THREADS": "1"}
    command = [sys.executable, "-m", "serving", "--models", str(out), "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        files = {"file": ("a.jpg", image_bytes(random_image(40, 60, seed=9), "JPEG"), "image/jpeg")}
        response = httpx.post(f"{url}/v1/segment?format=overlay", files=files, timeout=60)
        assert response.status_code == 200 and response.headers["x-model"] == "student"
        assert Image.open(io.BytesIO(response.content)).size == (60, 40)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode == 0, server.stdout.read()
