"""An HRDA segmenter exports to one ONNX graph (context and detail passes over the whole image, fused by
the scale attention) that matches PyTorch at several input sizes and passes the fp32 and fp16 gate."""

import json

import numpy as np
import pytest
import torch

from clda_deploy.checkpoint import load_segmenter, save_model, segmenter_from_config
from clda_deploy.config import load_config
from clda_deploy.models.hrda import HRDASegmenter

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def hrda_checkpoint(tmp_path_factory):
    cfg = load_config(None, ["uda.method=hrda", "model.encoder=mit_cpu_student", "model.head_channels=32",
                             "data.crop=[64,64]"])  # fmt: skip
    torch.manual_seed(0)
    model = segmenter_from_config(cfg).eval()
    with torch.no_grad():  # a non-trivial attention: random init gives sigmoid(~0) = 0.5 everywhere
        model.attention_head.conv_seg.weight.normal_(std=0.5)
    return save_model(tmp_path_factory.mktemp("hrda") / "model.safetensors", model, cfg, role="teacher")


@pytest.fixture(scope="module")
def hrda_export(hrda_checkpoint, val_root, tmp_path_factory):
    from export.__main__ import main

    out = tmp_path_factory.mktemp("hrda_export")
    code = main(["--checkpoint", str(hrda_checkpoint), "--out", str(out), "--fp16", "--dataset-root", str(val_root),
                 "--quiet"])  # fmt: skip
    return {"code": code, "out": out}


@pytest.mark.parametrize("shape", [(1, 3, 64, 128), (2, 3, 96, 160)])
def test_hrda_onnx_matches_pytorch_whole_image_inference(hrda_export, hrda_checkpoint, shape):
    from clda_deploy.runtime import load_predictor

    model = load_segmenter(hrda_checkpoint)
    assert isinstance(model, HRDASegmenter)
    images = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    result = load_predictor(hrda_export["out"] / "teacher.onnx", device="cpu").predict(images)
    np.testing.assert_allclose(result.logits, reference, atol=1e-4, rtol=1e-4)
    assert (result.labels == reference.argmax(axis=1)).mean() >= 0.999


def test_hrda_export_passes_the_fp32_and_fp16_parity_gate(hrda_export):
    assert hrda_export["code"] == 0
    backends = json.loads((hrda_export["out"] / "parity.json").read_text())["teacher"]["backends"]
    for variant in ("onnxruntime", "onnxruntime-fp16"):
        assert backends[variant]["passed"], backends[variant]
    assert backends["onnxruntime"]["pixel_agreement"] >= 99.9
