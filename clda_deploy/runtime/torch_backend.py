"""The PyTorch predictor: a ``model.safetensors`` run by the project's own Segmenter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clda_deploy.runtime import Prediction, RuntimeLoadError, check_images, check_precision, cuda_device, model_info
from clda_deploy.runtime.metadata import class_table


class TorchPredictor:
    """A ``model.safetensors`` run by PyTorch, in fp32 or in bf16 autocast (the no-export baseline of
    the quantized variants: matmuls and convolutions in bf16, reductions and softmax in fp32, as
    autocast's op lists decide). ``threads`` calls ``torch.set_num_threads``, which is process-wide
    (it also changes every other torch model in this process)."""

    backend = "torch"
    requires = ("torch",)

    def __init__(
        self, path: str | Path, device: str = "auto", threads: int | None = None, precision: str = "fp32"
    ) -> None:
        import torch

        self.precision_used = check_precision(path, precision, ("fp32", "bf16"))

        from clda_deploy.checkpoint import CheckpointError, load_segmenter, read_config

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeLoadError(f"{path}: device {device!r} requested but CUDA is not available")
        self.device = "cpu" if device == "cpu" else cuda_device(device)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            self.model = load_segmenter(path, device=self.device)
            names, palette = class_table(read_config(path).model.num_classes)
        except CheckpointError as exc:
            raise RuntimeLoadError(str(exc)) from None
        self.providers = (f"torch-{self.device.split(':')[0]}",)
        self.info = model_info(path, names, palette, precision)
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        """``images`` float32 ``[B,3,H,W]`` -> logits ``[B,K,H,W]`` and labels ``[B,H,W]``."""
        import torch

        batch = torch.from_numpy(check_images(images)).to(self.device)
        half = self.autocast_dtype is not None
        autocast = torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype or torch.float32, enabled=half)
        with torch.inference_mode(), autocast:
            logits = self.model(batch).float()
            labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return Prediction(logits.cpu().numpy() if want_logits else None, labels)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
