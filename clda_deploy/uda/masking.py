"""MIC, masked image consistency (Hoyer et al. 2023), with an explicit generator.

MIC's ``BlockMaskGenerator``: the image is divided into ``block``x``block`` patches and each patch is
dropped (zeroed) with probability ``ratio`` (0.7, i.e. kept with 0.3). The student sees the
colour-jittered, blurred target image with that mask and learns the EMA teacher's pseudo-labels
of the clean image (same q and margins), so it must infer masked regions from their context.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clda_deploy.config import UDAConfig
from clda_deploy.uda.mixing import strong_transform

__all__ = ["block_mask", "masked_images"]


def block_mask(
    batch: int, size: tuple[int, int], block: int, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """``[B,1,H,W]`` float in {0, 1}: 1 where a pixel is kept. One uniform draw per patch (patches of
    ``block`` pixels from the top-left, the last row/column cut at the border); a patch is kept when its
    draw is >= ``ratio``, as MIC's ``torch.rand(...) > mask_ratio``."""
    height, width = size
    if block <= 0:
        raise ValueError(f"block must be positive, got {block}")
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    draws = torch.rand((batch, 1, rows, cols), generator=generator)
    kept = (draws >= ratio).float()
    return kept.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3)[:, :, :height, :width]


@torch.no_grad()
def masked_images(images: Tensor, cfg: UDAConfig, generator: torch.Generator) -> Tensor:
    """MIC's student input: ``images [B,3,H,W]`` (normalized target) colour-jittered and blurred as
    DAFormer's mixed images are, then masked (masked pixels 0 in normalized space, MIC's ``img * mask``)."""
    augmented = strong_transform(images, generator, cfg.color_jitter, cfg.color_jitter_p, blur=cfg.blur_p > 0,
                                 blur_p=cfg.blur_p)  # fmt: skip
    mask = block_mask(images.shape[0], tuple(images.shape[-2:]), cfg.mic_block, cfg.mic_ratio, generator)
    return augmented * mask.to(device=images.device, dtype=images.dtype)
