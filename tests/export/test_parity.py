import json

import numpy as np
import pytest
import torch

from clda_deploy import load_segmenter
from clda_deploy.evaluation import Tally
from clda_deploy.metrics import ConfusionMeter
from export.__main__ import main
from export.parity import backend_report

DESIGN_KEYS = {"miou", "delta_miou", "pixel_agreement", "max_abs_logit_diff", "passed"}


def test_faithful_export_passes(exported):
    assert exported["code"] == 0
    payload = exported["parity"]
    assert set(payload) == {"reference", "backends"}
    variants = {"torch-bf16", "onnxruntime", "onnxruntime-fp16", "openvino", "openvino-bf16"}
    assert set(payload["backends"]) == variants  # every way to run each file, OpenVINO on the same ONNX
    assert payload["reference"]["num_images"] == 4 and 0.0 <= payload["reference"]["miou"] <= 100.0
    for entry in payload["backends"].values():
        assert DESIGN_KEYS <= set(entry) and entry["passed"] is True
    fp32 = payload["backends"]["onnxruntime"]
    assert abs(fp32["delta_miou"]) <= 0.1 and fp32["pixel_agreement"] >= 99.9 and fp32["max_abs_logit_diff"] < 1e-3


def perturbed_loader(path, device="cpu"):
    """The export sees a model whose head weights moved: a broken export, as parity must see it."""
    model = load_segmenter(path, device)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


def test_broken_export_fails_the_gate(student_checkpoint, val_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("export.to_onnx.load_segmenter", perturbed_loader)
    argv = ["--checkpoint", str(student_checkpoint), "--out", str(tmp_path), "--dataset-root", str(val_root)]
    assert main([*argv, "--max-images", "2", "--quiet"]) == 3
    payload = json.loads((tmp_path / "parity.json").read_text())["student"]
    assert payload == json.loads((tmp_path / "student.parity.json").read_text())
    entry = payload["backends"]["onnxruntime"]
    assert entry["passed"] is False and entry["pixel_agreement"] < 99.9
    assert payload["reference"]["num_images"] == 2
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "parity FAILED for onnxruntime" in captured.err
    assert (tmp_path / "student.onnx").is_file(), "files exported before the gate stay"


def tally(matrix, agree, pixels):
    meter = ConfusionMeter(2)
    meter.matrix = np.asarray(matrix, dtype=np.int64)
    return Tally(meter, agree=agree, pixels=pixels, max_logit_diff=0.25)


def test_delta_thresholds_by_precision():
    reference = tally([[1000, 0], [0, 1000]], 0, 0)  # mIoU 100
    candidate = tally([[1000, 0], [3, 997]], 2000, 2000)  # IoU 1000/1003 and 997/1000
    for precision, passed in (("fp32", False), ("fp16", True)):
        entry = backend_report(candidate, reference, precision, ["a", "b"], None)
        assert entry["delta_miou"] == pytest.approx(-0.299551, abs=1e-6)
        assert entry["per_class_delta"] == {"a": pytest.approx(-0.299103, abs=1e-6), "b": pytest.approx(-0.3)}
        assert entry["passed"] is passed and entry["max_abs_logit_diff"] == 0.25


def test_agreement_gates_fp32_only():
    same = tally([[50, 0], [0, 50]], 0, 0)
    for precision, passed in (("fp32", False), ("fp16", True)):
        entry = backend_report(tally([[50, 0], [0, 50]], 998, 1000), same, precision, ["a", "b"], None)
        assert entry["delta_miou"] == 0.0 and entry["pixel_agreement"] == pytest.approx(99.8)
        assert entry["passed"] is passed


def test_parity_index_keeps_every_model(tmp_path):
    from export.parity import write_parity

    record = {"reference": {"miou": 50.0}, "backends": {"onnxruntime": {"miou": 50.0, "passed": True}}}
    write_parity(tmp_path, "student", record)
    write_parity(tmp_path, "teacher", {**record, "reference": {"miou": 60.0}})
    index = json.loads((tmp_path / "parity.json").read_text())
    assert sorted(index) == ["student", "teacher"]
    assert index["teacher"]["reference"]["miou"] == 60.0
    assert json.loads((tmp_path / "student.parity.json").read_text()) == record
