"""Confidence-weighted hard pseudo-labels, as DAFormer (Hoyer et al. 2022) builds them from the
EMA teacher's prediction on the clean target image; CLDA's Eq. 5/9 use the same labels and weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ignored_rows", "pseudo_labels", "teacher_logits"]


@torch.no_grad()
def teacher_logits(teacher: nn.Module, images: Tensor, batch_statistics: bool) -> Tensor:
    """The teacher's logits ``[B,K,H,W]`` for pseudo-labels, without gradient.

    With ``batch_statistics`` its BatchNorm layers normalise with the batch's own statistics (DAFormer's
    teacher is a train-mode submodule) while their running statistics stay untouched (momentum 0 for this
    forward); dropout and drop-path stay off. Without it the teacher runs fully in eval mode.
    """
    predict = getattr(teacher, "pseudo_label_logits", teacher)  # HRDA: its sliding multi-resolution inference
    if not batch_statistics:
        return predict(images)
    norms = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.train()
            m.momentum = 0.0
        return predict(images)
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.eval()
            m.momentum = momentum
            if tracked is not None:  # a train-mode forward counts the batch; the teacher's file must not change
                m.num_batches_tracked.copy_(tracked)


def ignored_rows(height: int, rows: int, reference_height: int = 512) -> int:
    """``rows`` given for a ``reference_height`` crop, scaled to ``height`` (rounded half up).

    DAFormer's ``psweight_ignore_top=15`` / ``psweight_ignore_bottom=120`` are tuned for 512-pixel
    Cityscapes crops (ego-vehicle hood and rectification border); a 256-high crop ignores 8 / 60.
    """
    if rows <= 0:
        return 0
    # Half up rather than Python's round-half-to-even, so 7.5 rows -> 8 (the more cautious choice).
    return int(math.floor(rows * height / reference_height + 0.5))


@torch.no_grad()
def pseudo_labels(
    logits: Tensor,
    threshold: float = 0.968,
    ignore_top: int = 15,
    ignore_bottom: int = 120,
    reference_height: int = 512,
    ignore_left: int = 0,
    ignore_right: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Hard pseudo-labels with DAFormer's one-scalar-per-batch confidence weight.

    Args:
        logits: ``[B,K,H,W]`` teacher logits (detached here; no gradient flows to the teacher).
        threshold: DAFormer's ``pseudo_threshold`` tau.
        ignore_top, ignore_bottom: rows given zero weight, for a ``reference_height`` crop;
            scaled by ``H / reference_height`` (``ignored_rows``).
        ignore_left, ignore_right: columns given zero weight (HRDA's side margins), scaled the same way.

    Returns:
        ``labels [B,H,W]`` long (argmax of the softmax), ``weight [B,H,W]`` float32 equal to
        ``q`` = share of the batch's pixels whose max probability is >= ``threshold``, except 0 in
        the ignored top/bottom rows, and ``confidence [B,H,W]`` float32 (the max probability).

    ``q`` stays a tensor (DAFormer calls ``.item()``, a device sync per iteration).
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B,K,H,W], got shape {tuple(logits.shape)}")
    # float32 softmax so fp16/bf16 logits under AMP do not saturate the confidence near 1.
    probabilities = torch.softmax(logits.detach().float(), dim=1)
    confidence, labels = probabilities.max(dim=1)  # [B,H,W] each
    share = (confidence >= threshold).float().mean()  # q, one scalar for the whole batch
    weight = share.expand_as(confidence).clone()
    height = logits.shape[-2]
    top = ignored_rows(height, ignore_top, reference_height)
    bottom = ignored_rows(height, ignore_bottom, reference_height)
    if top > 0:
        weight[:, :top, :] = 0
    if bottom > 0:  # guarded: weight[:, -0:] would zero every row
        weight[:, -bottom:, :] = 0
    left = ignored_rows(height, ignore_left, reference_height)
    right = ignored_rows(height, ignore_right, reference_height)
    if left > 0:
        weight[:, :, :left] = 0
    if right > 0:
        weight[:, :, -right:] = 0
    return labels, weight, confidence
