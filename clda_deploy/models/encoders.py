"""MiT (SegFormer's Mix Transformer) encoders on timm's PyramidVisionTransformerV2.

timm's pvt_v2 and MiT share one architecture (overlapping patch embeddings, spatial-reduction
attention, Mix-FFN with a depthwise 3x3 conv); only the hyperparameters differ, so the presets in
``presets.py`` give MiT-B0..B5 exactly (parameter counts match SegFormer's: B0 3.3M ... B5 81.4M).

The encoder adopts timm's ``patch_embed`` and ``stages`` as its own submodules, so its state_dict
keys are timm's (``stages.2.blocks.5.attn.q.weight``) and timm checkpoints load without renaming.
It implements ``blocks.BlockEncoder`` (blocks by name, their attention and residual branches): this
is the one module that knows where timm keeps them, so no caller spells a timm attribute path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from timm.models.pvt_v2 import PyramidVisionTransformerV2
from torch import Tensor, nn

from clda_deploy.errors import CldaError
from clda_deploy.models.blocks import BlockName, block_names, parse_in
from clda_deploy.models.presets import ENCODER_PRESETS, EncoderPreset

if TYPE_CHECKING:
    from clda_deploy.models.segmenter import Segmenter

__all__ = ["MiTEncoder", "build_encoder", "check_compatible", "encoder_preset"]

STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)


def encoder_preset(name: str) -> EncoderPreset:
    """The preset called ``name``; ValueError listing the valid names otherwise."""
    try:
        return ENCODER_PRESETS[name]
    except KeyError:
        valid = ", ".join(ENCODER_PRESETS)
        raise ValueError(f"unknown encoder {name!r}; valid encoders: {valid}") from None


class MiTEncoder(nn.Module):
    """A four-stage MiT encoder: image ``[B,3,H,W]`` -> features at strides 4, 8, 16, 32.

    Stage ``s`` (0-based) returns ``[B, embed_dims[s], ceil(H / 2^(s+2)), ceil(W / 2^(s+2))]``: the
    patch embeddings pad, so any H, W works (the smallest stage must keep at least one token after
    its spatial reduction, i.e. H, W >= 32). Attributes: ``name``, ``embed_dims``, ``depths``,
    ``num_heads``, ``sr_ratios``, ``strides``.
    """

    def __init__(self, name: str, drop_path_rate: float | None = None) -> None:
        super().__init__()
        preset = encoder_preset(name)
        rate = preset.drop_path_rate if drop_path_rate is None else drop_path_rate
        timm_model = PyramidVisionTransformerV2(
            num_classes=0,
            depths=preset.depths,
            embed_dims=preset.embed_dims,
            num_heads=preset.num_heads,
            sr_ratios=preset.sr_ratios,
            mlp_ratios=preset.mlp_ratios,
            drop_path_rate=rate,
        )
        # Only the feature path is kept: the classifier (Identity for num_classes=0) and its
        # dropout have no parameters, and dropping them keeps the keys exactly timm's.
        self.patch_embed = timm_model.patch_embed
        self.stages = timm_model.stages
        self.name = name
        self.embed_dims: tuple[int, ...] = tuple(preset.embed_dims)
        self.depths: tuple[int, ...] = tuple(preset.depths)
        self.num_heads: tuple[int, ...] = tuple(preset.num_heads)
        self.sr_ratios: tuple[int, ...] = tuple(preset.sr_ratios)
        self.strides: tuple[int, ...] = STRIDES
        self.drop_path_rate = rate

    def forward(self, image: Tensor) -> list[Tensor]:
        """``image [B,3,H,W]`` -> four maps ``[B, C_s, H_s, W_s]`` at strides 4, 8, 16, 32."""
        # patch_embed returns channels-last [B, H/4, W/4, C]; stage 0 takes that layout (it has no
        # downsample), later stages take the previous stage's [B, C, H, W] output.
        x = self.patch_embed(image)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    # ----- the block contract (blocks.BlockEncoder) -------------------------------------------
    def block_names(self) -> list[str]:
        """Every block in forward order: ``stage1.block00``, ..., ``stage4.block{d-1}``."""
        return block_names(self.depths)

    def block(self, name: str | BlockName) -> nn.Module:
        """The timm ``Block`` called ``name`` (tokens ``[B, N, C]`` -> ``[B, N, C]``); BlockNameError
        for a malformed name or one beyond this encoder's depth."""
        parsed = parse_in(name, self.depths, self.name)
        return self.stages[parsed.stage - 1].blocks[parsed.block]

    def attention(self, name: str | BlockName) -> nn.Module:
        """The block's spatial-reduction attention; its output ``[B, N, C]`` includes the output
        projection and precedes the residual add (timm: ``x + drop_path(attn(norm1(x)))``)."""
        return self.block(name).attn

    def branches(self, name: str | BlockName) -> dict[str, nn.Module]:
        """``{"attn": attention, "mlp": Mix-FFN}``, the block's two residual branches in forward order."""
        block = self.block(name)
        return {"attn": block.attn, "mlp": block.mlp}

    def branch_outputs(self, name: str | BlockName) -> list[nn.Module]:
        """The last linear layer of each residual branch (attention projection, Mix-FFN ``fc2``)."""
        block = self.block(name)
        return [block.attn.proj, block.mlp.fc2]


