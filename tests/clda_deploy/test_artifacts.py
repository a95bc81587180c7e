from pathlib import Path

import pytest

from clda_deploy import artifacts
from clda_deploy.artifacts import (
    ArtifactError,
    RunLayout,
    check_model_name,
    discover_artifacts,
    identify,
    identify_all,
    kind_for,
    kind_of,
    kind_of_variant,
    kinds_of,
    model_file_name,
    order_key,
)


@pytest.mark.parametrize(
    "path, model, backend, precision, variant",
    [
        ("runs/x/export/student.onnx", "student", "onnxruntime", "fp32", "onnxruntime"),
        ("runs/x/export/student.fp16.onnx", "student", "onnxruntime", "fp16", "onnxruntime-fp16"),
        ("teacher.plan", "teacher", "tensorrt", "fp32", "tensorrt"),
        ("teacher.fp16.plan", "teacher", "tensorrt", "fp16", "tensorrt-fp16"),
        ("runs/x/student/model.safetensors", "student", "torch", "fp32", "torch"),
        ("elsewhere/my_model.safetensors", "my_model", "torch", "fp32", "torch"),
        ("UPPER.ONNX", "UPPER", "onnxruntime", "fp32", "onnxruntime"),
        ("student.int8.onnx", "student", "onnxruntime", "int8", "onnxruntime-int8"),
        ("student.int8-trt.onnx", "student", "onnxruntime", "int8", "onnxruntime-int8-trt"),
        ("teacher.int8.plan", "teacher", "tensorrt", "int8", "tensorrt-int8"),
    ],
)
def test_identify_gives_one_name_backend_and_precision(path, model, backend, precision, variant):
    artifact = identify(path)
    assert (artifact.model, artifact.backend, artifact.precision, artifact.variant) == (
        model,
        backend,
        precision,
        variant,
    )
    assert artifact.path == Path(path)


def test_identify_refuses_unknown_files_and_precision_tags():
    with pytest.raises(ArtifactError, match=r"model\.pt: unknown model file type; expected .*\.onnx"):
        identify("model.pt")
    with pytest.raises(ArtifactError, match="precision tag 'int9'"):
        identify("student.int9.onnx")
    with pytest.raises(ArtifactError, match="unknown model file type"):
        identify(".onnx")  # a suffix alone names no model
    assert identify("student.int9.onnx", model="student").model == "student"  # named explicitly


def test_kind_lookups_and_file_names():
    assert kind_of("a.fp16.onnx").suffix == ".fp16.onnx" and kind_of("a.onnx").suffix == ".onnx"
    assert kind_of("notes.txt") is None
    assert kind_for("onnxruntime", "fp16").suffix == ".fp16.onnx"
    assert kind_of_variant("tensorrt-fp16").suffix == ".fp16.plan"
    assert model_file_name("student", kind_for("tensorrt", "fp16")) == "student.fp16.plan"
    with pytest.raises(ArtifactError, match="no model file kind for backend 'torch' in 'int8'"):
        kind_for("torch", "int8")
    with pytest.raises(ArtifactError, match="unknown backend 'tflite'; choose from torch, torch-bf16, onnxruntime"):
        kind_of_variant("tflite")


def test_one_file_runs_in_several_ways():
    assert [kind.variant for kind in kinds_of("student.onnx")] == ["onnxruntime", "openvino", "openvino-bf16"]
    assert [kind.variant for kind in kinds_of("student.int8.onnx")] == ["onnxruntime-int8", "openvino-int8-qdq"]
    assert [kind.variant for kind in kinds_of("student.int8.xml")] == ["openvino-int8"]
    assert [kind.variant for kind in kinds_of("m.safetensors")] == ["torch", "torch-bf16"]
    assert kinds_of("notes.txt") == ()
    chosen = identify("runs/x/export/student.onnx", variant="openvino-bf16")
    assert (chosen.model, chosen.backend, chosen.precision) == ("student", "openvino", "bf16")
    assert [a.variant for a in identify_all("student.int8-trt.onnx")] == ["onnxruntime-int8-trt"]
    with pytest.raises(
        ArtifactError, match=r"a \.fp16\.onnx file cannot run as 'openvino'; it runs as onnxruntime-fp16"
    ):
        identify("student.fp16.onnx", variant="openvino")


@pytest.mark.parametrize("name", ["student.fp16", "", "-x", "a b", "x/y"])
def test_bad_model_names(name):
    with pytest.raises(ArtifactError, match="model name must be"):
        check_model_name(name)


def test_every_variant_label_is_unique_and_every_precision_known():
    labels = [kind.variant for kind in artifacts.ARTIFACT_KINDS]
    assert len(labels) == len(set(labels))
    assert {kind.precision for kind in artifacts.ARTIFACT_KINDS} <= set(artifacts.PRECISIONS)


def test_run_layout_paths():
    layout = RunLayout("runs/exp")
    assert layout.model("teacher") == Path("runs/exp/teacher/model.safetensors")
    assert layout.checkpoint("student") == Path("runs/exp/student/checkpoint.pt")
    assert layout.metrics("student") == Path("runs/exp/student/metrics.json")
    assert layout.teacher_after == Path("runs/exp/student/teacher_updated.safetensors")
    assert layout.exported("student", kind_for("onnxruntime", "fp16")) == Path("runs/exp/export/student.fp16.onnx")
    assert (layout.bench, layout.analysis, layout.cost) == tuple(
        Path(f"runs/exp/{p}") for p in ("bench", "analysis", "cost")
    )
    assert RunLayout().root == Path("runs/default")


def test_discovery_of_a_run_folder_and_of_an_export_folder(tmp_path):
    layout = RunLayout(tmp_path)
    for path in (layout.model("student"), layout.model("teacher")):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    layout.export.mkdir()
    for name in ("student.onnx", "student.fp16.onnx", "teacher.onnx", "parity.json", "student.plan.json"):
        (layout.export / name).write_bytes(b"x")
    found = sorted(discover_artifacts(tmp_path), key=order_key)
    assert [(a.model, a.variant) for a in found] == [
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
    assert sorted((a.model, a.variant) for a in discover_artifacts(layout.export)) == [
        ("student", "onnxruntime"),
        ("student", "onnxruntime-fp16"),
        ("student", "openvino"),
        ("student", "openvino-bf16"),
        ("teacher", "onnxruntime"),
        ("teacher", "openvino"),
        ("teacher", "openvino-bf16"),
    ]


def test_import_needs_no_torch():
    import subprocess
    import sys

    code = "import sys, clda_deploy.artifacts; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
