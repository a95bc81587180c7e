"""End to end through `python -m training data` and `python -m training eval` on a tiny benchmark."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clda_deploy import build_segmenter
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config
from clda_deploy.data import build_dataset
from clda_deploy.data.labels import CITYSCAPES_VALID_LABELIDS, NUM_CLASSES
from training.__main__ import main

SIZE = ["--height", "64", "--width", "128"]


@pytest.fixture(scope="module")
def synthcity(tiny_synthcity):
    return tiny_synthcity


def test_data_command_writes_both_layouts(tmp_path):
    out = tmp_path / "synthcity"
    args = ["data", "--out", str(out), "--source", "3", "--target", "2", "--val", "2", "--workers", "1", *SIZE]
    assert main(args) == 0
    assert len(list((out / "source" / "labels").glob("*.png"))) == 3
    assert len(list((out / "target" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))) == 2


@pytest.fixture(scope="module")
def checkpoint(synthcity, tmp_path_factory):
    root = str(synthcity / "target")
    cfg = load_config(None, ["model.encoder=mit_cpu_student", "model.head_channels=16", f"data.val.root={root}",
                             "data.workers=0", "train.device=cpu"])  # fmt: skip
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.encoder, cfg.model.head, head_channels=16)
    return save_model(tmp_path_factory.mktemp("run") / "model.safetensors", model, cfg, role="student")


def classes_present(dataset) -> set[int]:
    present: set[int] = set()
    for index in range(len(dataset)):
        present |= set(np.unique(dataset[index]["label"].numpy()).tolist())
    return present - {255}


def test_benchmark_loads_through_gta5_and_cityscapes_with_all_classes(synthcity):
    cfg = load_config(None, [f"data.source.root={synthcity / 'source'}", f"data.val.root={synthcity / 'target'}"])
    source = build_dataset(cfg.data.source, train=False)
    val = build_dataset(cfg.data.val, train=False)
    assert len(source) == 40 and len(val) == 40
    assert classes_present(source) == set(range(NUM_CLASSES))
    assert classes_present(val) == set(range(NUM_CLASSES))


def test_eval_writes_metrics_and_cityscapes_predictions(checkpoint, synthcity, tmp_path):
    out, predictions = tmp_path / "metrics.json", tmp_path / "preds"
    code = main(["eval", "--checkpoint", str(checkpoint), "--out", str(out), "--save-predictions", str(predictions)])
    assert code == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"miou", "per_class_iou", "num_images", "dataset", "checkpoint"}
    assert 0.0 <= metrics["miou"] <= 100.0 and metrics["num_images"] == 40
    assert len(metrics["per_class_iou"]) == NUM_CLASSES
    files = sorted(predictions.glob("*.png"))
    assert len(files) == 40 and all(f.name.endswith("_leftImg8bit.png") for f in files)
    image_names = {p.name for p in (synthcity / "target" / "leftImg8bit" / "val").rglob("*.png")}
    assert {f.name for f in files} == image_names
    prediction = np.array(Image.open(files[0]))
    assert prediction.shape == (64, 128) and set(np.unique(prediction).tolist()) <= CITYSCAPES_VALID_LABELIDS


def test_eval_with_overrides_and_subset(checkpoint, tmp_path):
    out = tmp_path / "m.json"
    code = main(["eval", "--checkpoint", str(checkpoint), "--out", str(out),
                 "--set", "eval.max_images=3", "eval.mode=slide", "--set", "eval.crop=[32,32]", "eval.stride=[24,24]",
                 "eval.num_classes_reported=16"])  # fmt: skip
    assert code == 0
    metrics = json.loads(out.read_text())
    assert metrics["num_images"] == 3 and len(metrics["per_class_iou"]) == 16 and "miou_13" in metrics


def test_eval_errors_are_one_clear_line(checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--set", f"data.val.root={tmp_path / 'nowhere'}"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(checkpoint), "--set", "eval.moed=slide"]) == 2
    assert "did you mean 'eval.mode'" in capsys.readouterr().err


def test_data_rejects_bad_arguments(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path / "x"), "--source", "0", *SIZE]) == 2
    assert "num_source" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_instead_of_an_error_line(monkeypatch, capsys):
    """Only CldaError is a user-facing one-line error; a RuntimeError from inside a command (a shape
    mismatch, CUDA out of memory) propagates with its traceback."""

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr("training.evaluate.run_eval", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        main(["eval", "--checkpoint", "any.safetensors"])
    assert "error:" not in capsys.readouterr().err


def test_a_project_error_from_inside_a_command_is_one_line(monkeypatch, capsys):
    from training.errors import UsageError

    def refused(*args, **kwargs):
        raise UsageError("--model expects NAME=PATH")

    monkeypatch.setattr("training.evaluate.run_eval", refused)
    assert main(["eval", "--checkpoint", "any.safetensors"]) == 2
    assert capsys.readouterr().err == "error: --model expects NAME=PATH\n"
