"""CLDA's layer mapping: similarities (Eq. 6), their accumulation and argmax (Eq. 7), the random
ablation and the mapping.json rows."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clda_deploy.models.blocks import BlockName
from clda_deploy.models.segmenter import build_segmenter
from clda_deploy.uda.similarity import (
    SimilarityAccumulator,
    channel_similarity,
    flattened_similarity,
    mapping_entries,
    random_mapping,
    same_stage_candidates,
    token_similarity,
)

NUM_CLASSES = 4
TEACHER = [[[1.0, 2.0], [3.0, 4.0]]]  # [B=1, N=2, C=2]
STUDENT = [[[2.0, 1.0], [0.0, 3.0]]]


# ----- same-stage candidates ---------------------------------------------------------------------
def test_candidates_in_forward_order() -> None:
    students = ["stage4.block00", "stage3.block10", "stage3.block02", "stage2.block00"]
    assert same_stage_candidates("stage3.block07", students) == ["stage3.block02", "stage3.block10"]
    assert same_stage_candidates("stage1.block00", students) == []


# ----- Eq. 6: similarities ------------------------------------------------------------------------
def test_channel_similarity_golden() -> None:
    # channel 0: (1, 3) . (2, 0) = 2, norms sqrt(10) * 2; channel 1: (2, 4) . (1, 3) = 14, sqrt(20) * sqrt(10)
    expected = 2 / (math.sqrt(10) * 2) + 14 / math.sqrt(200)
    value = channel_similarity(torch.tensor(TEACHER), torch.tensor(STUDENT))
    assert value.shape == () and value.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.30617726, abs=1e-8)


def test_token_and_flattened_golden() -> None:
    teacher, student = torch.tensor(TEACHER), torch.tensor(STUDENT)
    # token 0: (1, 2) . (2, 1) = 4 / 5; token 1: (3, 4) . (0, 3) = 12 / 15; summed, batch of one
    assert token_similarity(teacher, student).item() == pytest.approx(1.6, abs=1e-6)
    # (1, 2, 3, 4) . (2, 1, 0, 3) = 16 / (sqrt(30) sqrt(14))
    assert flattened_similarity(teacher, student).item() == pytest.approx(16 / math.sqrt(420), abs=1e-6)


def test_zero_channels_are_safe_and_shapes_checked() -> None:
    teacher = torch.tensor([[[0.0, 1.0], [0.0, 2.0]]])
    value = channel_similarity(teacher, torch.tensor(STUDENT))
    assert value.item() == pytest.approx(7 / (math.sqrt(5) * math.sqrt(10)), abs=1e-6)  # channel 0 counts 0
    assert channel_similarity(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == 0.0
    with pytest.raises(ValueError, match=r"\(2, 4, 8\).*\(2, 4, 16\)"):
        channel_similarity(torch.randn(2, 4, 8), torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="B,N,C"):
        token_similarity(torch.randn(4, 8), torch.randn(4, 8))


def test_channel_scaling_reaches_the_maximum() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 4)
    scaled = teacher * torch.tensor([0.5, 2.0, 3.0, 10.0])
    assert channel_similarity(teacher, scaled).item() == pytest.approx(4.0, abs=1e-5)  # = C
    assert channel_similarity(teacher, -scaled).item() == pytest.approx(-4.0, abs=1e-5)
    assert channel_similarity(teacher, torch.randn(2, 8, 4)).item() < 3.0


# ----- Eq. 7: accumulation ----------------------------------------------------------------------
STUDENT_BLOCKS = ["stage3.block00", "stage3.block01", "stage3.block02", "stage4.block00"]


def _attention_batches(steps: int) -> list[tuple[dict, dict]]:
    """Teacher block stage3.block05 [2,8,4]; student block01 is a channel-wise positive scaling of it
    (the known best), block00 random, block02 a token-wise scaling."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        teacher = torch.randn(2, 8, 4, generator=generator)
        channel_scaled = teacher * torch.tensor([1.0, 100.0, 0.01, 5.0])
        token_scaled = teacher * torch.exp(3 * torch.randn(2, 8, 1, generator=generator))
        student = {
            "stage3.block00": torch.randn(2, 8, 4, generator=generator),
            "stage3.block01": channel_scaled,
            "stage3.block02": token_scaled,
        }
        batches.append(({"stage3.block05": teacher}, student))
    return batches


def test_accumulator_picks_the_known_best_block() -> None:
    accumulator = SimilarityAccumulator(["stage3.block05"], STUDENT_BLOCKS, mode="channel")
    assert accumulator.scores == {
        "stage3.block05": {"stage3.block00": 0.0, "stage3.block01": 0.0, "stage3.block02": 0.0}
    }
    assert accumulator.student_blocks() == ["stage3.block00", "stage3.block01", "stage3.block02"]
    for teacher, student in _attention_batches(5):
        accumulator.update(teacher, student)
    best, score = accumulator.best()["stage3.block05"]
    assert best == "stage3.block01" and score == pytest.approx(5 * 4.0, abs=1e-4)  # 5 updates x C
    assert accumulator.updates == 5
    assert accumulator.mean_scores()["stage3.block05"]["stage3.block01"] == pytest.approx(1.0, abs=1e-6)


