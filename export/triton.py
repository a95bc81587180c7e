"""A Triton Inference Server model repository for fleets (DESIGN §10).

``<repository>/<name>/config.pbtxt`` and ``<repository>/<name>/1/model.onnx`` (ONNX Runtime backend,
platform ``onnxruntime_onnx``) or ``.../1/model.plan`` (platform ``tensorrt_plan``). With
``max_batch_size > 0`` Triton adds the batch dimension itself, so the dims below are per image:
``image`` ``[3,-1,-1]`` float32, ``logits`` ``[K,-1,-1]`` float32, ``labels`` ``[-1,-1]`` uint8.
Dynamic batching groups concurrent requests of the same image size.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from export import ExportError, write_atomic

log = logging.getLogger("export")

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan")}
DEFAULT_QUEUE_DELAY_US = 2000  # wait up to 2 ms to fill a batch: small next to a segmentation forward


def config_pbtxt(name: str, platform: str, num_classes: int, max_batch_size: int, queue_delay_us: int) -> str:
    """The text of ``config.pbtxt`` (Triton's ModelConfig in protobuf text format)."""
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch_size}
input [
  {{
    name: "image"
    data_type: TYPE_FP32
    dims: [ 3, -1, -1 ]
  }}
]
output [
  {{
    name: "logits"
    data_type: TYPE_FP32
    dims: [ {num_classes}, -1, -1 ]
  }},
  {{
    name: "labels"
    data_type: TYPE_UINT8
    dims: [ -1, -1 ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {queue_delay_us}
}}
"""


def write_triton_model(
    repository: str | Path,
    name: str,
    model_file: str | Path,
    num_classes: int,
    max_batch_size: int = 4,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
) -> Path:
    """Copy ``model_file`` (.onnx or .plan) into ``repository/name/1/`` and write its config."""
    model_file = Path(model_file)
    if model_file.suffix not in PLATFORMS:
        raise ExportError(f"{model_file}: Triton export takes a .onnx or .plan file")
    if max_batch_size < 1:
        raise ExportError(f"--triton-max-batch must be >= 1, got {max_batch_size}")
    platform, file_name = PLATFORMS[model_file.suffix]
    folder = Path(repository) / name
    write_atomic(folder / "1" / file_name, lambda tmp: shutil.copyfile(model_file, tmp))
    text = config_pbtxt(name, platform, num_classes, max_batch_size, queue_delay_us)
    config = write_atomic(folder / "config.pbtxt", lambda tmp: tmp.write_text(text))
    log.info("Triton model repository: %s (%s, max batch %d)", folder, platform, max_batch_size)
    return config
