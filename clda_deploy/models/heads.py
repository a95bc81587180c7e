"""Decode heads: four encoder feature maps -> class logits at stride 4.

Both heads follow the mmseg code they come from, down to the submodule names (``embed_layers``,
``fuse_layer.aspp_modules``, ``conv.`` / ``bn.`` inside a conv module, ``conv_seg``), so the weights
of a DAFormer decode head (``decode_head.*`` in its checkpoints) map onto ``DAFormerHead`` by
stripping the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import Tensor, nn

__all__ = ["DAFormerHead", "SegFormerHead", "build_head", "ConvModule", "DepthwiseSeparableConvModule"]

ASPP_DILATIONS: tuple[int, ...] = (1, 6, 12, 18)  # DAFormer's "aspp" fusion (sep=True, pool=False)


class ConvModule(nn.Module):
    """mmcv's ConvModule with BN and ReLU: conv (no bias, BN follows) -> BN -> ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        # mmcv's init: Kaiming normal (fan_out, ReLU) for the conv, identity affine for the BN.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, H, W]``."""
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise 3x3 (dilated) ConvModule then pointwise 1x1 ConvModule, each with BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, 3, dilation=dilation, groups=in_channels)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, H, W]``."""
        return self.pointwise_conv(self.depthwise_conv(x))


class LinearEmbedding(nn.Module):
    """DAFormer's/SegFormer's ``MLP``: a per-pixel linear projection (a 1x1 conv stored as Linear)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, H, W]``."""
        # Permutes instead of flatten + reshape: no shape arithmetic, so dynamic H/W export cleanly.
        return self.proj(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ASPPWrapper(nn.Module):
    """DAFormer's ASPPWrapper with ``sep=True, pool=False``: parallel ASPP branches -> 3x3 bottleneck.

    Dilation 1 is a 1x1 ConvModule; every other dilation a depthwise-separable 3x3 ConvModule.
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int] = ASPP_DILATIONS) -> None:
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1)
            if dilation == 1
            else DepthwiseSeparableConvModule(in_channels, channels, dilation=dilation)
            for dilation in dilations
        )
        self.bottleneck = ConvModule(len(dilations) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W]`` -> ``[B, channels, H, W]``."""
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class _MultiLevelHead(nn.Module):
    """Shared front: per-level linear embedding to ``channels``, upsample to stride 4, concat."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int, dropout: float) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.in_channels = tuple(in_channels)
        self.num_classes = num_classes
        self.channels = channels
        self.embed_layers = nn.ModuleList(LinearEmbedding(width, channels) for width in self.in_channels)
        # mmseg's BaseDecodeHead drops whole channels (Dropout2d) before the classifier.
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg's classifier init
        nn.init.zeros_(self.conv_seg.bias)

    def embed_and_concat(self, features: Sequence[Tensor]) -> Tensor:
        """Four maps ``[B, C_s, H_s, W_s]`` -> ``[B, levels * channels, H_0, W_0]``."""
        if len(features) != len(self.embed_layers):
            raise ValueError(f"expected {len(self.embed_layers)} feature maps, got {len(features)}")
        size = features[0].shape[-2:]
        embedded = [self.embed_layers[0](features[0])]
        # Level 0 is already at stride 4; the others are always coarser, so they always resize
        # (decided by level index, not by comparing shapes, so tracing bakes in no size).
        for layer, feature in zip(self.embed_layers[1:], features[1:], strict=True):
            embedded.append(F.interpolate(layer(feature), size=size, mode="bilinear", align_corners=False))
        return torch.cat(embedded, dim=1)

    def classify(self, fused: Tensor) -> Tensor:
        """``[B, channels, H, W]`` -> logits ``[B, K, H, W]``."""
        return self.conv_seg(self.dropout(fused))


class DAFormerHead(_MultiLevelHead):
    """DAFormer's decode head (Hoyer et al. 2022), as in its config ``daformer_sepaspp_mitb5``.

    features (4 maps ``[B, C_s, H/2^(s+2), W/2^(s+2)]``) -> logits ``[B, K, H/4, W/4]``:
    linear embedding of each level to ``channels``, bilinear upsampling to stride 4, concat,
    depthwise-separable ASPP (dilations 1, 6, 12, 18, no image pooling) + 3x3 bottleneck with
    BN + ReLU, dropout, 1x1 classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__(in_channels, num_classes, channels, dropout)
        self.fuse_layer = ASPPWrapper(len(self.in_channels) * channels, channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Four feature maps -> logits ``[B, K, H_0, W_0]`` (the size of the stride-4 map)."""
        return self.classify(self.fuse_layer(self.embed_and_concat(features)))


class SegFormerHead(_MultiLevelHead):
    """SegFormer's all-MLP decode head (Xie et al. 2021).

    features -> logits ``[B, K, H/4, W/4]``: linear embedding of each level to ``channels``,
    bilinear upsampling to stride 4, concat, 1x1 fuse conv + BN + ReLU, dropout, 1x1 classifier.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__(in_channels, num_classes, channels, dropout)
        self.fuse_layer = ConvModule(len(self.in_channels) * channels, channels, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Four feature maps -> logits ``[B, K, H_0, W_0]`` (the size of the stride-4 map)."""
        return self.classify(self.fuse_layer(self.embed_and_concat(features)))


HEADS: dict[str, type[_MultiLevelHead]] = {"daformer": DAFormerHead, "segformer": SegFormerHead}


def build_head(
    name: str, in_channels: Sequence[int], num_classes: int, channels: int = 256, dropout: float = 0.1
) -> nn.Module:
    """A decode head by name (``presets.HEAD_NAMES``); ValueError listing the choices otherwise."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; valid heads: {', '.join(HEADS)}")
    return HEADS[name](in_channels, num_classes, channels=channels, dropout=dropout)
