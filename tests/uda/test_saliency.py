"""Signed and source-domain saliency (clda.saliency_rule, DESIGN §7) on a hand-built model."""

import pytest
import torch

from clda_deploy.models.segmenter import build_segmenter
from clda_deploy.uda.saliency import is_salient, teacher_saliency

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
