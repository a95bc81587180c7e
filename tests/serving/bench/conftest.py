"""Fixtures for the benchmark tests: a tiny SynthCity, a tiny teacher/student run folder (both
``mit_cpu_student`` with a 32-channel head, the student with a different seed) and its ONNX export,
all built once per session in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clda_deploy import build_segmenter
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config

SMALL = ["model.encoder=mit_cpu_student", "model.head_channels=32"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """``python -m training data --source 2 --target 2 --val 4 --height 64 --width 128``, in-process."""
    from clda_deploy.data.synthcity import generate_synthcity

    out = tmp_path_factory.mktemp("bench_data") / "synthcity"
    generate_synthcity(out, num_source=2, num_target=2, num_val=4, height=64, width=128, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset) -> Path:
    """``run/{teacher,student}/model.safetensors`` whose configs point at the tiny dataset."""
    run = tmp_path_factory.mktemp("bench_run")
    cfg = load_config(
        None,
        [
            *SMALL,
            f"data.val.root={tiny_dataset / 'target'}",
            f"data.target.root={tiny_dataset / 'target'}",
            f"data.source.root={tiny_dataset / 'source'}",
            "eval.max_images=4",
        ],
    )
    for seed, role in enumerate(("teacher", "student")):
        torch.manual_seed(seed)
        model = build_segmenter(cfg.model.encoder, cfg.model.head, cfg.model.num_classes, head_channels=32).eval()
        save_model(run / role / "model.safetensors", model, cfg, role=role)
    return run


@pytest.fixture(scope="session")
def tiny_export(tiny_run) -> Path:
    """``run/export/{teacher,student}.onnx`` (fp32) through the project's exporter."""
    from export import to_onnx

    folder = tiny_run / "export"
    for role in ("teacher", "student"):
        to_onnx.export_onnx(tiny_run / role / "model.safetensors", folder / f"{role}.onnx", role)
    return folder


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The benchmarks set torch's process-wide thread count; give later tests their own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
