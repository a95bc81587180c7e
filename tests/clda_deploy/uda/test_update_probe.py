"""The Eq. 8 update probe: exact blends and shrinks, controls, untouched inputs, summary and plot."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from clda_deploy.models.segmenter import Segmenter, build_segmenter
from clda_deploy.uda.update_probe import (
    PROBE_KINDS,
    blend_block,
    measure_miou,
    plot_probe,
    probe,
    shrink_block,
    summarize_probe,
)

NUM_CLASSES = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_model(seed: int) -> Segmenter:
    """mit_cpu_student (depths 1, 1, 2, 1): stage 3 has two blocks, so every probe kind occurs."""
    torch.manual_seed(seed)
    return build_segmenter("mit_cpu_student", num_classes=NUM_CLASSES, head_channels=16).eval()


@pytest.fixture(scope="module")
def models() -> tuple[Segmenter, Segmenter]:
    return tiny_model(0), tiny_model(1)


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 2, 3, 32, 32, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (2, 2, 32, 32), generator=generator)
    return [(images[0], labels[0]), (images[1], labels[1])]


def block_state(model: Segmenter, name: str) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.block(name).state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----- blend_block (Eq. 8 on one block) ---------------------------------------------------------
def test_blend_weight_zero_one_and_convex_combination(models) -> None:
    teacher, student = models
    name, source = "stage3.block01", student.block("stage3.block00")
    original, target = block_state(teacher, name), block_state(student, "stage3.block00")
    for w, expected in ((0.0, original), (1.0, target)):
        work = copy.deepcopy(teacher)
        blend_block(work, name, source, w)
        assert_same_state(block_state(work, name), expected)  # bit for bit
    work = copy.deepcopy(teacher)
    blend_block(work, name, source, 0.3)
    blended = block_state(work, name)
    for key, tensor in original.items():
        assert torch.equal(blended[key], 0.7 * tensor + 0.3 * target[key]), key
    others = [other for other in teacher.block_names() if other != name]
    for other in others:  # no other block moves
        assert_same_state(block_state(work, other), block_state(teacher, other))


def test_blend_leaves_non_floating_tensors(models) -> None:
    teacher, student = models
    work, source = copy.deepcopy(teacher), copy.deepcopy(student.block("stage1.block00"))
    work.block("stage1.block00").register_buffer("counter", torch.tensor([3], dtype=torch.long))
    source.register_buffer("counter", torch.tensor([9], dtype=torch.long))
    blend_block(work, "stage1.block00", source, 1.0)
    assert work.block("stage1.block00").counter.item() == 3


def test_blend_shape_mismatch_names_the_tensor(models) -> None:
    teacher, student = models
    work = copy.deepcopy(teacher)
    before = block_state(work, "stage3.block00")
    source = copy.deepcopy(student.block("stage3.block00"))
    source.mlp.fc2.bias = nn.Parameter(torch.zeros(7))  # the last tensor: nothing before it may change
    with pytest.raises(ValueError, match=r"stage3\.block00\.mlp\.fc2\.bias: shapes differ"):
        blend_block(work, "stage3.block00", source, 0.5)
    assert_same_state(block_state(work, "stage3.block00"), before)
    with pytest.raises(ValueError, match=r"stage3\.block00\.norm1\.weight: shapes differ \(\(160,\)"):
        blend_block(work, "stage3.block00", student.block("stage2.block00"), 0.5)  # width 160 vs 64
    del source.mlp.fc2.bias
    source.mlp.fc2.bias = None
    with pytest.raises(ValueError, match=r"stage3\.block00\.mlp\.fc2\.bias: the source block has no tensor"):
        blend_block(work, "stage3.block00", source, 0.5)
    with pytest.raises(ValueError, match="w must lie in"):
        blend_block(work, "stage3.block00", student.block("stage3.block00"), 1.5)
    assert_same_state(block_state(work, "stage3.block00"), before)


# ----- shrink_block (control 1) -----------------------------------------------------------------
def test_shrink_one_is_identity_and_zero_leaves_the_block(models) -> None:
    teacher, _ = models
    name, tokens = "stage1.block00", torch.randn(2, 64, 32)  # stage 1 of a 32x32 image: 8x8 tokens, width 32
    work = copy.deepcopy(teacher)
    shrink_block(work, name, 0.0)
    assert_same_state(block_state(work, name), block_state(teacher, name))
    with torch.no_grad():
        assert not torch.equal(teacher.block(name)(tokens, [8, 8]), tokens)
        shrink_block(work, name, 1.0)
        assert torch.equal(work.block(name)(tokens, [8, 8]), tokens)


def test_shrink_scales_the_residual_branches(models) -> None:
    teacher, _ = models
    work = copy.deepcopy(teacher)
    shrink_block(work, "stage3.block00", 0.25)
    for path in ("attn.proj", "mlp.fc2"):
        layer, original = work.block("stage3.block00").get_submodule(path), teacher.block("stage3.block00")
        original = original.get_submodule(path)
        assert torch.equal(layer.weight, original.weight * 0.75) and torch.equal(layer.bias, original.bias * 0.75)
    assert torch.equal(work.block("stage3.block00").norm1.weight, teacher.block("stage3.block00").norm1.weight)


# ----- probe ------------------------------------------------------------------------------------
def test_probe_covers_every_kind_and_matches_manual_blends(models, batches) -> None:
    teacher, student = models
    state = {key: value.clone() for key, value in teacher.state_dict().items()}
    result = probe(teacher, student, batches, weights=(0.0, 0.5), blocks=["stage3.block00"], progress=False)
    assert_same_state(teacher.state_dict(), state)  # the input teacher is never modified
    assert not teacher.training
    assert result["blocks"] == ["stage3.block00"] and result["weights"] == [0.0, 0.5]
    assert [row["block"] for row in result["saliency"]] == ["stage3.block00"]
    assert result["r_full"] == pytest.approx(measure_miou(teacher, batches, NUM_CLASSES))
    found = {(entry["kind"], entry["source"], entry["w"]) for entry in result["entries"]}
    expected = {(kind, source, w) for w in (0.0, 0.5) for kind, source in
                [("student", "stage3.block00"), ("student", "stage3.block01"), ("shrink", None),
                 ("teacher_block", "stage3.block01")]}  # fmt: skip
    assert found == expected and len(result["entries"]) == len(expected)
    for entry in result["entries"]:
        assert entry["teacher_block"] == "stage3.block00"
        assert entry["delta"] == pytest.approx(entry["miou"] - result["r_full"])
        if entry["w"] == 0.0:
            assert entry["delta"] == 0.0  # w = 0 changes nothing
    student_entry = next(e for e in result["entries"] if e["source"] == "stage3.block01" and e["kind"] == "student")
    work = copy.deepcopy(teacher)
    blend_block(work, "stage3.block00", student.block("stage3.block01"), student_entry["w"])
    assert student_entry["miou"] == pytest.approx(measure_miou(work, batches, NUM_CLASSES))


def test_probe_picks_non_salient_blocks_and_summarizes(models, batches, tmp_path) -> None:
    teacher, student = models
    teacher.train()  # the training flag comes back as it was
    state = {key: value.clone() for key, value in teacher.state_dict().items()}
    result = probe(teacher, student, batches, weights=(1.0,), threshold=math.inf, progress=False)
    assert teacher.training
    teacher.eval()
    assert_same_state(teacher.state_dict(), state)
    assert result["blocks"] == teacher.block_names()  # lsr < inf: every block is non-salient
    assert all(not row["salient"] for row in result["saliency"])
    kinds = result["summary"]["kinds"]
    assert set(kinds) == set(PROBE_KINDS)
    assert sum(stats["count"] for row in kinds.values() for stats in row.values()) == len(result["entries"])
    assert kinds["shrink"]["1"]["count"] == 5 and kinds["teacher_block"]["1"]["count"] == 2
    assert kinds["student"]["1"]["count"] == 1 + 1 + 2 * 2 + 1
    for kind, row in kinds.items():
        deltas = [entry["delta"] for entry in result["entries"] if entry["kind"] == kind]
        assert row["1"]["best_delta"] == max(deltas)
        assert row["1"]["improved"] == sum(delta > 0 for delta in deltas)
    verdict = result["summary"]["verdict"]
    assert "\n" not in verdict and f"in {kinds['student']['1']['improved']} of 7 cases" in verdict
    assert plot_probe(result, tmp_path / "probe.png").read_bytes()[:8] == PNG_SIGNATURE


def test_summary_and_verdict_from_hand_built_entries(tmp_path) -> None:
    entries = [
        {"teacher_block": "stage3.block00", "kind": "student", "source": "stage3.block00", "w": 0.3, "delta": 0.41},
        {"teacher_block": "stage3.block00", "kind": "student", "source": "stage3.block01", "w": 0.3, "delta": -0.2},
        {"teacher_block": "stage3.block00", "kind": "shrink", "source": None, "w": 0.3, "delta": -0.1},
    ]
    for entry in entries:
        entry["miou"] = 50.0 + entry["delta"]
    summary = summarize_probe(entries, [0.3], 50.0)
    assert summary["kinds"]["student"]["0.3"] == {
        "count": 2,
        "improved": 1,
        "best_delta": 0.41,
        "mean_delta": pytest.approx(0.105),
    }
    assert summary["kinds"]["teacher_block"]["0.3"]["best_delta"] is None
    assert summary["verdict"] == (
        "Teacher mIoU 50.00. At w=0.3, blending toward the student raises the teacher in 1 of 2 cases (best +0.41); "
        "the shrink control in 0 of 1 (best -0.10); another same-stage teacher block in 0 of 0; "
        "the best student blend beats the best control."
    )
    empty = {"r_full": 10.0, "weights": [0.3], "blocks": [], "saliency": [], "entries": []}
    assert "no non-salient teacher block" in summarize_probe([], [0.3], 10.0)["verdict"]
    assert plot_probe(empty, tmp_path / "empty.png").read_bytes()[:8] == PNG_SIGNATURE
