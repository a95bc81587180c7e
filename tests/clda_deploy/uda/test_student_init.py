"""The teacher-initialised student (clda.student_init: teacher)."""

import pytest
import torch

from clda_deploy.models.segmenter import build_segmenter
from clda_deploy.uda.student_init import (
    evenly_spaced,
    initialise_from_teacher,
    most_salient,
    student_block_sources,
)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    teacher = build_segmenter("mit_cpu_teacher", head_channels=32)  # depths 2-2-6-2
    student = build_segmenter("mit_cpu_student", head_channels=32)  # depths 1-1-2-1
    return teacher, student


def test_evenly_spaced_ends_with_each_stages_last_block():
    assert evenly_spaced(6, 2) == [2, 5]
    assert evenly_spaced(2, 1) == [1]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3]
    assert evenly_spaced(12, 6) == [1, 3, 5, 7, 9, 11]  # every other block, as DistilBERT
    assert evenly_spaced(40, 18)[-1] == 39 and len(set(evenly_spaced(40, 18))) == 18  # MiT-B5 -> B3 stage 3
    with pytest.raises(ValueError, match="3 student blocks"):
        evenly_spaced(2, 3)


def test_student_equals_its_source_teacher_blocks_bit_for_bit_at_step_0(pair):
    teacher, student = pair
    sources = student_block_sources(teacher, student)
    assert sources == {"stage1.block00": "stage1.block01", "stage2.block00": "stage2.block01",
                       "stage3.block00": "stage3.block02", "stage3.block01": "stage3.block05",
                       "stage4.block00": "stage4.block01"}  # fmt: skip
    initialise_from_teacher(student, teacher, sources)
    teacher_state = teacher.state_dict()
    for name, source in sources.items():
        for key, tensor in student.block(name).state_dict().items():
            assert torch.equal(tensor, teacher.block(source).state_dict()[key]), f"{name}.{key}"
    block_prefixes = tuple(student.block_state_prefix(n) + "." for n in student.block_names())
    others = [key for key in student.state_dict() if not key.startswith(block_prefixes)]
    assert any(k.startswith("head.") for k in others) and any("patch_embed" in k for k in others)
    for key in others:  # patch embeddings, stage norms, head (BatchNorm statistics included)
        assert torch.equal(student.state_dict()[key], teacher_state[key]), key
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), teacher.skip_blocks([n for n in teacher.block_names() if n not in sources.values()]):
        expected = teacher.eval()(images)
    torch.testing.assert_close(student.eval()(images), expected, rtol=0, atol=0)


def test_salient_mode_takes_the_blocks_whose_removal_costs_most():
    rows = [
        {"block": f"stage3.block{i:02d}", "delta": delta} for i, delta in enumerate([0.1, 2.0, -0.5, 3.0, 0.0, 1.0])
    ]
    assert most_salient(rows, 3, 2) == [1, 3]
    with pytest.raises(ValueError, match="stage 2"):
        most_salient(rows, 2, 1)


def test_a_head_of_other_width_is_refused_naming_the_tensor(pair):
    teacher, _ = pair
    wide = build_segmenter("mit_cpu_student", head_channels=64)
    with pytest.raises(ValueError, match="head"):
        initialise_from_teacher(wide, teacher, student_block_sources(teacher, wide))
