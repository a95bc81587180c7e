"""``model.safetensors`` -> ``<name>.onnx`` (fp32) and ``<name>.fp16.onnx`` (DESIGN §3, §8).

The graph: input ``image`` float32 ``[batch,3,height,width]`` (the shared preprocessing), outputs
``logits`` float32 ``[batch,K,height,width]`` and ``labels`` uint8 ``[batch,height,width]`` (the
argmax; K <= 255 so a byte per pixel suffices and moves 8x less than int64). Batch, height and
width are dynamic with those names. Opset 17 keeps every ``nn.LayerNorm`` one
``LayerNormalization`` node (a decomposed LayerNorm in fp16 is the usual cause of broken SegFormer
engines); the export checks this, runs onnx.checker and strict shape inference.

Exporter: the TorchScript exporter (``dynamo=False``) is the default: it keeps H/W dynamic through
timm's reshapes, matches PyTorch to ~1e-6 at sizes like 97x131, and takes ~2 s for the CPU student
where torch.export takes ~30 s. ``exporter="dynamo"`` (torch.export with ``dynamic_shapes``, opset
18) gives the same numbers and is kept for torch versions that drop the TorchScript exporter.

Metadata (``clda_deploy.runtime.metadata.META_*`` keys in ``metadata_props``): name, role, class names,
palette, preprocessing, source checkpoint path and sha256, the resolved config JSON, precision.
Every file is written atomically (temp file + rename), so a failure leaves no partial file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clda_deploy.checkpoint import load_segmenter, read_config, read_role
from clda_deploy.config import config_to_dict
from clda_deploy.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from clda_deploy.runtime.metadata import (
    META_CLASSES,
    META_CONFIG,
    META_LABELS_DTYPE,
    META_NAME,
    META_PALETTE,
    META_PRECISION,
    META_PREPROCESSING,
    META_ROLE,
    META_SOURCE,
    META_SOURCE_SHA256,
    class_table,
)
from export import ExportError, write_atomic

log = logging.getLogger("export")

OPSET = 17  # LayerNormalization exists from 17 on
DYNAMO_OPSET = 18  # the torch.export-based exporter emits opset >= 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "labels")
SAMPLE_SHAPE = (2, 3, 64, 96)  # batch 2 so the batch dimension is never specialised to 1


class SegmentationGraph(nn.Module):
    """The exported graph: ``image [B,3,H,W]`` -> (``logits [B,K,H,W]``, ``labels [B,H,W]`` uint8)."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.segmenter(image)
        return logits, logits.argmax(dim=1).to(torch.uint8)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_metadata(checkpoint: str | Path, name: str, precision: str = "fp32") -> dict[str, str]:
    """The ``clda_*`` string metadata of an exported model (read back by ``clda_deploy.runtime``)."""
    config = read_config(checkpoint)
    classes, palette = class_table(config.model.num_classes)
    preprocessing = {"input": "RGB uint8 0..255 -> (x - mean) / std, NCHW float32", "mean": IMAGENET_MEAN}
    return {
        META_NAME: name,
        META_ROLE: read_role(checkpoint),
        META_CLASSES: json.dumps(list(classes)),
        META_PALETTE: json.dumps([list(color) for color in palette]),
        META_PREPROCESSING: json.dumps({**preprocessing, "std": IMAGENET_STD}),
        META_SOURCE: str(checkpoint),
        META_SOURCE_SHA256: file_sha256(checkpoint),
        META_CONFIG: json.dumps(config_to_dict(config)),
        META_PRECISION: precision,
        META_LABELS_DTYPE: "uint8",
    }


def _trace(graph: nn.Module, exporter: str) -> Any:
    """Run the chosen torch exporter and return the ``onnx.ModelProto``."""
    import onnx

    sample = torch.randn(*SAMPLE_SHAPE)
    names = {"input_names": [INPUT_NAME], "output_names": list(OUTPUT_NAMES)}
    if exporter == "torchscript":
        axes = {0: "batch", 2: "height", 3: "width"}
        dynamic_axes = {"image": axes, "logits": axes, "labels": {0: "batch", 1: "height", 2: "width"}}
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
            torch.onnx.export(
                graph, (sample,), buffer, dynamo=False, opset_version=OPSET, dynamic_axes=dynamic_axes, **names
            )
        return onnx.load_from_string(buffer.getvalue())
    if exporter == "dynamo":
        from torch.export import Dim

        dims = {0: Dim("batch", min=1, max=256), 2: Dim("height", min=32, max=8192), 3: Dim("width", min=32, max=8192)}
        program = torch.onnx.export(
            graph,
            (sample,),
            dynamo=True,
            opset_version=DYNAMO_OPSET,
            dynamic_shapes={"image": dims},
            verbose=False,
            **names,
        )
        return program.model_proto
    raise ExportError(f"unknown exporter {exporter!r}; choose 'torchscript' or 'dynamo'")


def check_onnx(model: Any, where: str, layer_norms: int | None = None) -> Any:
    """onnx.checker + strict shape inference; with ``layer_norms``, the LayerNormalization count."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{where}: the ONNX graph is invalid: {exc}") from None
    found = sum(node.op_type == "LayerNormalization" for node in inferred.graph.node)
    if layer_norms is not None and found != layer_norms:
        raise ExportError(f"{where}: {layer_norms} LayerNorm modules became {found} LayerNormalization nodes")
    return inferred


def set_metadata(model: Any, metadata: dict[str, str]) -> None:
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)
    model.producer_name = "clda-deploy"


def export_onnx(checkpoint: str | Path, out_path: str | Path, name: str, exporter: str = "torchscript") -> Path:
    """Export ``checkpoint`` to ``out_path`` (fp32 ONNX, dynamic batch/height/width)."""
    import onnx

    segmenter = load_segmenter(checkpoint)
    num_classes = segmenter.spec.get("num_classes", 19)
    if num_classes > 255:
        raise ExportError(f"{checkpoint}: {num_classes} classes do not fit the uint8 labels output")
    # HRDA runs its encoder twice (context and detail), so every LayerNorm module becomes two nodes.
    passes = getattr(segmenter, "encoder_passes", 1)
    layer_norms = passes * sum(isinstance(module, nn.LayerNorm) for module in segmenter.encoder.modules())
    opset = DYNAMO_OPSET if exporter == "dynamo" else OPSET
    log.info("exporting %s to ONNX (%s exporter, opset %d)", checkpoint, exporter, opset)
    try:
        model = _trace(SegmentationGraph(segmenter).eval(), exporter)
    except ExportError:
        raise
    except Exception as exc:  # torch.onnx raises many types; the CLI reports one line
        raise ExportError(f"{checkpoint}: the {exporter} ONNX exporter failed: {type(exc).__name__}: {exc}") from exc
    set_metadata(model, onnx_metadata(checkpoint, name))
    log.info("checking the graph (onnx.checker, shape inference, %d LayerNormalization nodes)", layer_norms)
    check_onnx(model, str(out_path), layer_norms)
    # The TorchScript exporter leaves the class dimension symbolic; K is fixed, say so.
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = num_classes
    return write_atomic(out_path, lambda tmp: onnx.save_model(model, str(tmp)))
