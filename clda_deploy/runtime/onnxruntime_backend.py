"""The ONNX Runtime predictor: an exported ``<name>.onnx`` (any precision) on CPU, CUDA or TensorRT EP."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from clda_deploy.runtime import (
    Prediction,
    RuntimeLoadError,
    check_images,
    check_precision,
    cuda_device,
    info_from_metadata,
)

log = logging.getLogger("clda_deploy.runtime")

ORT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def ort_providers(device: str, available: list[str]) -> list[Any]:
    """Execution providers to request, best first: TensorRT -> CUDA -> CPU among ``available``."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    device_id = int(device.split(":")[1]) if ":" in device else 0
    gpu = [p for p in ORT_PROVIDER_ORDER[:2] if p in available]
    if device.startswith("cuda") and not gpu:
        raise RuntimeLoadError(f"device {device!r} requested but onnxruntime offers only {available}")
    return [(p, {"device_id": device_id}) for p in gpu] + ["CPUExecutionProvider"]


class OnnxRuntimePredictor:
    """An exported ``<name>.onnx`` (or ``.fp16.onnx``, ``.int8.onnx``) run by ONNX Runtime; ``threads``
    sets ``intra_op_num_threads`` for this session only. The precision is the file's: ORT runs
    what the graph says (Q/DQ pairs become integer kernels where ORT has them). With the TensorRT
    provider, ORT builds an engine on the first call of each new input shape (slow once); a
    ``.plan`` avoids that."""

    backend = "onnxruntime"
    requires = ("onnxruntime",)

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, precision: str = "fp32"
    ) -> None:
        self.precision_used = check_precision(path, precision, ("fp32", "fp16", "int8"))
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeLoadError(f"{path}: onnxruntime is not installed ({exc}); pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        requested = ort_providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise RuntimeLoadError(f"{path} is not a loadable ONNX model ({exc})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = info_from_metadata(self.metadata, path, precision)
        self.providers = tuple(self.session.get_providers())
        self.device = "cpu" if self.providers[0] == "CPUExecutionProvider" else cuda_device(device)
        # ORT silently falls back to the CPU when a GPU provider fails to initialise: say what runs.
        log.info("%s: onnxruntime providers in use: %s", path, ", ".join(self.providers))
        outputs = {output.name for output in self.session.get_outputs()}
        if not {"logits", "labels"} <= outputs:
            raise RuntimeLoadError(f"{path}: expected outputs 'logits' and 'labels', found {sorted(outputs)}")

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        """``images`` float32 ``[B,3,H,W]`` -> logits ``[B,K,H,W]`` and labels ``[B,H,W]``."""
        names = ["logits", "labels"] if want_logits else ["labels"]
        results = self.session.run(names, {"image": check_images(images)})
        labels = results[-1].astype(np.uint8, copy=False)
        return Prediction(results[0] if want_logits else None, labels)

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
