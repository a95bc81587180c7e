"""The TensorRT ``Predictor``: a serialized engine (``.plan``) run on a CUDA GPU.

Imported only when a ``.plan`` is loaded: it is the one backend that needs both TensorRT and CUDA.
The engine's sidecar ``<plan>.json`` (written by ``python -m export --tensorrt``) carries the model
metadata and the TensorRT version it was built with: engines are not portable across TensorRT
versions, so a mismatch is refused with a message to rebuild.
"""

from __future__ import annotations

import json
import threading
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
from clda_deploy.runtime.metadata import engine_sidecar
from clda_deploy.runtime.tensorrt_options import DeviceMemory, allocation_strategy, create_context, needs_device_memory


def _read_sidecar(path: Path, installed: str) -> dict[str, Any]:
    sidecar = engine_sidecar(path)
    try:
        settings = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise RuntimeLoadError(f"{path}: cannot read its sidecar {sidecar} ({exc}); re-run python -m export") from None
    built = str(settings.get("tensorrt_version"))
    if built != installed:
        raise RuntimeLoadError(
            f"{path} was built with TensorRT {built} but TensorRT {installed} is installed; engines are "
            "not portable across versions: rebuild it with `python -m export --tensorrt` on this machine"
        )
    return settings


class TensorRTPredictor:
    """A serialized TensorRT engine (``.plan``) run on a CUDA GPU with torch-allocated buffers;
    ``threads`` is accepted for a uniform signature and unused (the GPU does the work)."""

    backend = "tensorrt"
    requires = ("tensorrt", "torch")
    needs_cuda = True

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, precision: str = "fp32"
    ) -> None:
        check_precision(path, precision, ("fp32", "fp16", "int8"))
        try:
            import tensorrt as trt
            import torch
        except ImportError as exc:
            raise RuntimeLoadError(f"{path}: TensorRT is not usable here ({exc})") from None
        if device == "cpu" or not torch.cuda.is_available():
            raise RuntimeLoadError(f"{path}: a TensorRT engine needs a CUDA GPU (device {device!r})")
        settings = _read_sidecar(Path(path), trt.__version__)
        self.info = info_from_metadata(settings.get("metadata", {}), path, precision)
        # The builder decided the precision; the sidecar records what it was asked for.
        self.precision_used = str(settings.get("precision", precision))
        self.device = cuda_device(device)
        self.providers = (f"tensorrt-{trt.__version__}",)
        # The logger and runtime must outlive the engine; one context serves one call at a time.
        self._torch, self._logger, self._lock = torch, trt.Logger(trt.Logger.WARNING), threading.Lock()
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if self.engine is None:
                raise RuntimeLoadError(f"{path}: TensorRT could not deserialize the engine (see its log above)")
            try:
                strategy = allocation_strategy(settings)
            except ValueError as exc:
                raise RuntimeLoadError(f"{engine_sidecar(path)}: {exc}") from None
            # user_managed: activation memory sized for each request's shape, not the profile's max.
            self.context = create_context(self.engine, strategy)
            allocate = lambda size: torch.empty(size, dtype=torch.uint8, device=self.device)  # noqa: E731
            self._memory = DeviceMemory(allocate) if needs_device_memory(strategy) else None
            self.stream = torch.cuda.Stream(device=self.device)
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        numpy_types = {n: np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.dtypes = {n: torch.from_numpy(array).dtype for n, array in numpy_types.items()}
        self.profile = self.engine.get_tensor_profile_shape("image", 0)  # (min, opt, max) of the input

    def _check_profile(self, shape: tuple[int, ...]) -> None:
        low, _, high = (tuple(dims) for dims in self.profile)
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high, strict=True)):
            raise ValueError(f"input shape {shape} is outside the engine's profile min {low} .. max {high}")

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        """``images`` float32 ``[B,3,H,W]`` -> logits ``[B,K,H,W]`` and labels ``[B,H,W]``."""
        torch = self._torch
        images = check_images(images)
        self._check_profile(images.shape)
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            image = torch.from_numpy(images).to(self.device, dtype=self.dtypes["image"], non_blocking=True)
            if not self.context.set_input_shape("image", tuple(image.shape)):
                raise ValueError(f"TensorRT rejected input shape {tuple(image.shape)}")
            buffers = {"image": image}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            for name, tensor in buffers.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            if self._memory is not None:
                self._memory.bind(self.context)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.info.source}: TensorRT execution failed (see its log)")
            self.stream.synchronize()
        labels = buffers["labels"].to(torch.uint8).cpu().numpy()
        return Prediction(buffers["logits"].float().cpu().numpy() if want_logits else None, labels)

    def close(self) -> None:
        self.context = self.engine = None
