"""fp32 ONNX -> ``<name>.fp16.onnx``: fp16 weights and activations, float32 I/O, and float32
LayerNorm, Softmax, reductions and ArgMax (fp16 accumulations there overflow or reorder logits).

``onnxconverter_common.float16`` does the conversion; three graph passes fix what it gets wrong on
TorchScript-exported transformers (each found by strict shape inference on the student model):

1. Initializers shared through ``Identity`` nodes (the exporter de-duplicates equal LayerNorm
   weights) are copied instead, so a blocked LayerNorm keeps a float32 weight.
2. ``Cast(to=FLOAT)`` nodes whose output the converter declared fp16 (the attention scale
   ``1/sqrt(head_dim)``) are retargeted to fp16.
3. Graph outputs that came out fp16 despite ``keep_io_types`` (the logits, produced by the blocked
   Resize) are cast back to float32.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from clda_deploy.runtime.metadata import META_PRECISION
from export import ExportError, write_atomic
from export.to_onnx import check_onnx, set_metadata

log = logging.getLogger("export")

FP16_KEEP_FLOAT32 = (
    "LayerNormalization", "Softmax", "ArgMax",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd", "ReduceLogSumExp",
)  # fmt: skip


def inline_initializer_identities(model: Any) -> None:
    """Replace ``Identity(initializer)`` by a copy of the initializer under the output's name."""
    import onnx

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def element_types(model: Any) -> dict[str, int]:
    """Tensor name -> ONNX element type for every typed tensor of ``model``."""
    graph = model.graph
    typed = list(graph.input) + list(graph.output) + list(graph.value_info)
    types = {value.name: value.type.tensor_type.elem_type for value in typed}
    types.update({tensor.name: tensor.data_type for tensor in graph.initializer})
    return types


def retarget_float_casts(model: Any) -> None:
    """``Cast(to=FLOAT)`` whose output is declared FLOAT16 -> ``Cast(to=FLOAT16)``."""
    from onnx import TensorProto

    types = element_types(model)
    for node in model.graph.node:
        if node.op_type != "Cast" or types.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16


def restore_float_outputs(model: Any, names: list[str]) -> None:
    """Make the graph outputs ``names`` float32 again (cast the fp16 producer's result)."""
    import onnx
    from onnx import TensorProto

    producers = {output: node for node in model.graph.node for output in node.output}
    for value in model.graph.output:
        if value.name not in names or value.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        producer = producers[value.name]
        half_name = f"{value.name}_fp16"
        producer.output[list(producer.output).index(value.name)] = half_name
        cast = onnx.helper.make_node(
            "Cast", [half_name], [value.name], to=TensorProto.FLOAT, name=f"{half_name}_to_float"
        )
        model.graph.node.insert(list(model.graph.node).index(producer) + 1, cast)
        value.type.tensor_type.elem_type = TensorProto.FLOAT


def check_float32_islands(model: Any, where: str) -> None:
    """Fail unless every LayerNormalization and Softmax reads a float32 tensor."""
    from onnx import TensorProto

    types = element_types(model)
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax") and types.get(node.input[0]) != TensorProto.FLOAT:
            raise ExportError(f"{where}: {node.op_type} node {node.name} is not float32 after the fp16 conversion")


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp32 ONNX ``src`` -> fp16 ONNX ``dst`` (float32 I/O and ``FP16_KEEP_FLOAT32`` ops)."""
    import onnx
    from onnx import TensorProto
    from onnxconverter_common import float16

    model = onnx.load_model(str(src))
    float_outputs = [v.name for v in model.graph.output if v.type.tensor_type.elem_type == TensorProto.FLOAT]
    log.info("converting %s to fp16 (float32 kept for %s)", src, ", ".join(FP16_KEEP_FLOAT32))
    inline_initializer_identities(model)
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FLOAT32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values clipped to fp16 range" for tiny weights
        try:
            half = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
        except Exception as exc:  # the converter raises bare ValueError/KeyError on graphs it cannot type
            raise ExportError(f"{src}: fp16 conversion failed: {type(exc).__name__}: {exc}") from exc
    retarget_float_casts(half)
    restore_float_outputs(half, float_outputs)
    set_metadata(half, {**{p.key: p.value for p in model.metadata_props}, META_PRECISION: "fp16"})
    check_float32_islands(check_onnx(half, str(dst)), str(dst))
    return write_atomic(dst, lambda tmp: onnx.save_model(half, str(tmp)))
