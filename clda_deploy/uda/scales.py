"""The student's training forward and its segmentation loss, for one scale (DAFormer) or HRDA's two.

Every task (DAFormer, the baselines, CLDA) trains through a ``TrainForward``: one call of the (possibly
DDP-wrapped) model on a batch, then ``loss(output, rows, labels, weight)`` on a slice of its rows
(source, mixed target, masked target share one forward, as DDP wants one forward per backward).

- ``SingleScale``: logits ``[B,K,H,W]`` and the pixel-weighted CE (Eq. 4/5/9, DAFormer's losses).
- ``MultiResolution`` (HRDA): the context of the whole crop plus a random detail crop inside it
  (``detail_crop_box``; one box per batch, as HRDA), and the loss ``hrda_loss``:
  ``(1 − λ_d) · CE(fused) + λ_d · CE(detail, the labels cropped to its box)``, λ_d = 0.1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import Tensor, nn

from clda_deploy.config import Config, detail_crop
from clda_deploy.losses import pixel_weighted_cross_entropy
from clda_deploy.models.hrda import Box, HRDAOutput, detail_crop_box

__all__ = ["MultiResolution", "SingleScale", "TrainForward", "build_train_forward", "crop_to_box", "hrda_loss"]

# Detail boxes draw from their own stream, so adding HRDA changes no random draw of a DAFormer run.
BOX_SEED_OFFSET = 104_729


def crop_to_box(values: Tensor | None, box: Box) -> Tensor | None:
    """``[B,H,W]`` (labels or pixel weights) -> ``[B,bh,bw]`` inside ``box`` (top, left, bottom, right)."""
    if values is None:
        return None
    top, left, bottom, right = box
    return values[:, top:bottom, left:right]


def hrda_loss(
    output: HRDAOutput, rows: slice, labels: Tensor, weight: Tensor | None, detail_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """HRDA's loss on ``rows`` of a training forward: ``(1 − w)·CE(fused) + w·CE(detail)`` with the labels
    (and pixel weights) cropped to the detail box; no separate context loss. Returns (loss, parts)."""
    fused = pixel_weighted_cross_entropy(output.fused[rows], labels, weight)
    detail = pixel_weighted_cross_entropy(output.detail[rows], crop_to_box(labels, output.box),
                                          crop_to_box(weight, output.box))  # fmt: skip
    return (1.0 - detail_weight) * fused + detail_weight * detail, {"fused_ce": fused.detach(),
                                                                    "detail_ce": detail.detach()}  # fmt: skip


class SingleScale:
    """DAFormer's one-scale forward: ``model(images)`` -> logits ``[B,K,H,W]``."""

    def __call__(self, model: nn.Module, images: Tensor) -> Tensor:
        return model(images)

    def loss(self, output: Tensor, rows: slice, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        return pixel_weighted_cross_entropy(output[rows], labels, weight)

    def context_images(self, images: Tensor) -> Tensor:
        """The images the encoder's feature maps of this forward describe (the feature distance's input)."""
        return images

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class MultiResolution:
    """HRDA's training forward: ``model(images, detail_box=box)`` -> ``HRDAOutput``, a fresh box per call."""

    def __init__(self, cfg: Config, seed: int) -> None:
        self.detail_crop = detail_crop(cfg)
        self.divisible = cfg.hrda.divisible
        self.detail_weight = cfg.hrda.detail_loss_weight
        self.context_scale = cfg.hrda.context_scale
        self.generator = torch.Generator().manual_seed(seed + BOX_SEED_OFFSET)

    def __call__(self, model: nn.Module, images: Tensor) -> HRDAOutput:
        box = detail_crop_box(tuple(images.shape[-2:]), self.detail_crop, self.generator, self.divisible)
        return model(images, detail_box=box)

    def loss(self, output: HRDAOutput, rows: slice, labels: Tensor, weight: Tensor | None = None) -> Tensor:
        return hrda_loss(output, rows, labels, weight, self.detail_weight)[0]

    def context_images(self, images: Tensor) -> Tensor:
        """HRDA's feature distance reads the context features: the images at ``context_scale``."""
        return F.interpolate(images, scale_factor=self.context_scale, mode="bilinear", align_corners=False)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


TrainForward = SingleScale | MultiResolution


def build_train_forward(cfg: Config, seed: int) -> TrainForward:
    """The forward ``uda.method`` names."""
    return MultiResolution(cfg, seed) if cfg.uda.method == "hrda" else SingleScale()
