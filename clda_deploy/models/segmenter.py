"""Segmenter = MiT encoder + decode head, with the block addressing CLDA needs (DESIGN §6).

Blocks are named ``stage{s}.block{bb}`` (``blocks.BlockName``: s in 1..4, bb 0-based and two digits,
``stage3.block05``) in every file and log; the encoder resolves them (``blocks.BlockEncoder``). A
segmenter can return a block's attention output through a hook (``capture_attention``) and run with
named blocks skipped (``skip_blocks``, Eq. 2's R(block skipped)). Neither changes the state_dict,
and the forward has no Python branch on tensor values, so it exports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch.nn.functional as F  # noqa: N812 (the conventional alias)
from torch import Tensor, nn

from clda_deploy.models.blocks import BlockName
from clda_deploy.models.encoders import MiTEncoder, build_encoder
from clda_deploy.models.heads import HEADS, build_head
from clda_deploy.models.presets import HEAD_NAMES

__all__ = ["Segmenter", "build_segmenter"]


def _pass_through(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """A skipped block's forward: the residual stream ``[B, N, C]`` passes unchanged."""
    return x


class Segmenter(nn.Module):
    """Normalized images ``[B,3,H,W]`` -> logits ``[B,K,H,W]`` at input resolution.

    Attributes: ``encoder`` (MiTEncoder), ``head`` (DAFormerHead or SegFormerHead), ``spec``
    (the build arguments: encoder, head, num_classes, head_channels; ``build_segmenter(**spec)``
    rebuilds the architecture).
    """

    def __init__(self, encoder: MiTEncoder, head: nn.Module, spec: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.spec = dict(spec)

    def forward(self, image: Tensor) -> Tensor:
        """``image [B,3,H,W]`` (normalized float) -> logits ``[B,K,H,W]``."""
        logits = self.head(self.encoder(image))  # [B, K, ceil(H/4), ceil(W/4)]
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def pseudo_label_logits(self, image: Tensor) -> Tensor:
        """What this model predicts as a teacher for pseudo-labels (``HRDASegmenter``: its sliding
        multi-resolution inference); for one scale, the plain forward."""
        return self(image)

    # ----- block addressing -------------------------------------------------------------------
    def block_names(self) -> list[str]:
        """All transformer blocks in forward order: ``stage1.block00``, ..., ``stage4.block{d-1}``."""
        return self.encoder.block_names()

    def block(self, name: str | BlockName) -> nn.Module:
        """The block called ``name`` (maps ``[B, N, C]`` tokens to ``[B, N, C]``); BlockNameError for a
        malformed name or one this encoder lacks (the message lists the blocks it has)."""
        return self.encoder.block(name)

    def block_state_prefix(self, name: str | BlockName) -> str:
        """The ``state_dict`` key prefix of block ``name`` (keys ``prefix + "." + tensor``), found by
        module identity so that no caller spells the encoder's attribute paths."""
        block = self.block(name)
        return next(path for path, module in self.named_modules() if module is block)

    def _resolve(self, names: Iterable[str], part: Callable[[str], nn.Module]) -> dict[str, nn.Module]:
        # Resolve every name before touching anything, so a typo changes no block.
        if isinstance(names, str):
            names = [names]
        return {name: part(name) for name in names}

    @contextlib.contextmanager
    def capture_attention(self, names: Iterable[str], detach: bool = False) -> Iterator[dict[str, Tensor]]:
        """Context yielding ``{name: attention output [B, N, C]}``, filled by forwards inside it.

        The tensor is the block's attention branch after its output projection and before the
        residual add (a forward hook on ``encoder.attention(name)``); N = H_s * W_s tokens of the block's stage,
        C its width. Each forward overwrites the entry; a skipped block records nothing.
        ``detach=True`` stores tensors without their autograd graph. Hooks are removed on exit.
        """
        attentions = self._resolve(names, self.encoder.attention)
        captured: dict[str, Tensor] = {}
        handles = []
        try:
            for name, attention in attentions.items():
                handles.append(attention.register_forward_hook(_capture_hook(captured, name, detach)))
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def skip_blocks(self, names: Iterable[str]) -> Iterator[None]:
        """Context in which the named blocks are identities (their input tokens pass unchanged).

        Replaces each block's ``forward`` with a pass-through instance attribute (so the block does
        no work and no state_dict key changes) and restores the previous one on exit, even after
        an exception; nested contexts compose.
        """
        blocks = self._resolve(names, self.block)
        missing = object()
        saved: list[tuple[nn.Module, Any]] = []
        try:
            for block in blocks.values():
                saved.append((block, block.__dict__.get("forward", missing)))
                block.forward = _pass_through
            yield
        finally:
            for block, previous in reversed(saved):
                if previous is missing:
                    del block.forward
                else:
                    block.forward = previous


def _capture_hook(captured: dict[str, Tensor], name: str, detach: bool) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        captured[name] = output.detach() if detach else output

    return hook


def build_segmenter(
    encoder: str,
    head: str = "daformer",
    num_classes: int = 19,
    head_channels: int = 256,
    pretrained: str | None = None,
    drop_path_rate: float | None = None,
) -> Segmenter:
    """A segmenter from an encoder preset name and a head name (``presets.HEAD_NAMES``).

    The head is randomly initialised; the encoder too unless ``pretrained`` names weights (a local
    file or ``"timm:<name>"``, see ``models.pretrained``). ``drop_path_rate`` overrides the preset's.
    """
    if head not in HEAD_NAMES or head not in HEADS:
        raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(HEAD_NAMES)}")
    backbone = build_encoder(encoder, pretrained=pretrained, drop_path_rate=drop_path_rate)
    decode_head = build_head(head, backbone.embed_dims, num_classes, channels=head_channels)
    spec = {"encoder": encoder, "head": head, "num_classes": num_classes, "head_channels": head_channels}
    return Segmenter(backbone, decode_head, spec)
