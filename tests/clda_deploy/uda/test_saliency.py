"""Layer Saliency Rate (Eq. 2), the non-salient pick, and signed and source-domain saliency
(clda.saliency_rule, DESIGN §7) on hand-built models."""

import pytest
import torch

from clda_deploy.metrics import ConfusionMeter, mean_iou
from clda_deploy.models.blocks import BlockNameError
from clda_deploy.models.segmenter import Segmenter, build_segmenter
from clda_deploy.uda.saliency import is_salient, layer_saliency, select_nonsalient, split_batches, teacher_saliency

NUM_CLASSES = 4

HARMFUL = "stage3.block01"


@pytest.fixture(scope="module")
def model_and_batches():
    """A random segmenter whose labels are its own predictions *with HARMFUL skipped*: on these
    "target" labels the block can only hurt (skipping it gives R = 100), while on "source" labels made
    by the full model every block can only help."""
    torch.manual_seed(0)
    model = build_segmenter("mit_cpu_student", head_channels=32).eval()
    with torch.no_grad():
        model.block(HARMFUL).mlp.fc2.weight.mul_(40.0)  # make the block matter
        images = torch.randn(4, 3, 64, 64)
        with model.skip_blocks([HARMFUL]):
            target_labels = model(images).argmax(dim=1)
        source_labels = model(images).argmax(dim=1)
    return model, [{"image": images, "label": target_labels}], [{"image": images, "label": source_labels}]


def test_is_salient_rules():
    assert is_salient(-0.5, 0.1, "abs") and not is_salient(-0.5, 0.1, "signed")
    assert is_salient(0.2, 0.1, "signed") and not is_salient(0.05, 0.1, "abs")
    with pytest.raises(ValueError, match="rule"):
        is_salient(0.0, 0.1, "absolute")


def test_a_block_that_hurts_is_salient_by_eq2_and_non_salient_by_the_signed_rule(model_and_batches):
    model, target, source = model_and_batches
    by_abs = {r["block"]: r for r in teacher_saliency(model, target, source, threshold=0.1, rule="abs")}
    by_signed = {r["block"]: r for r in teacher_saliency(model, target, source, threshold=0.1, rule="signed")}
    harmful = by_abs[HARMFUL]
    assert harmful["delta"] < -0.1 and harmful["r_skipped"] == pytest.approx(100.0)
    assert harmful["salient"] and not by_signed[HARMFUL]["salient"]
    assert harmful["delta_source"] > 0.1, "on the source the same block helps"
    assert all(r["delta_source"] >= 0 for r in by_abs.values()), "full-model labels: no block can hurt"
    assert set(by_abs) == set(model.block_names()) and by_signed[HARMFUL]["rule"] == "signed"
    for name, row in by_abs.items():  # signed and abs agree wherever skipping does not help
        if row["delta"] >= 0:
            assert row["salient"] == by_signed[name]["salient"], name


def test_without_source_batches_the_source_columns_are_empty(model_and_batches):
    model, target, _ = model_and_batches
    rows = teacher_saliency(model, target, None, names=[HARMFUL])
    assert rows[0]["delta_source"] is None and rows[0]["lsr_source"] is None


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
    with pytest.raises(BlockNameError, match="no block 'stage4.block01' in encoder 'mit_cpu_student'"):
        layer_saliency(model, images, "agreement", names=["stage4.block01"])


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
