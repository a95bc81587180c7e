"""Encoder presets (torch-free, so configs can be validated without importing torch).

MiT-B0..B5 follow SegFormer's published hyperparameters (Xie et al. 2021, Tab. 6): note that
MiT uses an MLP ratio of 4 in every stage, unlike timm's pvt_v2_b* (8, 8, 4, 4).
The CPU presets keep B0's stage widths so that a deep teacher and a shallow student can exchange
blocks (CLDA's S->T update copies weights block to block, DESIGN §5).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderPreset:
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratios: tuple[float, float, float, float] = (4.0, 4.0, 4.0, 4.0)
    drop_path_rate: float = 0.1


_B0_WIDTHS = (32, 64, 160, 256)
_WIDE = (64, 128, 320, 512)

ENCODER_PRESETS: dict[str, EncoderPreset] = {
    "mit_b0": EncoderPreset(_B0_WIDTHS, (2, 2, 2, 2)),
    "mit_b1": EncoderPreset(_WIDE, (2, 2, 2, 2)),
    "mit_b2": EncoderPreset(_WIDE, (3, 4, 6, 3)),
    "mit_b3": EncoderPreset(_WIDE, (3, 4, 18, 3)),
    "mit_b4": EncoderPreset(_WIDE, (3, 8, 27, 3)),
    "mit_b5": EncoderPreset(_WIDE, (3, 6, 40, 3)),
    # CPU presets for the embedded SynthCity default: same widths, teacher deeper than student.
    "mit_cpu_teacher": EncoderPreset(_B0_WIDTHS, (2, 2, 6, 2)),
    "mit_cpu_student": EncoderPreset(_B0_WIDTHS, (1, 1, 2, 1)),
}

HEAD_NAMES: tuple[str, ...] = ("daformer", "segformer")
