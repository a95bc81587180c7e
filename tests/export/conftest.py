import json
from pathlib import Path

import pytest
import torch

from clda_deploy import build_segmenter
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config

SMALL = ["model.encoder=mit_cpu_student", "model.head_channels=32"]


@pytest.fixture(scope="session")
def student_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised CPU student (head width 32) saved with its config, role student."""
    cfg = load_config(None, SMALL)
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.encoder, cfg.model.head, cfg.model.num_classes, head_channels=32).eval()
    return save_model(tmp_path_factory.mktemp("ckpt") / "model.safetensors", model, cfg, role="student")


@pytest.fixture(scope="session")
def val_root(tmp_path_factory) -> Path:
    """A 4-image SynthCity target-val set at 64x128 (Cityscapes layout)."""
    from clda_deploy.data.synthcity import generate_synthcity

    out = tmp_path_factory.mktemp("synthcity")
    generate_synthcity(out, num_source=2, num_target=2, num_val=4, height=64, width=128, workers=1, progress=False)
    return out / "target"


@pytest.fixture(scope="session")
def exported(tmp_path_factory, student_checkpoint, val_root) -> dict:
    """One full ``python -m export --fp16 --triton`` run with the parity gate, shared by the tests."""
    pytest.importorskip("onnxruntime")
    from export.__main__ import main

    root = tmp_path_factory.mktemp("export")
    out, triton = root / "out", root / "triton"
    argv = ["--checkpoint", str(student_checkpoint), "--out", str(out), "--fp16", "--triton", str(triton)]
    code = main([*argv, "--dataset-root", str(val_root), "--quiet"])
    return {
        "code": code,
        "out": out,
        "triton": triton,
        "onnx": out / "student.onnx",
        "fp16": out / "student.fp16.onnx",
        "parity": json.loads((out / "parity.json").read_text())["student"],
    }
