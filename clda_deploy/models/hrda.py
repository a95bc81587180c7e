"""HRDA (Hoyer et al. 2022b): multi-resolution segmentation with a learned scale attention (DESIGN §7).

An ``HRDASegmenter`` is a ``Segmenter`` (one MiT encoder, one DAFormer head, so CLDA's block
addressing, EMA and export work unchanged) plus a light scale-attention head. Every forward sees
the image twice through the *shared* encoder and head:

- the **context** pass on the image downscaled by ``context_scale`` (0.5): logits ``c`` and, from
  the same features, the class-wise attention ``a = sigmoid(attention_head(features))``;
- the **detail** pass at full scale, on a detail crop (training), on the whole image (``forward``:
  what is exported and served), or by overlapping detail-sized windows (``slide_forward``: HRDA's
  pseudo-labels and its test mode).

Fusion (``fuse_scales``), at the detail logits' stride-4 grid:
``fused = a ⊙ detail (placed in its box) + upsample((1 − a) ⊙ context)``, with ``a`` zero outside
the detail box, so that outside it the fused prediction is the context's alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import Tensor, nn

from clda_deploy.inference import slide_windows
from clda_deploy.models.encoders import MiTEncoder
from clda_deploy.models.heads import build_head
from clda_deploy.models.segmenter import Segmenter

__all__ = ["Box", "HRDAOutput", "HRDASegmenter", "detail_crop_box", "fuse_scales", "place_windows"]

OUTPUT_STRIDE = 4  # the decode head's logits are at stride 4 of its input

Box = tuple[int, int, int, int]  # (top, left, bottom, right) in input pixels


def detail_crop_box(
    size: tuple[int, int], crop: tuple[int, int], generator: torch.Generator | None = None, divisible: int = 8
) -> Box:
    """A random detail box of ``crop`` (h, w) inside an image of ``size`` (H, W), as HRDA's
    ``get_crop_bbox``: offsets uniform over the multiples of ``divisible`` that keep the box inside
    (so the box maps exactly onto the stride-4 grids of both scales)."""
    height, width = size
    crop_h, crop_w = crop
    if crop_h > height or crop_w > width:
        raise ValueError(f"detail crop {crop_h}x{crop_w} does not fit in a {height}x{width} image")
    offsets = []
    for margin in (height - crop_h, width - crop_w):
        choices = margin // divisible + 1
        offsets.append(int(torch.randint(choices, (1,), generator=generator)) * divisible)
    top, left = offsets
    return top, left, top + crop_h, left + crop_w


def _grid_box(box: Box, stride: int) -> Box:
    """A pixel box on a stride-``stride`` grid; raises when it does not land on grid lines."""
    if any(value % stride for value in box):
        raise ValueError(f"box {box} is not aligned to the stride-{stride} logits grid (use multiples of 8)")
    return tuple(value // stride for value in box)  # type: ignore[return-value]


def fuse_scales(context: Tensor, attention: Tensor, detail: Tensor, box: Box | None, size: tuple[int, int]) -> Tensor:
    """HRDA's fusion at the detail grid ``size`` (h, w) = stride 4 of the full-scale input.

    Args:
        context: context logits ``[B,K,h',w']`` (stride 4 of the downscaled image).
        attention: scale attention ``[B,K,h',w']`` in [0, 1] (after the sigmoid).
        detail: detail logits ``[B,K,bh,bw]`` for ``box`` (on the ``size`` grid), or ``[B,K,h,w]`` when
            ``box`` is None (detail everywhere).
        box: the detail box in **grid** cells (top, left, bottom, right), or None.

    Returns ``a ⊙ detail_placed + upsample((1 − a) ⊙ context)`` ``[B,K,h,w]`` with ``a`` upsampled
    and zeroed outside ``box``.
    """
    if box is not None:
        mask = torch.zeros_like(attention[:, :1])
        scale_h, scale_w = attention.shape[-2] / size[0], attention.shape[-1] / size[1]
        top, left = round(box[0] * scale_h), round(box[1] * scale_w)
        bottom, right = round(box[2] * scale_h), round(box[3] * scale_w)
        mask[:, :, top:bottom, left:right] = 1
        attention = attention * mask
    weighted_context = F.interpolate((1 - attention) * context, size=size, mode="bilinear", align_corners=False)
    attention = F.interpolate(attention, size=size, mode="bilinear", align_corners=False)
    if box is None:
        return attention * detail + weighted_context
    placed = torch.zeros_like(weighted_context)
    placed[:, :, box[0] : box[2], box[1] : box[3]] = detail
    return attention * placed + weighted_context


def place_windows(windows: Sequence[Tensor], boxes: Sequence[Box], size: tuple[int, int]) -> Tensor:
    """Average overlapping window logits on one grid: ``windows[i] [B,K,bh,bw]`` at ``boxes[i]`` (grid
    cells) -> ``[B,K,*size]`` (HRDA's sliding detail: logits summed and divided by the count)."""
    first = windows[0]
    total = first.new_zeros((first.shape[0], first.shape[1], *size))
    count = first.new_zeros((1, 1, *size))
    for window, (top, left, bottom, right) in zip(windows, boxes, strict=True):
        total[:, :, top:bottom, left:right] += window
        count[:, :, top:bottom, left:right] += 1
    if not bool((count > 0).all()):
        raise ValueError(f"the windows {list(boxes)} do not cover the {size[0]}x{size[1]} grid")
    return total / count


@dataclass
class HRDAOutput:
    """A training forward: ``fused [B,K,H,W]`` over the whole crop and ``detail [B,K,bh,bw]`` over
    ``box`` (input pixels), both upsampled to input resolution; ``context_features``: the encoder's
    four maps of the context pass (the feature distance reads them)."""

    fused: Tensor
    detail: Tensor
    box: Box
    context_features: list[Tensor]


class HRDASegmenter(Segmenter):
    """Normalized images ``[B,3,H,W]`` -> fused logits ``[B,K,H,W]`` (HRDA whole-image inference).

    ``forward(image, detail_box=box)`` (training) returns an ``HRDAOutput`` instead; it goes through
    ``__call__`` so that DistributedDataParallel sees one forward per backward.
    """

    encoder_passes = 2  # context and detail: an exported graph holds the encoder twice

    def __init__(self, encoder: MiTEncoder, head: nn.Module, attention_head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__(encoder, head, spec)
        self.attention_head = attention_head
        self.context_scale = float(spec["context_scale"])
        self.detail_crop = tuple(spec["detail_crop"])
        self.slide_stride = tuple(spec["slide_stride"])

    def _context(self, image: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Context logits and attention ``[B,K,h',w']`` and the features of the downscaled image."""
        small = F.interpolate(image, scale_factor=self.context_scale, mode="bilinear", align_corners=False)
        features = self.encoder(small)
        return self.head(features), torch.sigmoid(self.attention_head(features)), features

    def _detail_grid(self, image: Tensor) -> tuple[int, int]:
        height, width = image.shape[-2:]
        return -(-height // OUTPUT_STRIDE), -(-width // OUTPUT_STRIDE)

    def forward(self, image: Tensor, detail_box: Box | None = None) -> Tensor | HRDAOutput:
        """``image [B,3,H,W]`` -> fused logits ``[B,K,H,W]`` (detail on the whole image), or, with
        ``detail_box`` (input pixels, multiples of 8), the training ``HRDAOutput``."""
        context, attention, features = self._context(image)
        if detail_box is None:  # the detail's own grid size, so an exported graph keeps dynamic H, W
            detail = self.head(self.encoder(image))
            fused = fuse_scales(context, attention, detail, None, detail.shape[-2:])
            return F.interpolate(fused, size=image.shape[-2:], mode="bilinear", align_corners=False)
        grid = self._detail_grid(image)
        top, left, bottom, right = detail_box
        detail = self.head(self.encoder(image[:, :, top:bottom, left:right]))
        fused = fuse_scales(context, attention, detail, _grid_box(detail_box, OUTPUT_STRIDE), grid)
        return HRDAOutput(
            fused=F.interpolate(fused, size=image.shape[-2:], mode="bilinear", align_corners=False),
            detail=F.interpolate(detail, size=(bottom - top, right - left), mode="bilinear", align_corners=False),
            box=detail_box,
            context_features=list(features),
        )

    def slide_forward(self, image: Tensor) -> Tensor:
        """HRDA's multi-resolution inference with a sliding detail: the context on the whole image,
        the detail by overlapping windows of ``detail_crop`` with stride ``slide_stride`` (one batched
        pass; logits averaged on the stride-4 grid), fused by the attention -> ``[B,K,H,W]``."""
        context, attention, _ = self._context(image)
        grid = self._detail_grid(image)
        height, width = image.shape[-2:]
        boxes = slide_windows(height, width, self.detail_crop, self.slide_stride)
        crops = torch.cat([image[:, :, t:b, l:r] for t, l, b, r in boxes])
        logits = self.head(self.encoder(crops)).split(image.shape[0])
        detail = place_windows(logits, [_grid_box(box, OUTPUT_STRIDE) for box in boxes], grid)
        fused = fuse_scales(context, attention, detail, None, grid)
        return F.interpolate(fused, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def pseudo_label_logits(self, image: Tensor) -> Tensor:
        """What a teacher predicts for pseudo-labels: HRDA's sliding multi-resolution inference."""
        return self.slide_forward(image)


def build_hrda(
    encoder: MiTEncoder,
    head: nn.Module,
    spec: dict[str, Any],
    attention_channels: int,
) -> HRDASegmenter:
    """Wrap a built encoder and head with the scale-attention head: HRDA's "light DAFormer-type head"
    (per-level linear embedding, 1x1 conv + BN + ReLU fusion, i.e. the SegFormer head) with one output
    per class (class-wise attention)."""
    for key in ("context_scale", "detail_crop", "slide_stride"):
        if key not in spec:
            raise ValueError(f"an HRDA segmenter needs spec[{key!r}]")
    if not 0.0 < float(spec["context_scale"]) < 1.0:
        raise ValueError(f"context_scale must be in (0, 1), got {spec['context_scale']}")
    attention_head = build_head("segformer", encoder.embed_dims, spec["num_classes"], channels=attention_channels)
    return HRDASegmenter(encoder, head, attention_head, spec)
