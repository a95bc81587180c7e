import json
import os

import numpy as np
import onnx
import pytest
import torch

from clda_deploy import load_segmenter
from clda_deploy.checkpoint import read_config
from clda_deploy.config import config_to_dict
from clda_deploy.data.labels import CITYSCAPES_CLASSES
from clda_deploy.runtime import load_predictor
from export import ExportError
from export.to_onnx import export_onnx, file_sha256


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graph_interface(exported):
    model = onnx.load(str(exported["onnx"]))
    assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    (image,) = model.graph.input
    logits, labels = model.graph.output
    assert (image.name, logits.name, labels.name) == ("image", "logits", "labels")
    assert dims(image) == ["batch", 3, "height", "width"]
    assert dims(logits) == ["batch", 19, "height", "width"]
    assert dims(labels) == ["batch", "height", "width"]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert labels.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_layer_norm_stays_one_node(exported, student_checkpoint):
    model = onnx.load(str(exported["onnx"]))
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in load_segmenter(str(student_checkpoint)).modules())
    assert norms > 0
    assert sum(node.op_type == "LayerNormalization" for node in model.graph.node) == norms
    onnx.checker.check_model(model, full_check=True)


def test_metadata(exported, student_checkpoint):
    metadata = {prop.key: prop.value for prop in onnx.load(str(exported["onnx"])).metadata_props}
    assert metadata["clda_role"] == "student" and metadata["clda_name"] == "student"
    assert tuple(json.loads(metadata["clda_classes"])) == CITYSCAPES_CLASSES
    assert metadata["clda_source"] == str(student_checkpoint)
    assert metadata["clda_source_sha256"] == file_sha256(student_checkpoint)
    assert json.loads(metadata["clda_config"]) == config_to_dict(read_config(student_checkpoint))
    preprocessing = json.loads(metadata["clda_preprocessing"])
    assert preprocessing["mean"] == [123.675, 116.28, 103.53] and preprocessing["std"] == [58.395, 57.12, 57.375]
    assert metadata["clda_precision"] == "fp32" and metadata["clda_labels_dtype"] == "uint8"


@pytest.mark.parametrize("shape", [(1, 3, 256, 512), (3, 3, 256, 512), (1, 3, 512, 1024), (3, 3, 200, 300)])
def test_onnx_runtime_matches_pytorch(exported, student_checkpoint, shape):
    images = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        reference = load_segmenter(str(student_checkpoint))(torch.from_numpy(images)).numpy()
    result = load_predictor(exported["onnx"], device="cpu").predict(images)
    assert result.logits.shape == reference.shape
    np.testing.assert_allclose(result.logits, reference, atol=1e-4, rtol=1e-4)
    assert (result.labels == reference.argmax(axis=1)).mean() >= 0.999


def test_failed_export_leaves_no_file(student_checkpoint, tmp_path, monkeypatch):
    def broken(model, where, layer_norms=None):
        raise ExportError(f"{where}: broken on purpose")

    monkeypatch.setattr("export.to_onnx.check_onnx", broken)
    with pytest.raises(ExportError, match="broken on purpose"):
        export_onnx(student_checkpoint, tmp_path / "student.onnx", "student")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.environ.get("CLDA_SLOW_TESTS") != "1", reason="torch.export takes ~30 s; set CLDA_SLOW_TESTS=1")
def test_dynamo_exporter_matches_pytorch(student_checkpoint, tmp_path):
    path = export_onnx(student_checkpoint, tmp_path / "student.onnx", "student", exporter="dynamo")
    images = np.random.default_rng(3).standard_normal((3, 3, 97, 131)).astype(np.float32)
    with torch.no_grad():
        reference = load_segmenter(str(student_checkpoint))(torch.from_numpy(images)).numpy()
    result = load_predictor(path, device="cpu").predict(images)
    np.testing.assert_allclose(result.logits, reference, atol=1e-4, rtol=1e-4)
    assert (result.labels == reference.argmax(axis=1)).mean() >= 0.999
