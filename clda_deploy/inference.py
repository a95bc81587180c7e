"""Whole-image and sliding-window inference (mmseg's ``whole`` and ``slide`` test modes).

What runs here is a ``LogitsFn``: any callable mapping a normalized batch ``[B,3,H,W]`` to logits
``[B,K,H,W]`` (a Segmenter, or a runtime predictor through ``clda_deploy.runtime.as_logits_fn``),
so evaluation code is shared by training, export parity and the serving benchmarks. (A runtime
``Predictor`` is the numpy interface of ``clda_deploy.runtime``.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from clda_deploy.errors import CldaError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class DeviceUnavailableError(CldaError, RuntimeError):
    """The requested device does not exist on this machine; the message says which device to use."""


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B,K,h,w]`` logits to ``size`` (H, W); a no-op when equal."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Window boxes ``(top, left, bottom, right)`` covering the image, as mmseg's slide_inference.

    The last row/column of windows is shifted back to end at the border; an image smaller than the
    crop is one window of its own size.
    """
    crop_h, crop_w = min(crop[0], height), min(crop[1], width)
    rows = max(height - crop_h + stride[0] - 1, 0) // stride[0] + 1
    cols = max(width - crop_w + stride[1] - 1, 0) // stride[1] + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            top = min(row * stride[0], height - crop_h)
            left = min(col * stride[1], width - crop_w)
            boxes.append((top, left, top + crop_h, left + crop_w))
    return boxes


@torch.no_grad()
def slide_logits(
    predict: LogitsFn, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """Average the logits of overlapping windows: ``[B,3,H,W]`` -> ``[B,K,H,W]``."""
    height, width = images.shape[-2:]
    total: torch.Tensor | None = None
    count = torch.zeros((1, 1, height, width), device=images.device)
    for top, left, bottom, right in slide_windows(height, width, crop, stride):
        window = predict(images[:, :, top:bottom, left:right]).float()
        if total is None:
            total = torch.zeros((images.shape[0], window.shape[1], height, width), device=images.device)
        total[:, :, top:bottom, left:right] += window
        count[:, :, top:bottom, left:right] += 1
    assert total is not None and bool((count > 0).all()), "windows must cover the image"
    return total / count


@torch.no_grad()
def predict_logits(
    predict: LogitsFn,
    images: torch.Tensor,
    mode: str = "whole",
    crop: tuple[int, int] = (512, 512),
    stride: tuple[int, int] = (341, 341),
) -> torch.Tensor:
    """Logits ``[B,K,H,W]`` for a normalized batch ``[B,3,H,W]`` in ``whole`` or ``slide`` mode."""
    if mode == "whole":
        return predict(images).float()
    if mode == "slide":
        return slide_logits(predict, images, crop, stride)
    raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailableError(f"device {name!r} requested but CUDA is not available; use --set train.device=cpu")
    return torch.device(name)
