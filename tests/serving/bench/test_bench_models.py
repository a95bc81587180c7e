import argparse
from pathlib import Path

import pytest

from serving.bench.common import BenchError, parse_size
from serving.bench.models import backend_of, discover_models, select_models


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_parse_size():
    assert parse_size("512x1024") == (512, 1024)
    assert parse_size("64X128") == (64, 128)
    for bad in ("512", "0x10", "axb", "1x2x3", "-1x5"):
        with pytest.raises(argparse.ArgumentTypeError, match="HEIGHTxWIDTH"):
            parse_size(bad)


def test_backend_of_suffixes(tmp_path):
    assert backend_of(Path("m.safetensors")) == "torch"
    assert backend_of(Path("student.onnx")) == "onnxruntime"
    assert backend_of(Path("student.fp16.onnx")) == "onnxruntime-fp16"
    assert backend_of(Path("student.plan")) == "tensorrt"
    with pytest.raises(BenchError, match="unknown model file type"):
        backend_of(Path("student.pt"))


def test_discovery_lists_files_and_says_what_is_missing(tmp_path):
    _touch(tmp_path / "teacher" / "model.safetensors")
    _touch(tmp_path / "student" / "model.safetensors")
    _touch(tmp_path / "export" / "student.onnx")
    _touch(tmp_path / "export" / "student.fp16.onnx")
    _touch(tmp_path / "export" / "teacher.onnx")
    files, missing = discover_models(tmp_path)
    assert [(f.name, f.backend) for f in files] == [
        ("teacher", "torch"),
        ("teacher", "onnxruntime"),
        ("student", "torch"),
        ("student", "onnxruntime"),
        ("student", "onnxruntime-fp16"),
    ]
    reasons = {(m["model"], m["backend"]): m["reason"] for m in missing}
    assert set(reasons) == {("teacher", "onnxruntime-fp16"), ("teacher", "tensorrt"), ("student", "tensorrt")}
    assert "teacher.plan" in reasons[("teacher", "tensorrt")]


def test_selection_errors(tmp_path):
    with pytest.raises(BenchError, match="models folder not found"):
        select_models(str(tmp_path / "nowhere"), [], None)
    with pytest.raises(BenchError, match="no model files under"):
        select_models(str(tmp_path), [], None)
    with pytest.raises(BenchError, match="unknown backend 'tensorflow'"):
        select_models(str(tmp_path), [], ["tensorflow"])
    with pytest.raises(BenchError, match="model file not found"):
        select_models(None, [f"student={tmp_path / 'student.onnx'}"], None)
    with pytest.raises(BenchError, match="NAME=PATH"):
        select_models(None, ["student.onnx"], None)
    onnx = _touch(tmp_path / "s.onnx")
    files, missing = select_models(None, [f"student={onnx}"], ["onnxruntime"])
    assert [(f.name, f.backend, f.path) for f in files] == [("student", "onnxruntime", onnx)] and missing == []
    with pytest.raises(BenchError, match="no model file for the backends torch"):
        select_models(None, [f"student={onnx}"], ["torch"])
