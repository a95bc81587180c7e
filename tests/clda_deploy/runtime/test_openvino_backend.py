"""The OpenVINO predictor and the torch bf16 variant: agreement with ONNX Runtime / PyTorch fp32, the
precision each actually runs in, per-shape compilation, and clear errors."""

import numpy as np
import pytest
import torch

from clda_deploy import build_segmenter
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config
from clda_deploy.runtime import RuntimeLoadError, load_predictor

pytest.importorskip("onnxruntime")
openvino = pytest.importorskip("openvino")

SMALL = ["model.encoder=mit_cpu_student", "model.head_channels=32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from export.to_onnx import export_onnx

    folder = tmp_path_factory.mktemp("openvino")
    cfg = load_config(None, SMALL)
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.encoder, cfg.model.head, cfg.model.num_classes, head_channels=32).eval()
    checkpoint = save_model(folder / "student" / "model.safetensors", model, cfg, role="student")
    return {"checkpoint": checkpoint, "onnx": export_onnx(checkpoint, folder / "student.onnx", "student")}


def images(batch=2, height=64, width=96, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)


def cpu_has_bf16() -> bool:
    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_f32_agrees_with_onnxruntime(files):
    batch = images()
    reference = load_predictor(files["onnx"], device="cpu").predict(batch)
    predictor = load_predictor(files["onnx"], "openvino", device="cpu", threads=1)
    result = predictor.predict(batch)
    agreement = 100.0 * float(np.mean(result.labels == reference.labels))
    assert agreement >= 99.9, f"OpenVINO f32 agrees on {agreement:.3f} % of pixels"
    assert np.abs(result.logits - reference.logits).max() < 1e-3
    assert result.labels.dtype == np.uint8 and result.logits.dtype == np.float32
    assert predictor.backend == "openvino" and predictor.info.name == "student" and predictor.info.precision == "fp32"
    assert predictor.precision_used == "fp32"  # the f32 hint holds even on an AMX-BF16 CPU
    assert predictor.info.classes[0] == "road"  # the ONNX metadata, read through OpenVINO


def test_bf16_reports_what_it_runs(files):
    predictor = load_predictor(files["onnx"], "openvino-bf16", device="cpu")
    predictor.predict(images(batch=1))
    assert predictor.info.precision == "bf16"
    assert predictor.precision_used == ("bf16" if cpu_has_bf16() else "fp32")


def test_one_compilation_per_shape(files, monkeypatch):
    from clda_deploy.runtime import openvino_backend

    monkeypatch.setattr(openvino_backend, "MAX_SHAPES", 2)
    predictor = load_predictor(files["onnx"], "openvino", device="cpu")
    for height in (64, 96, 64, 128):
        assert predictor.predict(images(batch=1, height=height), want_logits=False).labels.shape == (1, height, 96)
    assert list(predictor._compiled) == [((1, 3, 64, 96), False), ((1, 3, 128, 96), False)]  # LRU out first
    full = predictor.predict(images(batch=1, height=128))
    assert full.logits.shape == (1, 19, 128, 96) and np.array_equal(full.labels, full.logits.argmax(1))


def test_errors_name_the_file_and_the_problem(files, tmp_path):
    with pytest.raises(RuntimeLoadError, match="OpenVINO runs on the CPU"):
        load_predictor(files["onnx"], "openvino", device="cuda")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(RuntimeLoadError, match="junk.onnx is not an ONNX model OpenVINO can read"):
        load_predictor(junk, "openvino", device="cpu")
    with pytest.raises(RuntimeLoadError, match="cannot run a .onnx file"):
        load_predictor(files["onnx"], "openvino-int8", device="cpu")


def test_torch_bf16_autocast(files):
    batch = torch.from_numpy(images(batch=1)).numpy()
    full = load_predictor(files["checkpoint"], device="cpu").predict(batch)
    half = load_predictor(files["checkpoint"], "torch-bf16", device="cpu")
    result = half.predict(batch)
    assert half.info.precision == "bf16" and half.precision_used == "bf16"
    assert result.logits.dtype == np.float32
    assert 0 < np.abs(result.logits - full.logits).max() < 0.5  # bf16 really ran, and stayed close
    assert float(np.mean(result.labels == full.labels)) >= 0.95