class IncompatibleModelsError(CldaError, ValueError):
    """A teacher and a student that cannot exchange block weights; the message names the stage and the fix."""


def check_compatible(teacher: Segmenter, student: Segmenter) -> None:
    """Raise IncompatibleModelsError naming the first stage whose blocks cannot exchange weights (Eq. 8 copies
    block to block): width, head count, spatial-reduction ratio and every block tensor shape must agree."""
    t_enc, s_enc = teacher.encoder, student.encoder
    hint = "CLDA copies weights block to block: pick a student with the teacher's stage widths and heads"
    if len(t_enc.depths) != len(s_enc.depths):
        raise IncompatibleModelsError(f"teacher has {len(t_enc.depths)} stages, student {len(s_enc.depths)}; {hint}")
    for stage in range(1, len(t_enc.depths) + 1):
        for what, attribute in (("width", "embed_dims"), ("heads", "num_heads"), ("sr_ratio", "sr_ratios")):
            t_value, s_value = getattr(t_enc, attribute)[stage - 1], getattr(s_enc, attribute)[stage - 1]
            if t_value != s_value:
                raise IncompatibleModelsError(
                    f"stage {stage}: teacher {what} {t_value}, student {what} {s_value}; {hint}"
                )
        t_shapes, s_shapes = (
            [(key, tuple(value.shape)) for key, value in enc.block(BlockName(stage, 0)).state_dict().items()]
            for enc in (t_enc, s_enc)
        )
        if t_shapes != s_shapes:
            raise IncompatibleModelsError(f"stage {stage}: teacher and student block tensors differ in shape; {hint}")


def build_encoder(name: str, pretrained: str | None = None, drop_path_rate: float | None = None) -> MiTEncoder:
    """A MiT encoder from a preset name, optionally with weights from ``pretrained``.

    ``pretrained``: a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file (timm pvt_v2 or
    SegFormer ``mit_bX.pth`` naming) or ``"timm:<hub model name>"`` (needs the network); see
    ``clda_deploy.models.pretrained.load_pretrained``. ``drop_path_rate`` overrides the preset's.
    """
    encoder = MiTEncoder(name, drop_path_rate=drop_path_rate)
    if pretrained:
        from clda_deploy.models.pretrained import load_pretrained

        load_pretrained(encoder, pretrained)
    return encoder


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device, so nothing is allocated)."""
    return sum(parameter.numel() for parameter in module.parameters())


def feature_shapes(encoder: MiTEncoder, height: int, width: int) -> list[tuple[int, int, int]]:
    """``(C, H_s, W_s)`` of each stage for an input of ``height x width`` (without running it)."""
    shapes = []
    # 7x7/4 then 3x3/2 convolutions with half-kernel padding both round up.
    height, width = -(-height // 4), -(-width // 4)
    for stage_index, channels in enumerate(encoder.embed_dims):
        if stage_index > 0:
            height, width = -(-height // 2), -(-width // 2)
        shapes.append((channels, height, width))
    return shapes
