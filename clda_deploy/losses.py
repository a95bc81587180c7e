"""Loss functions shared by the DAFormer teacher and the CLDA student: pure tensor functions.

- ``pixel_weighted_cross_entropy``: per-pixel CE times a per-pixel weight, averaged over all pixels.
  This is DAFormer's (Hoyer et al. 2022) confidence-weighted target loss and CLDA's Eq. 4/5/9
  (source CE + q-weighted CE against the teacher's hard pseudo-labels).
- ``masked_feature_distance``: DAFormer's ImageNet feature distance (Sec. 3.4), restricted to
  pixels of thing classes after ``downscale_label_ratio``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import Tensor

from clda_deploy.data.labels import IGNORE_INDEX, THING_CLASSES

__all__ = ["downscale_label_ratio", "masked_feature_distance", "pixel_weighted_cross_entropy"]


def pixel_weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Mean over ALL pixels of ``weight * CE(logits, target)``; a scalar tensor.

    Args:
        logits: ``[B,K,H,W]`` unnormalised class scores.
        target: ``[B,H,W]`` long class ids; ``ignore_index`` pixels contribute 0.
        weight: ``[B,H,W]`` per-pixel weight (DAFormer's pseudo_weight q), a scalar, or ``None`` (1).
        ignore_index: label id excluded from the loss.

    Ignored pixels still count in the denominator: this is mmseg's
    ``weight_reduce_loss(reduction="mean", avg_factor=None)`` as DAFormer calls it, so the loss
    scale matches DAFormer's published hyperparameters (not ``F.cross_entropy``'s default mean,
    which divides by the number of valid pixels only).
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B,K,H,W], got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must be [B,H,W] = {expected} to match logits, got {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"target must hold long class ids, got dtype {target.dtype}")
    loss = F.cross_entropy(logits, target, reduction="none", ignore_index=ignore_index)  # [B,H,W]
    if isinstance(weight, Tensor):
        if tuple(weight.shape) != expected:
            raise ValueError(f"weight must be [B,H,W] = {expected}, got {tuple(weight.shape)}")
        loss = loss * weight.to(loss.dtype)
    elif weight is not None:
        loss = loss * float(weight)
    return loss.mean()


def downscale_label_ratio(
    label: Tensor, size: Sequence[int], min_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Block-wise majority downsampling of a label map, as DAFormer's ``downscale_label_ratio``.

    Args:
        label: ``[B,H,W]`` long class ids (``ignore_index`` allowed).
        size: ``(h, w)`` the target (feature) size.
        min_ratio: a block keeps its majority class only if it covers >= this share of the block.

    Returns:
        ``[B,h,w]`` long: the majority class per block (ignore counts as a class in the vote, as in
        DAFormer), or ``ignore_index`` where the majority covers less than ``min_ratio``.

    DAFormer uses one integer scale factor ``W // w`` (its crops are multiples of 32). When the
    label is not an exact multiple of ``size`` (odd crops, where the encoder rounds up), each axis
    uses ``ceil(H / h)`` and the label is padded with ``ignore_index`` at the bottom/right, so
    the block grid always covers the feature map; on multiples both rules agree.
    """
    if label.dim() != 3:
        raise ValueError(f"label must be [B,H,W], got shape {tuple(label.shape)}")
    height, width = label.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    block_h, block_w = math.ceil(height / out_h), math.ceil(width / out_w)
    label = label.long()
    valid = label != ignore_index
    # Ignore becomes its own class (the last one) so that it takes part in the majority vote.
    num_classes = int(label[valid].max().item()) + 1 if bool(valid.any()) else 0
    remapped = torch.where(valid, label, torch.full_like(label, num_classes))
    pad = (0, out_w * block_w - width, 0, out_h * block_h - height)
    remapped = F.pad(remapped, pad, value=num_classes)
    one_hot = F.one_hot(remapped, num_classes + 1).permute(0, 3, 1, 2).float()  # [B,K+1,H',W']
    ratio, majority = F.avg_pool2d(one_hot, kernel_size=(block_h, block_w)).max(dim=1)  # [B,h,w]
    keep = (majority != num_classes) & (ratio >= min_ratio)
    return torch.where(keep, majority, torch.full_like(majority, ignore_index))


def masked_feature_distance(
    features: Tensor,
    reference: Tensor,
    label: Tensor,
    thing_classes: Sequence[int] = THING_CLASSES,
    ignore_index: int = IGNORE_INDEX,
    min_ratio: float = 0.75,
) -> Tensor:
    """DAFormer's thing-class ImageNet feature distance (before the lambda factor); a scalar.

    Args:
        features: ``[B,C,h,w]`` the trained encoder's (last-stage) features.
        reference: ``[B,C,h,w]`` the frozen ImageNet encoder's features (detached here).
        label: ``[B,H,W]`` source labels at image resolution.
        thing_classes: class ids whose pixels are compared (DAFormer's ``fdist_classes``).

    The label is reduced to ``[B,h,w]`` with ``downscale_label_ratio`` (DAFormer's
    ``fdist_scale_min_ratio`` = 0.75); the result is the mean over masked pixels of
    ``||features - reference||_2`` along C. With no masked pixel DAFormer returns NaN (harmless
    there, no graph connection); here it is 0, still attached to the graph so ``backward`` works.
    """
    if features.dim() != 4 or features.shape != reference.shape:
        raise ValueError(
            f"features and reference must both be [B,C,h,w] of one shape, "
            f"got {tuple(features.shape)} and {tuple(reference.shape)}"
        )
    if label.dim() != 3 or label.shape[0] != features.shape[0]:
        raise ValueError(f"label must be [B,H,W] with B = {features.shape[0]}, got {tuple(label.shape)}")
    with torch.no_grad():
        small = downscale_label_ratio(label, features.shape[-2:], min_ratio, ignore_index)
        classes = torch.as_tensor(list(thing_classes), device=small.device, dtype=small.dtype)
        mask = torch.isin(small, classes)  # [B,h,w]
    distance = torch.linalg.vector_norm(features - reference.detach(), ord=2, dim=1)  # [B,h,w]
    # sum / count instead of mean: an empty selection sums to a graph-attached 0 (not NaN).
    return distance[mask].sum() / mask.sum().clamp_min(1)
