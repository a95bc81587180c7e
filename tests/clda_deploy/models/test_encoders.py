"""MiT encoders on timm's pvt_v2: parameter counts, feature strides, presets."""

from __future__ import annotations

import pytest
import torch
from timm.models.pvt_v2 import PyramidVisionTransformerV2

from clda_deploy.models.blocks import BlockName, BlockNameError
from clda_deploy.models.encoders import MiTEncoder, build_encoder, check_compatible, count_parameters, feature_shapes
from clda_deploy.models.presets import ENCODER_PRESETS
from clda_deploy.models.segmenter import build_segmenter

# SegFormer (Xie et al. 2021), encoder parameters in millions.
MIT_PARAMETERS_MILLIONS = {
    "mit_b0": 3.3,
    "mit_b1": 13.2,
    "mit_b2": 24.2,
    "mit_b3": 44.0,
    "mit_b4": 60.8,
    "mit_b5": 81.4,
}


@pytest.mark.parametrize("name", sorted(MIT_PARAMETERS_MILLIONS))
def test_parameter_count_matches_mit(name: str) -> None:
    # The meta device builds the module without allocating or initialising real memory.
    with torch.device("meta"):
        encoder = build_encoder(name)
    millions = count_parameters(encoder) / 1e6
    assert millions == pytest.approx(MIT_PARAMETERS_MILLIONS[name], rel=0.03)


def test_parameter_count_b0_exact() -> None:
    # Pinned so an accidental architecture change (e.g. timm's MLP ratios 8,8,4,4) is caught.
    with torch.device("meta"):
        assert count_parameters(build_encoder("mit_b0")) == 3_319_392


@pytest.mark.parametrize("height, width", [(64, 64), (100, 150), (96, 160)])
def test_features_at_strides_4_8_16_32(height: int, width: int) -> None:
    torch.manual_seed(0)
    encoder = build_encoder("mit_cpu_student").eval()
    with torch.no_grad():
        features = encoder(torch.randn(2, 3, height, width))
    assert len(features) == 4
    for feature, (channels, feature_height, feature_width), stride in zip(
        features, feature_shapes(encoder, height, width), encoder.strides, strict=True
    ):
        assert feature.shape == (2, channels, feature_height, feature_width)
        assert feature_height == -(-height // stride) and feature_width == -(-width // stride)
    assert [feature.shape[1] for feature in features] == list(encoder.embed_dims)


def test_attributes_follow_the_preset() -> None:
    encoder = build_encoder("mit_cpu_teacher")
    preset = ENCODER_PRESETS["mit_cpu_teacher"]
    assert encoder.embed_dims == preset.embed_dims
    assert encoder.depths == preset.depths
    assert [len(stage.blocks) for stage in encoder.stages] == list(preset.depths)
    assert encoder.strides == (4, 8, 16, 32)


def test_mlp_ratio_is_four_in_every_stage() -> None:
    encoder = build_encoder("mit_b0")
    for stage, width in zip(encoder.stages, encoder.embed_dims, strict=True):
        for block in stage.blocks:
            assert block.mlp.fc1.out_features == 4 * width


def test_drop_path_linear_from_zero_to_the_rate() -> None:
    encoder = build_encoder("mit_cpu_student", drop_path_rate=0.2)
    blocks = [block for stage in encoder.stages for block in stage.blocks]
    assert isinstance(blocks[0].drop_path1, torch.nn.Identity)  # rate 0 for the first block
    assert blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    no_drop = build_encoder("mit_cpu_student", drop_path_rate=0.0)
    assert all(isinstance(block.drop_path1, torch.nn.Identity) for stage in no_drop.stages for block in stage.blocks)
    assert build_encoder("mit_cpu_student").drop_path_rate == ENCODER_PRESETS["mit_cpu_student"].drop_path_rate


def test_state_dict_keys_are_timms() -> None:
    preset = ENCODER_PRESETS["mit_b0"]
    reference = PyramidVisionTransformerV2(
        num_classes=0,
        depths=preset.depths,
        embed_dims=preset.embed_dims,
        num_heads=preset.num_heads,
        sr_ratios=preset.sr_ratios,
        mlp_ratios=preset.mlp_ratios,
    )
    own = build_encoder("mit_b0").state_dict()
    assert list(own) == list(reference.state_dict())
    assert all(own[key].shape == value.shape for key, value in reference.state_dict().items())


def test_unknown_encoder_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="mit_b5") as error:
        build_encoder("mit_b9")
    assert "mit_cpu_student" in str(error.value)
    with pytest.raises(ValueError):
        MiTEncoder("resnet50")


def test_eval_forward_is_deterministic() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("mit_cpu_student").eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        first, second = encoder(image), encoder(image)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# ----- the block contract (blocks.BlockEncoder) ----------------------------------------------------
def test_blocks_by_name_are_timms_stage_blocks() -> None:
    encoder = MiTEncoder("mit_cpu_teacher")
    assert encoder.block_names()[:3] == ["stage1.block00", "stage1.block01", "stage2.block00"]
    assert len(encoder.block_names()) == sum(encoder.depths) == 12
    assert encoder.block("stage3.block05") is encoder.stages[2].blocks[5]
    assert encoder.block(BlockName(1, 0)) is encoder.stages[0].blocks[0]
    block = encoder.stages[3].blocks[1]
    assert encoder.attention("stage4.block01") is block.attn
    assert encoder.branches("stage4.block01") == {"attn": block.attn, "mlp": block.mlp}
    assert encoder.branch_outputs("stage4.block01") == [block.attn.proj, block.mlp.fc2]
    assert encoder.embed_dims == (32, 64, 160, 256)  # the stage widths


@pytest.mark.parametrize("method", ["block", "attention", "branches", "branch_outputs"])
def test_a_block_beyond_the_depth_names_the_encoder_and_its_blocks(method: str) -> None:
    encoder = MiTEncoder("mit_cpu_student")  # depths (1, 1, 2, 1)
    with pytest.raises(BlockNameError) as error:
        getattr(encoder, method)("stage3.block02")
    assert str(error.value) == (
        "no block 'stage3.block02' in encoder 'mit_cpu_student': its blocks are stage1.block00..stage1.block00, "
        "stage2.block00..stage2.block00, stage3.block00..stage3.block01, stage4.block00..stage4.block00"
    )


def test_check_compatible() -> None:
    teacher = build_segmenter("mit_cpu_teacher", head_channels=16)
    student = build_segmenter("mit_cpu_student", head_channels=16)
    check_compatible(teacher, student)  # same widths and heads, different depths: fine
    with pytest.raises(ValueError, match="stage 1: teacher width 32, student width 64"):
        check_compatible(build_segmenter("mit_b0", head_channels=16), build_segmenter("mit_b1", head_channels=16))
    student.encoder.num_heads = (1, 2, 4, 8)
    with pytest.raises(ValueError, match="stage 3: teacher heads 5, student heads 4"):
        check_compatible(teacher, student)
    student = build_segmenter("mit_cpu_student", head_channels=16)
    student.encoder.sr_ratios = (8, 4, 1, 1)
    with pytest.raises(ValueError, match="stage 3: teacher sr_ratio 2, student sr_ratio 1"):
        check_compatible(teacher, student)
