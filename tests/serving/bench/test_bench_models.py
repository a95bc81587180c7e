import argparse
from pathlib import Path

import pytest

from serving.bench.common import BenchError, parse_size
from serving.bench.models import bench_file, discover_models, select_models


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


def test_bench_file_backends_come_from_the_artifact_kind(tmp_path):
    assert bench_file(Path("runs/x/student/model.safetensors")).backend == "torch"
    assert bench_file(Path("student.onnx")).backend == "onnxruntime"
    fp16 = bench_file(Path("student.fp16.onnx"))
    assert (fp16.name, fp16.backend, fp16.runtime_backend) == ("student", "onnxruntime-fp16", "onnxruntime")
    assert bench_file(Path("student.plan")).backend == "tensorrt"
    assert bench_file(Path("student.fp16.plan")).backend == "tensorrt-fp16"
    with pytest.raises(BenchError, match="unknown model file type"):
        bench_file(Path("student.pt"))


def test_discovery_lists_files_and_says_what_is_missing(tmp_path):
    _touch(tmp_path / "teacher" / "model.safetensors")
    _touch(tmp_path / "student" / "model.safetensors")
    _touch(tmp_path / "export" / "student.onnx")
    _touch(tmp_path / "export" / "student.fp16.onnx")
    _touch(tmp_path / "export" / "teacher.onnx")
    files, missing = discover_models(tmp_path)
    assert [(f.name, f.backend) for f in files] == [
        ("teacher", "torch"),
        ("teacher", "torch-bf16"),
        ("teacher", "onnxruntime"),
        ("teacher", "openvino"),
        ("teacher", "openvino-bf16"),
        ("student", "torch"),
        ("student", "torch-bf16"),
        ("student", "onnxruntime"),
        ("student", "openvino"),
        ("student", "openvino-bf16"),
        ("student", "onnxruntime-fp16"),
    ]
    reasons = {(m["model"], m["backend"]): m["reason"] for m in missing}
    int8 = {"onnxruntime-int8", "openvino-int8-qdq", "openvino-int8", "onnxruntime-int8-trt", "tensorrt-int8"}
    expected = {"tensorrt", "tensorrt-fp16", *int8}
    assert set(reasons) == {("teacher", b) for b in expected | {"onnxruntime-fp16"}} | {
        ("student", b) for b in expected
    }
    assert "teacher.plan (export with --tensorrt on a TensorRT machine)" in reasons[("teacher", "tensorrt")]
    assert "teacher.fp16.onnx (export with --fp16)" in reasons[("teacher", "onnxruntime-fp16")]
    assert "student.int8.xml (export with --int8)" in reasons[("student", "openvino-int8")]


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
