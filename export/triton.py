"""A Triton Inference Server model repository for fleets (DESIGN §10).

``<repository>/<name>/config.pbtxt`` and ``<repository>/<name>/1/model.onnx`` (ONNX Runtime backend,
platform ``onnxruntime_onnx``) or ``.../1/model.plan`` (platform ``tensorrt_plan``). With
``max_batch_size > 0`` Triton adds the batch dimension itself, so the dims below are per image:
``image`` ``[3,-1,-1]`` float32, ``logits`` ``[K,-1,-1]`` float32, ``labels`` ``[-1,-1]`` uint8.
Dynamic batching groups concurrent requests of the same image size.

Every model gets a ``model_warmup`` request (zeros, batch 1, at the engine profile's opt size or
512x1024), so the first real request does not pay for lazy initialisation (cuDNN/TensorRT tactic
loading, ONNX Runtime's first-run allocations). A ``tensorrt_plan`` model also carries
``parameters`` read from the engine's sidecar: the TensorRT version it was built with and the
profile's min/opt/max (Triton's ModelParameter values are strings), plus the execution-context
allocation strategy Triton's TensorRT backend understands.

Clients should request only the ``labels`` output: ``logits`` are K x H x W float32, 159 MB for
one 1024x2048 image with 19 classes, against 2 MB of uint8 labels.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from clda_deploy.runtime.metadata import engine_sidecar
from export import ExportError, write_atomic

log = logging.getLogger("export")

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan")}
DEFAULT_QUEUE_DELAY_US = 2000  # wait up to 2 ms to fill a batch: small next to a segmentation forward
DEFAULT_WARMUP_SIZE = (512, 1024)  # (H, W) of the ONNX warm-up: Cityscapes at half resolution
# Triton's TensorRT backend takes STATIC or ON_PROFILE_CHANGE; it manages no user memory, so the
# engine's ``user_managed`` (a per-call size) maps to the closer of the two.
TRITON_ALLOCATION = {"static": "STATIC", "on_profile_change": "ON_PROFILE_CHANGE", "user_managed": "ON_PROFILE_CHANGE"}


def tensorrt_parameters(sidecar: dict[str, Any]) -> dict[str, str]:
    """Triton ``parameters`` of a ``tensorrt_plan`` model, from its engine sidecar (strings only)."""
    profile = sidecar.get("profile") or {}
    parameters = {"tensorrt_version": str(sidecar.get("tensorrt_version", ""))}
    for label in ("min", "opt", "max"):
        if label in profile:
            parameters[f"profile_{label}"] = "x".join(str(size) for size in profile[label])
    if "precision" in sidecar:
        parameters["precision"] = str(sidecar["precision"])
    strategy = sidecar.get("allocation_strategy")
    if strategy in TRITON_ALLOCATION:
        parameters["execution_context_allocation_strategy"] = TRITON_ALLOCATION[strategy]
    return parameters


def _parameters_text(parameters: dict[str, str]) -> str:
    if not parameters:
        return ""
    entries = ",\n".join(
        f'  {{\n    key: "{key}"\n    value {{ string_value: "{value}" }}\n  }}' for key, value in parameters.items()
    )
    return f"parameters [\n{entries}\n]\n"


def _warmup_text(height: int, width: int) -> str:
    return f"""model_warmup [
  {{
    name: "zeros_1x3x{height}x{width}"
    batch_size: 1
    inputs {{
      key: "image"
      value {{
        data_type: TYPE_FP32
        dims: [ 3, {height}, {width} ]
        zero_data: true
      }}
    }}
  }}
]
"""


def config_pbtxt(
    name: str,
    platform: str,
    num_classes: int,
    max_batch_size: int,
    queue_delay_us: int,
    *,
    parameters: dict[str, str] | None = None,
    warmup_size: tuple[int, int] | None = DEFAULT_WARMUP_SIZE,
) -> str:
    """The text of ``config.pbtxt`` (Triton's ModelConfig in protobuf text format)."""
    text = f"""name: "{name}"
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
    text += _parameters_text(parameters or {})
    return text + (_warmup_text(*warmup_size) if warmup_size is not None else "")


def read_engine_sidecar(plan: Path) -> dict[str, Any]:
    """The build record next to a ``.plan`` (TensorRT version, profile, ...)."""
    sidecar = engine_sidecar(plan)
    try:
        settings = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise ExportError(f"{plan} has no sidecar {sidecar}; build it with `python -m export --tensorrt`") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {sidecar} ({exc}); rebuild the engine with `python -m export`") from None
    if not isinstance(settings, dict) or "tensorrt_version" not in settings:
        raise ExportError(f"{sidecar} names no tensorrt_version; rebuild the engine with `python -m export`")
    return settings


def write_triton_model(
    repository: str | Path,
    name: str,
    model_file: str | Path,
    num_classes: int,
    max_batch_size: int = 4,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    *,
    warmup_size: tuple[int, int] | None = None,
) -> Path:
    """Copy ``model_file`` (.onnx or .plan) into ``repository/name/1/`` and write its config.

    A ``.plan`` needs its sidecar (TensorRT version and profile go into ``parameters``; its batch
    range must admit ``max_batch_size``). ``warmup_size`` (H, W) defaults to the engine profile's
    opt size, or 512x1024 for ONNX."""
    model_file = Path(model_file)
    if model_file.suffix not in PLATFORMS:
        raise ExportError(f"{model_file}: Triton export takes a .onnx or .plan file")
    if max_batch_size < 1:
        raise ExportError(f"--triton-max-batch must be >= 1, got {max_batch_size}")
    platform, file_name = PLATFORMS[model_file.suffix]
    parameters: dict[str, str] = {}
    size = warmup_size or DEFAULT_WARMUP_SIZE
    if platform == "tensorrt_plan":
        sidecar = read_engine_sidecar(model_file)
        parameters = tensorrt_parameters(sidecar)
        profile = sidecar.get("profile") or {}
        if "max" in profile and max_batch_size > int(profile["max"][0]):
            raise ExportError(
                f"--triton-max-batch {max_batch_size} exceeds the batch {profile['max'][0]} of {model_file}'s profile"
            )
        if warmup_size is None and "opt" in profile:
            size = (int(profile["opt"][2]), int(profile["opt"][3]))
    if min(size) < 1:
        raise ExportError(f"Triton warm-up size must be positive (H, W), got {size}")
    folder = Path(repository) / name
    write_atomic(folder / "1" / file_name, lambda tmp: shutil.copyfile(model_file, tmp))
    text = config_pbtxt(name, platform, num_classes, max_batch_size, queue_delay_us, parameters=parameters,
                        warmup_size=size)  # fmt: skip
    config = write_atomic(folder / "config.pbtxt", lambda tmp: tmp.write_text(text))
    log.info("Triton model repository: %s (%s, max batch %d)", folder, platform, max_batch_size)
    return config
