"""The OpenVINO predictor: the exported ONNX files (fp32 and the Q/DQ ``.int8.onnx``) on the CPU.

OpenVINO reads the ``.onnx`` files directly (no IR conversion step, so one file is the contract for
every runtime) and turns Q/DQ pairs into its own INT8 kernels (AMX-INT8 / VNNI on this CPU).

Two things it does silently are made explicit here:

- **Precision.** On CPUs with AMX-BF16 or AVX512-BF16, OpenVINO computes in bf16 unless told
  otherwise, so the inference precision hint is always set: ``f32`` for the fp32 variant, ``bf16``
  for the bf16 variant and for the float layers of the INT8 variant. What the compiled model then
  runs is read back (the hint the plugin settled on, and the precision of each compute layer) and
  reported as ``precision_used``; a CPU without bf16 says ``fp32`` there instead of pretending.
- **Shapes.** The model is compiled for each input shape it meets (at most ``MAX_SHAPES``, least
  recently used first out): on this CPU a static 512x1024 student runs 1.4x faster than the same
  model compiled with dynamic shapes (docs/results.md), and compiling takes under a second. A call
  that wants labels only (what the service asks for) runs a compilation without the ``logits``
  output, which skips writing 19 full-resolution float planes: 6 % faster for the INT8 student at
  512x1024, same labels.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from clda_deploy.runtime import Prediction, RuntimeLoadError, check_images, check_precision, info_from_metadata

log = logging.getLogger("clda_deploy.runtime")

INFERENCE_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "bf16"}  # the kind's precision -> OpenVINO's hint
MAX_SHAPES = 8
COMPUTE_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Subgraph")
_PRECISION_NAMES = {"u8": "int8", "i8": "int8", "bf16": "bf16", "f32": "fp32", "f16": "fp16"}


def runtime_precisions(compiled: Any) -> Counter:
    """Compute layers of a compiled model by the precision they run in (``{"int8": 52, "bf16": 9}``)."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" not in info or "runtimePrecision" not in info:
            continue
        if str(info["layerType"].astype(str)) in COMPUTE_LAYERS:
            counts[_PRECISION_NAMES.get(str(info["runtimePrecision"].astype(str)), "other")] += 1
    return counts


def onnx_metadata(model: Any) -> dict[str, str]:
    """The ONNX file's ``metadata_props``, which OpenVINO's ONNX reader keeps under ``framework``."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    framework = info["framework"]
    framework = framework.value if hasattr(framework, "value") else framework
    return {str(key): str(value.value if hasattr(value, "value") else value) for key, value in dict(framework).items()}


def describe_precisions(counts: Counter) -> str:
    """``Counter({"int8": 52, "bf16": 9})`` -> ``"int8 + bf16"`` (most layers first)."""
    return " + ".join(name for name, _ in counts.most_common()) or "unknown"


class OpenVinoPredictor:
    """An exported ONNX file run by OpenVINO's CPU plugin in ``precision`` (fp32, bf16, or int8 for
    a Q/DQ file); ``threads`` sets ``INFERENCE_NUM_THREADS`` for this model only."""

    backend = "openvino"
    requires = ("openvino",)

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, precision: str = "fp32"
    ) -> None:
        check_precision(path, precision, tuple(INFERENCE_HINTS))
        if device.startswith("cuda"):
            raise RuntimeLoadError(f"{path}: OpenVINO runs on the CPU here (device {device!r} requested)")
        try:
            import openvino as ov
        except ImportError as exc:
            raise RuntimeLoadError(f"{path}: openvino is not installed ({exc}); pip install openvino") from None
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable files
            raise RuntimeLoadError(f"{path} is not an ONNX model OpenVINO can read ({exc})") from None
        self.metadata = onnx_metadata(self._model)
        self.info = info_from_metadata(self.metadata, path, precision)
        outputs = {name for output in self._model.outputs for name in output.get_names()}
        if not {"logits", "labels"} <= outputs:
            raise RuntimeLoadError(f"{path}: expected outputs 'logits' and 'labels', found {sorted(outputs)}")
        self.device = "cpu"
        self.precision = precision
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": INFERENCE_HINTS[precision],
                                        "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled: OrderedDict[tuple[tuple[int, ...], bool], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.providers = (f"openvino-{ov.__version__.split('-')[0]}-CPU",)
        self.precision_used = "not compiled yet"  # set by the first compile: what the plugin chose

    def _request(self, shape: tuple[int, ...], want_logits: bool = True) -> Any:
        """The infer request of the model compiled for ``shape`` (compiled on first use), with the
        ``logits`` output or without it."""
        key = (shape, want_logits)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key][1]
        model = self._model.clone()
        if not want_logits:
            import openvino as ov

            labels = [result for result in model.get_results() if "labels" in result.input_value(0).get_names()]
            model = ov.Model(labels, model.get_parameters(), "labels")
        model.reshape({model.inputs[0].any_name: list(shape)})
        try:
            compiled = self._core.compile_model(model, "CPU", self._config)
        except Exception as exc:
            raise RuntimeLoadError(f"{self.info.source}: OpenVINO cannot compile it for {shape} ({exc})") from None
        settled = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        counts = runtime_precisions(compiled)
        used = describe_precisions(counts)
        if self.precision_used != used:
            log.info("%s: OpenVINO %s runs %s (hint %s; layers %s)", self.info.source, self.precision, used,
                     settled, dict(counts))  # fmt: skip
        self.precision_used = used
        self._compiled[key] = (compiled, compiled.create_infer_request())
        while len(self._compiled) > MAX_SHAPES:
            self._compiled.popitem(last=False)
        return self._compiled[key][1]

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        """``images`` float32 ``[B,3,H,W]`` -> logits ``[B,K,H,W]`` and labels ``[B,H,W]``."""
        batch = check_images(images)
        with self._lock:  # an infer request serves one call at a time
            request = self._request(tuple(batch.shape), want_logits)
            request.infer({0: batch})
            labels = np.array(request.get_tensor("labels").data, dtype=np.uint8)
            logits = np.array(request.get_tensor("logits").data, dtype=np.float32) if want_logits else None
        return Prediction(logits, labels)

    def close(self) -> None:
        self._compiled.clear()
        self._model = None
