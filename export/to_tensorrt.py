"""ONNX -> TensorRT engine ``<name>.plan`` plus its sidecar ``<name>.plan.json`` (DESIGN §8).

One optimization profile for the dynamic input ``image`` (min/opt/max ``[B,3,H,W]``), a workspace
limit, and two precision paths chosen by the installed TensorRT's major version:

- TensorRT 10 (JetPack 6): a weakly typed network from the fp32 ONNX; ``--fp16`` sets
  ``BuilderFlag.FP16`` and pins normalization, softmax and reduction layers to float32 with
  ``OBEY_PRECISION_CONSTRAINTS`` (fp16 LayerNorm statistics overflow on transformer activations).
- TensorRT >= 11: networks are strongly typed (the ``FP16`` builder flag is gone); precision comes
  from the ONNX itself, so ``--fp16`` builds from ``<name>.fp16.onnx``, whose LayerNorm, Softmax
  and reductions are already float32.

Engines only run on the TensorRT version that built them; the sidecar records it (with the
profile, precision and the model metadata that ``clda_deploy.runtime.tensorrt_backend.TensorRTPredictor`` reads).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clda_deploy.runtime import available_backends
from clda_deploy.runtime.metadata import engine_sidecar
from export import ExportError, write_atomic

log = logging.getLogger("export")

Shape = tuple[int, int, int, int]
DEFAULT_MIN: Shape = (1, 3, 256, 256)
DEFAULT_OPT: Shape = (1, 3, 512, 1024)
DEFAULT_MAX: Shape = (4, 3, 1024, 2048)
DEFAULT_WORKSPACE_GIB = 4.0


@dataclass(frozen=True)
class Profile:
    """min <= opt <= max input shapes ``[B,3,H,W]`` of the engine's one optimization profile."""

    min: Shape = DEFAULT_MIN
    opt: Shape = DEFAULT_OPT
    max: Shape = DEFAULT_MAX

    def __post_init__(self) -> None:
        for label, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
                raise ExportError(f"--{label}-shape must be Bx3xHxW with positive sizes, got {shape}")
        if not all(lo <= mid <= hi for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True)):
            raise ExportError(f"TensorRT profile needs min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


def parse_shape(text: str) -> Shape:
    """``"1x3x512x1024"`` -> ``(1, 3, 512, 1024)``."""
    try:
        values = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ExportError(f"a shape looks like 1x3x512x1024, got {text!r}") from None
    if len(values) != 4:
        raise ExportError(f"a shape has four sizes BxCxHxW, got {text!r}")
    return values  # type: ignore[return-value]


def require_tensorrt() -> None:
    """Fail with one clear line when TensorRT or a CUDA GPU is missing (checked before any work)."""
    reason = available_backends()["tensorrt"]
    if reason is not None:
        raise ExportError(f"--tensorrt needs TensorRT and a CUDA GPU, which this machine lacks ({reason})")


def _fp32_islands(trt: Any, network: Any) -> int:
    """TensorRT 10 + FP16: keep normalization, softmax and reductions in float32."""
    kinds = (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE)
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in kinds:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                if layer.get_output(output).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(output, trt.float32)
            pinned += 1
    return pinned


def _parse(trt: Any, builder: Any, onnx_path: Path, strongly_typed: bool, logger: Any) -> Any:
    # TensorRT 11 deprecates the flag (every network is strongly typed); a release may drop it.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(flag) if strongly_typed and flag is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return network, parser  # the parser owns objects the network refers to: keep both alive


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: Profile,
    precision: str,
    metadata: dict[str, str],
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
) -> Path:
    """Build ``plan_path`` from ``onnx_path`` and write the sidecar; ``precision`` fp32 or fp16.

    On TensorRT >= 11 pass the fp16 ONNX for fp16 (strongly typed); on 10 always the fp32 ONNX.
    """
    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    strongly_typed = major >= 11
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, Path(onnx_path), strongly_typed, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    optimization = builder.create_optimization_profile()
    optimization.set_shape("image", profile.min, profile.opt, profile.max)
    config.add_optimization_profile(optimization)
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("TensorRT %s: FP16 flag, %d layers pinned to float32", trt.__version__, _fp32_islands(trt, network))
    log.info("building the TensorRT %s engine from %s (profile max %s) ...", trt.__version__, onnx_path, profile.max)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    log.info("engine built in %.0f s", time.perf_counter() - started)

    sidecar = {
        "tensorrt_version": trt.__version__,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profile": asdict(profile),
        "workspace_bytes": int(workspace_gib * (1 << 30)),
        "onnx": str(onnx_path),
        "metadata": metadata,
    }
    return save_engine(serialized, plan_path, sidecar)


def save_engine(serialized: Any, plan_path: str | Path, sidecar: dict[str, Any]) -> Path:
    """Write the serialized engine (any buffer) and ``<plan>.json``, each atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            stream.write(serialized)

    plan = write_atomic(plan_path, write)
    write_atomic(engine_sidecar(plan), lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2)))
    return plan
