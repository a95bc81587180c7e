"""EMA: alpha schedule, golden updates, name/shape pairing, prefixes, buffers, S->T block pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clda_deploy.models.blocks import BlockNameError
from clda_deploy.models.segmenter import build_segmenter
from clda_deploy.uda.ema import copy_model, ema_alpha, ema_update, ema_update_pairs


class TwoParams(nn.Module):
    def __init__(self, a: list[float], b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))
        self.b = nn.Parameter(torch.tensor(b))  # a 0-d parameter, as DAFormer special-cases


def test_alpha_schedule() -> None:
    assert ema_alpha(0) == 0.0
    assert ema_alpha(1) == 0.5
    assert ema_alpha(3) == 0.75
    assert ema_alpha(999) == pytest.approx(0.999)
    assert ema_alpha(10**6) == 0.999
    assert ema_alpha(10**6, max_alpha=0.99) == 0.99
    with pytest.raises(ValueError, match="iteration"):
        ema_alpha(-1)


def test_golden_two_step_update() -> None:
    teacher, student = TwoParams([1.0, 2.0], 4.0), TwoParams([3.0, 6.0], 0.0)
    ema_update(teacher, student, 0.5)
    assert teacher.a.tolist() == [2.0, 4.0]
    assert teacher.b.item() == 2.0
    with torch.no_grad():
        student.a.copy_(torch.tensor([0.0, 0.0]))
        student.b.fill_(10.0)
    ema_update(teacher, student, 0.75)
    assert teacher.a.tolist() == [1.5, 3.0]  # 0.75 * [2, 4] + 0.25 * [0, 0]
    assert teacher.b.item() == 4.0  # 0.75 * 2 + 0.25 * 10
    assert student.a.tolist() == [0.0, 0.0]  # the source never changes


def test_alpha_zero_copies_and_one_keeps() -> None:
    teacher, student = TwoParams([1.0, 2.0], 4.0), TwoParams([3.0, 6.0], 0.0)
    ema_update(teacher, student, 1.0)
    assert teacher.a.tolist() == [1.0, 2.0]
    ema_update(teacher, student, ema_alpha(0))
    assert teacher.a.tolist() == [3.0, 6.0] and teacher.b.item() == 0.0
    with pytest.raises(ValueError, match="alpha"):
        ema_update(teacher, student, 1.5)


def test_update_keeps_autograd_out() -> None:
    teacher, student = TwoParams([1.0, 2.0], 4.0), TwoParams([3.0, 6.0], 0.0)
    ema_update(teacher, student, 0.5)  # in-place on leaf parameters: only legal under no_grad
    assert teacher.a.grad_fn is None and teacher.a.is_leaf


def test_missing_name_raises_naming_the_tensor() -> None:
    teacher, student = TwoParams([1.0, 2.0], 4.0), TwoParams([3.0, 6.0], 0.0)
    teacher.extra = nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="'extra'.*target but not in the source"):
        ema_update(teacher, student, 0.5)
    with pytest.raises(ValueError, match="'extra'.*source but not in the target"):
        ema_update(student, teacher, 0.5)


def test_shape_mismatch_raises_naming_the_tensor() -> None:
    teacher, student = TwoParams([1.0, 2.0], 4.0), TwoParams([3.0, 6.0, 9.0], 0.0)
    with pytest.raises(ValueError, match=r"'a' has shape \(2,\) in the target but \(3,\)"):
        ema_update(teacher, student, 0.5)
    assert teacher.b.item() == 4.0  # validated before anything changed


def test_pairing_is_by_name_not_order() -> None:
    teacher = nn.Module()
    teacher.x = nn.Parameter(torch.tensor([0.0]))
    teacher.y = nn.Parameter(torch.tensor([0.0]))
    student = nn.Module()
    student.y = nn.Parameter(torch.tensor([8.0]))  # registered in the other order
    student.x = nn.Parameter(torch.tensor([4.0]))
    ema_update(teacher, student, 0.5)
    assert teacher.x.item() == 2.0 and teacher.y.item() == 4.0


def _blocks() -> nn.ModuleDict:
    return nn.ModuleDict({"block1": nn.Linear(2, 2), "block10": nn.Linear(2, 2)})


def test_names_restrict_the_update_on_dot_boundaries() -> None:
    torch.manual_seed(0)
    teacher, student = _blocks(), _blocks()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.0, names=["block1"])
    torch.testing.assert_close(teacher.block1.weight, student.block1.weight)
    assert torch.equal(teacher.block10.weight, before["block10.weight"])  # "block1" is not "block10"
    ema_update(teacher, student, 0.0, names="block10.bias")
    assert torch.equal(teacher.block10.bias, student.block10.bias)
    assert torch.equal(teacher.block10.weight, before["block10.weight"])
    with pytest.raises(ValueError, match="'block2'"):
        ema_update(teacher, student, 0.5, names=["block2"])


def _batchnorm(mean: float) -> nn.BatchNorm1d:
    norm = nn.BatchNorm1d(2)
    norm.running_mean.fill_(mean)
    norm.num_batches_tracked.fill_(int(mean))
    return norm


@pytest.mark.parametrize("mode, expected_mean, expected_count", [("copy", 4.0, 4), ("ema", 2.0, 4), ("keep", 0.0, 0)])
def test_buffers(mode: str, expected_mean: float, expected_count: int) -> None:
    teacher, student = _batchnorm(0.0), _batchnorm(4.0)
    ema_update(teacher, student, 0.5, buffers=mode)
    assert teacher.running_mean.tolist() == [expected_mean] * 2
    assert teacher.num_batches_tracked.item() == expected_count
    assert teacher.num_batches_tracked.dtype == torch.long


def test_copy_model_is_frozen_and_independent() -> None:
    model = TwoParams([1.0, 2.0], 4.0)
    copy = copy_model(model)
    assert all(not p.requires_grad for p in copy.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert copy.a.data_ptr() != model.a.data_ptr()
    assert torch.equal(copy.a, model.a)


@pytest.fixture(scope="module")
def pair_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = build_segmenter("mit_cpu_teacher", num_classes=5, head_channels=16)
    student = build_segmenter("mit_cpu_student", num_classes=5, head_channels=16)
    return teacher, student


def test_pair_update_changes_only_the_target_block(pair_models) -> None:
    teacher, student = pair_models
    teacher = copy_model(teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_pairs(teacher, student, {"stage3.block04": "stage3.block01"}, alpha=0.75)
    prefix, source_prefix = teacher.block_state_prefix("stage3.block04"), student.block_state_prefix("stage3.block01")
    student_state = student.state_dict()
    changed = 0
    for name, value in teacher.state_dict().items():
        if name.startswith(prefix + "."):
            source = student_state[source_prefix + name[len(prefix) :]]
            torch.testing.assert_close(value, 0.75 * before[name] + 0.25 * source)
            changed += 1
        else:
            assert torch.equal(value, before[name]), name  # bit-identical
    assert changed == len(list(teacher.block("stage3.block04").parameters()))


def test_attention_scope_changes_only_the_attention_branch(pair_models) -> None:
    teacher, student = pair_models
    updated = copy_model(teacher)
    ema_update_pairs(updated, student, {"stage1.block01": "stage1.block00"}, alpha=0.5, scope="attention")
    target = teacher.block_state_prefix("stage1.block01") + ".attn."  # the attention branch's keys
    source = student.block_state_prefix("stage1.block00") + ".attn."
    before, student_state = teacher.state_dict(), student.state_dict()
    changed = 0
    for name, value in updated.state_dict().items():
        if name.startswith(target):
            torch.testing.assert_close(value, 0.5 * before[name] + 0.5 * student_state[source + name[len(target) :]])
            changed += 1
        else:
            assert torch.equal(value, before[name]), name
    assert changed == len(updated.encoder.attention("stage1.block01").state_dict()) > 0
    with pytest.raises(ValueError, match="scope"):
        ema_update_pairs(updated, student, {"stage1.block01": "stage1.block00"}, alpha=0.5, scope="mlp")


def test_pair_mismatch_names_both_blocks_and_changes_nothing(pair_models) -> None:
    teacher, student = pair_models
    teacher = copy_model(teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    pairs = {"stage3.block00": "stage3.block00", "stage2.block00": "stage3.block01"}  # widths 64 vs 160
    with pytest.raises(ValueError, match=r"'stage2.block00' <- source 'stage3.block01'.*'norm1.weight'"):
        ema_update_pairs(teacher, student, pairs, alpha=0.5)
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    with pytest.raises(BlockNameError, match="no block 'stage3.block05' in encoder 'mit_cpu_student'"):
        ema_update_pairs(teacher, student, {"stage3.block00": "stage3.block05"}, alpha=0.5)
    with pytest.raises(BlockNameError, match="malformed block name 'encoder.stages.0.blocks.1'"):
        ema_update_pairs(teacher, student, {"encoder.stages.0.blocks.1": "stage1.block00"}, alpha=0.5)


def test_blend_fraction_golden_values_and_what_repeated_updates_reach() -> None:
    from clda_deploy.uda.ema import blend_fraction

    assert blend_fraction(0.999, 360) == pytest.approx(0.302449, abs=1e-6)  # DESIGN §7's 0.30
    assert blend_fraction(0.99, 360) == pytest.approx(0.973166, abs=1e-6)  # ... and 0.97
    assert blend_fraction(0.9, 0) == 0.0 and blend_fraction(0.0, 1) == 1.0
    target, source = nn.Linear(3, 2), nn.Linear(3, 2)
    start = target.weight.detach().clone()
    for _ in range(25):
        ema_update(target, source, 0.9)
    share = blend_fraction(0.9, 25)
    torch.testing.assert_close(target.weight, (1 - share) * start + share * source.weight, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        blend_fraction(0.9, -1)
