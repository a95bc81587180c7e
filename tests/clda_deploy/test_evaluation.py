"""``evaluate_predictors``: the one scoring loop of training eval, the export parity gate and the
accuracy benchmark, on a hand-made 2-class dataset whose answers are known."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clda_deploy.config import EvalConfig
from clda_deploy.evaluation import evaluate, evaluate_predictors, reported_classes
from clda_deploy.runtime import as_logits_fn


class TwoImages(torch.utils.data.Dataset):
    """Two 4x4 images: the label is class 1 in the left half, class 0 in the right half."""

    class_names = ("left", "right")

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        label = torch.zeros(4, 4, dtype=torch.long)
        label[:, :2] = 1
        return {"image": torch.zeros(3, 4, 4), "label": label, "name": f"image{index}.png"}


def constant(left: float, flip_columns: int = 0):
    """Logits that say class 1 in the left half (``flip_columns`` of the right half too)."""

    def predict(images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(images.shape[0], 2, 4, 4)
        logits[:, 1, :, : 2 + flip_columns] = left
        return logits

    return predict


def test_every_predictor_is_tallied_and_compared_with_the_reference():
    predictors = {"good": constant(1.0), "reference": constant(1.0), "worse": constant(3.0, flip_columns=1)}
    tallies = evaluate_predictors(predictors, TwoImages(), 2, EvalConfig(), progress=False, reference="reference")
    assert list(tallies) == ["reference", "good", "worse"], "the reference scores first"
    assert tallies["reference"].meter.matrix.tolist() == [[16, 0], [0, 16]]
    assert tallies["good"].agreement == 100.0 and tallies["good"].max_logit_diff == 0.0
    assert tallies["worse"].meter.matrix.tolist() == [[8, 8], [0, 16]]
    assert tallies["worse"].agreement == pytest.approx(75.0) and tallies["worse"].max_logit_diff == 3.0
    assert all(tally.images == 2 for tally in tallies.values())


def test_max_images_and_the_prediction_hook():
    seen = []
    tallies = evaluate_predictors(
        {"model": constant(1.0)}, TwoImages(), 2, EvalConfig(max_images=1), progress=False,
        on_prediction=lambda name, labels, image: seen.append((name, labels.tolist()[0], image)),
    )  # fmt: skip
    assert tallies["model"].images == 1 and tallies["model"].pixels == 0, "no reference: nothing to agree with"
    assert seen == [("model", [1, 1, 0, 0], "image0.png")]


def test_evaluate_saves_predictions(tmp_path):
    result = evaluate(constant(1.0), TwoImages(), 2, EvalConfig(), save_dir=tmp_path, progress=False)
    assert result.num_images == 2 and np.trace(result.matrix) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image0.png", "image1.png"]


def test_runtime_predictors_and_reported_classes():
    class Runtime:
        def predict(self, images, want_logits=True):
            assert isinstance(images, np.ndarray) and want_logits
            return SimpleNamespace(logits=np.ones((images.shape[0], 2, 4, 4), np.float32))

    assert as_logits_fn(Runtime())(torch.zeros(1, 3, 4, 4)).shape == (1, 2, 4, 4)
    cfg = SimpleNamespace(eval=EvalConfig(num_classes_reported=16))
    assert len(reported_classes(cfg, [f"c{i}" for i in range(19)])) == 16
    assert reported_classes(cfg, ["left", "right"]) is None, "a custom label set is scored over all classes"


def test_slide_mode_runs_an_hrda_models_sliding_multi_resolution_inference():
    """HRDA's test protocol: each slide window goes through ``slide_forward``, not the whole-window forward."""
    calls = []

    class HRDALike:
        def __call__(self, images):
            calls.append("whole")
            return torch.zeros(images.shape[0], 2, *images.shape[-2:])

        def slide_forward(self, images):
            calls.append(("slide", tuple(images.shape[-2:])))
            logits = torch.zeros(images.shape[0], 2, *images.shape[-2:])
            logits[:, 1] = 1.0
            return logits

    config = EvalConfig(mode="slide", crop=(4, 2), stride=(4, 2))
    result = evaluate(HRDALike(), TwoImages(), 2, config, progress=False)
    assert calls == [("slide", (4, 2))] * 4 and "whole" not in calls  # two windows per image
    assert result.matrix[:, 1].sum() == 32  # every pixel predicted as class 1