def test_token_and_channel_modes_choose_differently() -> None:
    choices = {}
    for mode in ("channel", "token", "both"):
        accumulator = SimilarityAccumulator(["stage3.block05"], STUDENT_BLOCKS, mode=mode)
        for teacher, student in _attention_batches(3):
            accumulator.update(teacher, student)
        choices[mode] = accumulator.best()["stage3.block05"][0]
        assert all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in accumulator.mean_scores()["stage3.block05"].values())
    assert choices["channel"] == "stage3.block01"
    assert choices["token"] == "stage3.block02"  # each token vector is only rescaled: cosine 1 per token


def test_ties_go_to_the_first_block_and_errors() -> None:
    accumulator = SimilarityAccumulator(["stage3.block05"], STUDENT_BLOCKS)
    with pytest.raises(RuntimeError, match="update"):
        accumulator.best()
    teacher = torch.randn(1, 4, 2)
    accumulator.update({"stage3.block05": teacher}, {name: teacher.clone() for name in STUDENT_BLOCKS[:3]})
    assert accumulator.best()["stage3.block05"][0] == "stage3.block00"
    with pytest.raises(KeyError, match="student stage3.block02"):
        accumulator.update({"stage3.block05": teacher}, {"stage3.block00": teacher, "stage3.block01": teacher})
    with pytest.raises(ValueError, match="no student block in stage 2"):
        SimilarityAccumulator(["stage2.block01"], STUDENT_BLOCKS)
    with pytest.raises(ValueError, match="channel, token, both"):
        SimilarityAccumulator(["stage3.block05"], STUDENT_BLOCKS, mode="random")


def test_no_picked_block_is_an_empty_mapping() -> None:
    accumulator = SimilarityAccumulator([], STUDENT_BLOCKS)
    assert accumulator.best() == {} and accumulator.student_blocks() == []
    accumulator.update({}, {})
    assert accumulator.best() == {} and accumulator.updates == 1
    assert random_mapping([], STUDENT_BLOCKS) == {} and mapping_entries({}) == []


def test_accumulator_state_round_trip() -> None:
    batches = _attention_batches(4)
    original = SimilarityAccumulator(["stage3.block05", "stage4.block01"], STUDENT_BLOCKS)
    extra_teacher = torch.randn(2, 3, 5)
    for teacher, student in batches[:2]:
        original.update({**teacher, "stage4.block01": extra_teacher}, {**student, "stage4.block00": extra_teacher})
    state = json.loads(json.dumps(original.state_dict()))  # plain Python: JSON-safe
    resumed = SimilarityAccumulator(["stage4.block01", "stage3.block05"], STUDENT_BLOCKS)
    resumed.load_state_dict(state)
    assert resumed.scores == original.scores and resumed.updates == 2 and resumed.best() == original.best()
    for teacher, student in batches[2:]:
        for accumulator in (original, resumed):
            accumulator.update(
                {**teacher, "stage4.block01": extra_teacher}, {**student, "stage4.block00": extra_teacher}
            )
    assert resumed.state_dict() == original.state_dict()
    with pytest.raises(ValueError, match="mode"):
        SimilarityAccumulator(["stage3.block05", "stage4.block01"], STUDENT_BLOCKS, mode="token").load_state_dict(state)
    with pytest.raises(ValueError, match="maps"):
        SimilarityAccumulator(["stage3.block05"], STUDENT_BLOCKS).load_state_dict(state)


def test_random_mapping_and_entries() -> None:
    teachers = ["stage4.block01", "stage3.block05", "stage3.block01"]
    mapping = random_mapping(teachers, STUDENT_BLOCKS, seed=3)
    assert mapping == random_mapping(teachers, STUDENT_BLOCKS, seed=3)
    assert list(mapping) == ["stage3.block01", "stage3.block05", "stage4.block01"]
    assert all(BlockName.parse(t).stage == BlockName.parse(s).stage for t, s in mapping.items())
    assert mapping["stage4.block01"] == "stage4.block00"
    rows = mapping_entries({"stage3.block05": ("stage3.block01", 2.5), "stage4.block01": "stage4.block00"})
    assert rows == [
        {"teacher_block": "stage3.block05", "student_block": "stage3.block01", "similarity": 2.5},
        {"teacher_block": "stage4.block01", "student_block": "stage4.block00", "similarity": None},
    ]


def test_real_attention_maps_map_a_block_to_itself() -> None:
    torch.manual_seed(0)
    model = build_segmenter("mit_cpu_teacher", num_classes=NUM_CLASSES, head_channels=16).eval()
    names = model.block_names()
    accumulator = SimilarityAccumulator(["stage3.block04"], names)
    with torch.no_grad(), model.capture_attention(accumulator.student_blocks(), detach=True) as captured:
        model(torch.randn(2, 3, 64, 64))
        accumulator.update(captured, captured)
    assert len(accumulator.scores["stage3.block04"]) == 6  # every stage-3 block of the same model
    block, score = accumulator.best()["stage3.block04"]
    assert block == "stage3.block04" and score == pytest.approx(160.0, abs=1e-3)  # C = 160 in stage 3
