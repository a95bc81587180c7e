"""Decode heads: stride-4 logits, DAFormer's ASPP structure, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clda_deploy.models.heads import (
    HEADS,
    ConvModule,
    DAFormerHead,
    DepthwiseSeparableConvModule,
    SegFormerHead,
    build_head,
)
from clda_deploy.models.presets import HEAD_NAMES

B0_WIDTHS = (32, 64, 160, 256)
WIDE = (64, 128, 320, 512)


def _features(widths: tuple[int, ...], height: int, width: int, batch: int = 2) -> list[torch.Tensor]:
    """Random maps shaped like a MiT encoder's for an input of height x width."""
    features = []
    feature_height, feature_width = -(-height // 4), -(-width // 4)
    for level, channels in enumerate(widths):
        if level > 0:
            feature_height, feature_width = -(-feature_height // 2), -(-feature_width // 2)
        features.append(torch.randn(batch, channels, feature_height, feature_width))
    return features


@pytest.mark.parametrize("head_class", [DAFormerHead, SegFormerHead])
@pytest.mark.parametrize("height, width", [(64, 64), (100, 150)])
def test_logits_at_stride_4(head_class: type[nn.Module], height: int, width: int) -> None:
    torch.manual_seed(0)
    head = head_class(B0_WIDTHS, num_classes=7, channels=32).eval()
    features = _features(B0_WIDTHS, height, width)
    with torch.no_grad():
        logits = head(features)
    assert logits.shape == (2, 7, -(-height // 4), -(-width // 4))
    assert logits.shape[-2:] == features[0].shape[-2:]


def test_daformer_fusion_is_separable_aspp_without_pooling() -> None:
    head = DAFormerHead(WIDE, num_classes=19)
    branches = head.fuse_layer.aspp_modules
    assert len(branches) == 4
    # Dilation 1 is a plain 1x1 conv module (DAFormer's ASPPWrapper with sep=True).
    assert isinstance(branches[0], ConvModule) and branches[0].conv.kernel_size == (1, 1)
    for branch, dilation in zip(branches[1:], (6, 12, 18), strict=True):
        assert isinstance(branch, DepthwiseSeparableConvModule)
        depthwise = branch.depthwise_conv.conv
        assert depthwise.dilation == (dilation, dilation) and depthwise.padding == (dilation, dilation)
        assert depthwise.groups == 4 * 256 and depthwise.kernel_size == (3, 3)
        assert branch.pointwise_conv.conv.kernel_size == (1, 1)
    assert head.fuse_layer.bottleneck.conv.kernel_size == (3, 3)
    assert head.fuse_layer.bottleneck.conv.in_channels == 4 * 256
    assert isinstance(head.fuse_layer.bottleneck.bn, nn.BatchNorm2d)
    assert head.dropout.p == pytest.approx(0.1)
    assert not any(isinstance(module, nn.AdaptiveAvgPool2d) for module in head.modules())
    assert [layer.proj.in_features for layer in head.embed_layers] == list(WIDE)


def _daformer_parameters(widths: tuple[int, ...], channels: int, num_classes: int) -> int:
    concat = len(widths) * channels
    embed = sum(width * channels + channels for width in widths)
    batch_norm = 2 * channels
    aspp_1x1 = concat * channels + batch_norm
    aspp_separable = 3 * (concat * 9 + 2 * concat + concat * channels + batch_norm)
    bottleneck = concat * channels * 9 + batch_norm
    classifier = channels * num_classes + num_classes
    return embed + aspp_1x1 + aspp_separable + bottleneck + classifier


def test_daformer_parameter_count() -> None:
    head = DAFormerHead(WIDE, num_classes=19)
    count = sum(parameter.numel() for parameter in head.parameters())
    assert count == _daformer_parameters(WIDE, 256, 19) == 3_712_275


def test_segformer_head_structure() -> None:
    head = SegFormerHead(B0_WIDTHS, num_classes=19, channels=256)
    assert head.fuse_layer.conv.kernel_size == (1, 1) and head.fuse_layer.conv.in_channels == 4 * 256
    count = sum(parameter.numel() for parameter in head.parameters())
    embed = sum(width * 256 + 256 for width in B0_WIDTHS)
    assert count == embed + 1024 * 256 + 2 * 256 + 256 * 19 + 19


def test_build_head_names_match_presets() -> None:
    assert tuple(HEADS) == HEAD_NAMES
    assert isinstance(build_head("segformer", B0_WIDTHS, 19), SegFormerHead)
    with pytest.raises(ValueError, match="daformer, segformer"):
        build_head("uper", B0_WIDTHS, 19)


def test_wrong_number_of_levels_is_rejected() -> None:
    head = SegFormerHead(B0_WIDTHS, num_classes=3, channels=16)
    with pytest.raises(ValueError, match="expected 4 feature maps"):
        head(_features(B0_WIDTHS, 64, 64)[:3])


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    head = DAFormerHead(B0_WIDTHS, num_classes=5, channels=16)
    head(_features(B0_WIDTHS, 64, 64)).square().mean().backward()
    assert all(parameter.grad is not None for parameter in head.parameters())
