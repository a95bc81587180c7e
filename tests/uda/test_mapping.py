"""CLDA layer mapping: LSR (Eq. 2), the non-salient pick, similarities (Eq. 6), argmax (Eq. 7)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clda_deploy.metrics import ConfusionMeter, mean_iou
from clda_deploy.models.segmenter import Segmenter, build_segmenter
from clda_deploy.uda.mapping import (
    SimilarityAccumulator,
    channel_similarity,
    check_compatible,
    flattened_similarity,
    layer_saliency,
    mapping_entries,
    random_mapping,
    same_stage_candidates,
    select_nonsalient,
    split_batches,
    stage_of,
    token_similarity,
)

NUM_CLASSES = 4
TEACHER = [[[1.0, 2.0], [3.0, 4.0]]]  # [B=1, N=2, C=2]
STUDENT = [[[2.0, 1.0], [0.0, 3.0]]]


# ----- block names and compatibility ------------------------------------------------------------
def test_stage_of_and_candidates_in_forward_order() -> None:
    assert stage_of("stage3.block05") == 3 and stage_of("stage1.block00") == 1
    students = ["stage4.block00", "stage3.block10", "stage3.block02", "stage2.block00"]
    assert same_stage_candidates("stage3.block07", students) == ["stage3.block02", "stage3.block10"]
    assert same_stage_candidates("stage1.block00", students) == []
    with pytest.raises(ValueError, match="block name"):
        stage_of("encoder.stages.2.blocks.5")


def test_check_compatible() -> None:
    teacher = build_segmenter("mit_cpu_teacher", head_channels=16)
    student = build_segmenter("mit_cpu_student", head_channels=16)
    check_compatible(teacher, student)  # same widths and heads, different depths: fine
    with pytest.raises(ValueError, match="stage 1: teacher width 32, student width 64"):
        check_compatible(build_segmenter("mit_b0", head_channels=16), build_segmenter("mit_b1", head_channels=16))
    student.encoder.num_heads = (1, 2, 4, 8)
    with pytest.raises(ValueError, match="stage 3: teacher heads 5, student heads 4"):
        check_compatible(teacher, student)


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
    assert all(stage_of(t) == stage_of(s) for t, s in mapping.items())
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


# ----- Eq. 2: layer saliency ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> tuple[Segmenter, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_segmenter("mit_cpu_student", num_classes=NUM_CLASSES, head_channels=16)
    block = model.block("stage3.block01")
    with torch.no_grad():  # this block adds nothing to its residual stream: skipping it changes nothing
        for layer in (block.attn.proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
    images = torch.randn(2, 3, 32, 48)
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 48))
    labels[:, :4] = 255  # ignored rows
    return model, images, labels


def test_agreement_saliency(tiny: tuple[Segmenter, torch.Tensor, torch.Tensor]) -> None:
    model, images, _ = tiny
    model.train()
    results = layer_saliency(model, images, reference="agreement")
    assert model.training  # the flag is restored
    assert [r["block"] for r in results] == model.block_names()
    assert all(r["r_full"] == 100.0 for r in results)
    zero = next(r for r in results if r["block"] == "stage3.block01")
    assert zero["lsr"] == 0.0 and zero["delta"] == 0.0 and zero["salient"] is False and zero["r_skipped"] == 100.0
    for r in results:
        assert r["lsr"] == abs(r["delta"]) and r["delta"] == r["r_full"] - r["r_skipped"]
        assert r["salient"] == (r["lsr"] >= 0.1)
    assert all(not r["salient"] for r in layer_saliency(model, images, "agreement", threshold=1e9))


def test_labels_saliency_matches_a_manual_computation(tiny: tuple[Segmenter, torch.Tensor, torch.Tensor]) -> None:
    model, images, labels = tiny
    names = ["stage4.block00", "stage3.block01"]
    results = layer_saliency(model, images, "labels", labels=labels, names=names, progress=True)
    assert [r["block"] for r in results] == names

    def miou(skip: list[str]) -> float:
        meter = ConfusionMeter(NUM_CLASSES)
        with torch.no_grad(), model.skip_blocks(skip):
            meter.update(model.eval()(images).argmax(1), labels)
        return mean_iou(meter.matrix)

    full = miou([])
    assert results[0]["r_full"] == pytest.approx(full) and results[0]["r_skipped"] == pytest.approx(miou(names[:1]))
    assert results[0]["delta"] == pytest.approx(full - miou(names[:1]))
    assert results[1]["lsr"] == 0.0
    # the same subset as loader batches (dicts, labels as lists at native size) gives the same numbers
    batches = [{"image": images, "label": [labels[0], labels[1]]}]
    assert layer_saliency(model, batches, "labels", names=names) == results
    with pytest.raises(ValueError, match="agreement"):
        layer_saliency(model, images, "labels")
    with pytest.raises(ValueError, match="reference"):
        layer_saliency(model, images, "pseudo")
    with pytest.raises(KeyError, match="stage9.block00"):
        layer_saliency(model, images, "agreement", names=["stage9.block00"])


def test_split_batches_forms() -> None:
    image, label = torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4)
    assert split_batches(image)[0][1] is None
    assert split_batches([(image, label), image])[1][1] is None
    with pytest.raises(ValueError, match="B,3,H,W"):
        split_batches(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="no image"):
        split_batches([])
    with pytest.raises(ValueError, match="in the batches"):
        split_batches([image], labels=label)


# ----- the non-salient pick ---------------------------------------------------------------------
def _saliency(flags: list[bool]) -> list[dict]:
    names = [f"stage3.block{index:02d}" for index in range(len(flags))]
    return [{"block": n, "lsr": 0.0, "delta": 0.0, "salient": f} for n, f in zip(names, flags, strict=True)]


def test_select_nonsalient_ratio_determinism_and_order() -> None:
    saliency = _saliency([False] * 7 + [True] * 5)
    picked = select_nonsalient(saliency, ratio=0.3, seed=0)
    assert len(picked) == 2  # round(0.3 * 7) = round(2.1)
    assert picked == select_nonsalient(saliency, ratio=0.3, seed=0)
    assert picked == sorted(picked) and all(int(name[-2:]) < 7 for name in picked)
    draws = {tuple(select_nonsalient(saliency, 0.3, seed)) for seed in range(20)}
    assert len(draws) > 1  # the seed matters
    assert len(select_nonsalient(_saliency([False] * 5), ratio=0.3)) == 2  # round(1.5) = 2 (half up)
    assert len(select_nonsalient(_saliency([False] * 5), ratio=0.5)) == 3  # round(2.5) = 3 (half up)
    assert len(select_nonsalient(_saliency([False] * 45), ratio=0.7)) == 32  # 0.7 * 45 = 31.499999999999996
    assert select_nonsalient(_saliency([False, True]), ratio=0.3) == ["stage3.block00"]  # at least one
    assert select_nonsalient(_saliency([True, True]), ratio=0.3) == []
    assert select_nonsalient(_saliency([False] * 3), ratio=0.0) == []
    assert select_nonsalient(_saliency([False] * 3), ratio=1.0) == [
        "stage3.block00",
        "stage3.block01",
        "stage3.block02",
    ]
    with pytest.raises(ValueError, match="ratio"):
        select_nonsalient(saliency, ratio=1.5)


def test_select_nonsalient_sorts_across_stages() -> None:
    saliency = [
        {"block": "stage4.block00", "salient": False},
        {"block": "stage3.block10", "salient": False},
        {"block": "stage3.block02", "salient": False},
    ]
    assert select_nonsalient(saliency, ratio=1.0) == ["stage3.block02", "stage3.block10", "stage4.block00"]
