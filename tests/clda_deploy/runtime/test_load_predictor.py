import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from clda_deploy import build_segmenter
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config
from clda_deploy.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from clda_deploy.runtime import (
    ModelInfo,
    Prediction,
    Predictor,
    RuntimeLoadError,
    available_backends,
    load_predictor,
)
from clda_deploy.runtime.onnxruntime_backend import OnnxRuntimePredictor
from clda_deploy.runtime.tensorrt_backend import _read_sidecar
from clda_deploy.runtime.torch_backend import TorchPredictor

SMALL = ["model.encoder=mit_cpu_student", "model.head_channels=32"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny student checkpoint and its fp32 / fp16 ONNX exports."""
    pytest.importorskip("onnxruntime")
    from export.fp16 import convert_fp16
    from export.to_onnx import export_onnx

    folder = tmp_path_factory.mktemp("runtime")
    cfg = load_config(None, SMALL)
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.encoder, cfg.model.head, cfg.model.num_classes, head_channels=32).eval()
    (folder / "student").mkdir()
    checkpoint = save_model(folder / "student" / "model.safetensors", model, cfg, role="student")
    onnx_path = export_onnx(checkpoint, folder / "student.onnx", "student")
    return {"checkpoint": checkpoint, "onnx": onnx_path, "fp16": convert_fp16(onnx_path, folder / "student.fp16.onnx")}


def images(batch=2, height=64, width=96, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)


def test_suffix_picks_the_implementation(files):
    torch_predictor = load_predictor(files["checkpoint"], device="cpu")
    onnx_predictor = load_predictor(files["onnx"], device="cpu")
    assert isinstance(torch_predictor, TorchPredictor) and torch_predictor.backend == "torch"
    assert isinstance(onnx_predictor, OnnxRuntimePredictor) and onnx_predictor.backend == "onnxruntime"
    for predictor in (torch_predictor, onnx_predictor):
        assert isinstance(predictor, Predictor)
        assert predictor.device == "cpu"
    assert torch_predictor.providers == ("torch-cpu",)
    assert onnx_predictor.providers == ("CPUExecutionProvider",)


def test_metadata_round_trips_into_model_info(files):
    for key in ("onnx", "fp16"):
        info = load_predictor(files[key], device="cpu").info
        precision = "fp16" if key == "fp16" else "fp32"
        assert info == ModelInfo("student", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, str(files[key]), precision)
    torch_info = load_predictor(files["checkpoint"], device="cpu").info
    # A run folder's model.safetensors is named after its folder, as the service and the bench name it.
    assert torch_info.classes == CITYSCAPES_CLASSES and torch_info.name == "student"


def test_predictions_agree_across_backends(files):
    batch = images(batch=2, height=97, width=131)
    reference = load_predictor(files["checkpoint"], device="cpu").predict(batch)
    result = load_predictor(files["onnx"], device="cpu", threads=1).predict(batch)
    assert isinstance(result, Prediction)
    assert result.logits.dtype == np.float32 and result.logits.shape == (2, 19, 97, 131)
    assert result.labels.dtype == np.uint8 and result.labels.shape == (2, 97, 131)
    np.testing.assert_allclose(result.logits, reference.logits, atol=1e-4)
    assert (result.labels == reference.labels).mean() >= 0.999


def test_labels_only(files):
    for key in ("checkpoint", "onnx"):
        result = load_predictor(files[key], device="cpu").predict(images(batch=1), want_logits=False)
        assert result.logits is None and result.labels.shape == (1, 64, 96)


def test_threads_and_provider_log(files, caplog):
    with caplog.at_level(logging.INFO, logger="clda_deploy.runtime"):
        predictor = load_predictor(files["onnx"], backend="onnxruntime", device="cpu", threads=1)
    assert predictor.session.get_session_options().intra_op_num_threads == 1
    assert "providers in use: CPUExecutionProvider" in caplog.text
    predictor.close()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((3, 64, 64), np.float32), r"\[B,3,H,W\]"),
        (np.zeros((1, 4, 64, 64), np.float32), r"\[B,3,H,W\]"),
        (np.zeros((1, 3, 64, 64), np.uint8), "float32"),
    ],
)
def test_bad_input_is_a_value_error(files, bad, message):
    predictor = load_predictor(files["onnx"], device="cpu")
    with pytest.raises(ValueError, match=message):
        predictor.predict(bad)


def test_unknown_extension_missing_file_and_backend_mismatch(files, tmp_path):
    with pytest.raises(RuntimeLoadError, match=r"model\.pt: unknown model file type; expected .*\.safetensors"):
        load_predictor(tmp_path / "model.pt")
    with pytest.raises(RuntimeLoadError, match="model file not found: .*absent.onnx"):
        load_predictor(tmp_path / "absent.onnx")
    with pytest.raises(RuntimeLoadError, match="backend 'torch' cannot run a .onnx file"):
        load_predictor(files["onnx"], backend="torch")
    with pytest.raises(RuntimeLoadError, match="unknown backend 'tflite'"):
        load_predictor(files["onnx"], backend="tflite")
    with pytest.raises(RuntimeLoadError, match="device must be"):
        load_predictor(files["onnx"], device="gpu")


def test_corrupt_and_foreign_onnx_files(files, tmp_path):
    import onnx

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx model")
    with pytest.raises(RuntimeLoadError, match="garbage.onnx is not a loadable ONNX model"):
        load_predictor(garbage)
    foreign = onnx.load(str(files["onnx"]))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(RuntimeLoadError, match="foreign.onnx has no clda_classes, clda_palette metadata"):
        load_predictor(tmp_path / "foreign.onnx")


def test_corrupt_checkpoint_is_a_load_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"nothing here")
    with pytest.raises(RuntimeLoadError, match="junk.safetensors is not a readable safetensors file"):
        load_predictor(junk, device="cpu")


def test_engine_file_routes_to_tensorrt(tmp_path):
    engine = tmp_path / "student.plan"
    engine.write_bytes(b"engine bytes")
    reason = available_backends()["tensorrt"]
    if reason is None:
        pytest.skip("TensorRT is usable here; the engine tests in tests/export cover it")
    with pytest.raises(RuntimeLoadError, match=r"student\.plan: .*(TensorRT|CUDA)"):
        load_predictor(engine)


def test_engine_sidecar_version_must_match(tmp_path):
    engine = tmp_path / "student.plan"
    engine.write_bytes(b"engine bytes")
    (tmp_path / "student.plan.json").write_text(json.dumps({"tensorrt_version": "10.3.0"}))
    with pytest.raises(RuntimeLoadError, match="built with TensorRT 10.3.0 but TensorRT 10.9.1 is installed"):
        _read_sidecar(engine, "10.9.1")
    assert _read_sidecar(engine, "10.3.0")["tensorrt_version"] == "10.3.0"
    (tmp_path / "student.plan.json").unlink()
    with pytest.raises(RuntimeLoadError, match="cannot read its sidecar"):
        _read_sidecar(engine, "10.3.0")


def test_available_backends_reports_reasons():
    backends = available_backends()
    assert set(backends) == {"torch", "onnxruntime", "openvino", "tensorrt"}
    assert backends["torch"] is None
    reason = backends["tensorrt"]
    assert reason is None or reason.startswith("tensorrt: ")


def test_import_is_light():
    code = "import sys, clda_deploy.runtime; print(sorted({'torch', 'onnxruntime', 'tensorrt'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
