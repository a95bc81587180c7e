"""The PyTorch predictor: a ``model.safetensors`` run by the project's own Segmenter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clda_deploy.runtime import Prediction, RuntimeLoadError, check_images, cuda_device, model_info
from clda_deploy.runtime.metadata import class_table


class TorchPredictor:
    """A ``model.safetensors`` run by PyTorch. ``threads`` calls ``torch.set_num_threads``, which is
    process-wide (it also changes every other torch model in this process)."""

    backend = "torch"
    requires = ("torch",)

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        import torch

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
        self.info = model_info(path, names, palette)

    def predict(self, images: np.ndarray, want_logits: bool = True) -> Prediction:
        """``images`` float32 ``[B,3,H,W]`` -> logits ``[B,K,H,W]`` and labels ``[B,H,W]``."""
        import torch

        batch = torch.from_numpy(check_images(images)).to(self.device)
        with torch.inference_mode():
            logits = self.model(batch).float()
            labels = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return Prediction(logits.cpu().numpy() if want_logits else None, labels)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
