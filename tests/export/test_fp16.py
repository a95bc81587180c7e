import numpy as np
import onnx

from clda_deploy.runtime import load_predictor


def test_fp16_io_is_float32_and_weights_are_half(exported):
    model = onnx.load(str(exported["fp16"]))
    for value in [*model.graph.input, model.graph.output[0]]:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT, value.name
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    weights = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT)]
    half = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert half / len(weights) > 0.5
    assert {p.key: p.value for p in model.metadata_props}["clda_precision"] == "fp16"


def test_layer_norm_and_softmax_run_in_float32(exported):
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(exported["fp16"])), strict_mode=True)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    checked = 0
    for node in graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert all(types[name] == onnx.TensorProto.FLOAT for name in node.input if name), node.name
            assert types[node.output[0]] == onnx.TensorProto.FLOAT, node.name
            checked += 1
    assert checked >= 22
    assert any(node.op_type == "MatMul" and types[node.input[0]] == onnx.TensorProto.FLOAT16 for node in graph.node)


def test_fp16_runs_close_to_fp32(exported):
    images = np.random.default_rng(1).standard_normal((2, 3, 97, 131)).astype(np.float32)
    full = load_predictor(exported["onnx"], device="cpu").predict(images)
    half = load_predictor(exported["fp16"], device="cpu").predict(images)
    assert half.logits.dtype == np.float32 and half.labels.dtype == np.uint8
    assert np.abs(half.logits - full.logits).max() < 0.05
    assert (half.labels == full.labels).mean() > 0.99
