"""``make gpu-check``, export half: ONNX export parity against PyTorch running on the GPU.

A randomly initialised model of the given encoder is saved as a checkpoint, exported to fp32 and
fp16 ONNX with the real exporter, and the ONNX files (through ``load_predictor``: TensorRT or CUDA
providers where onnxruntime-gpu is installed, the CPU provider otherwise) are compared with the
PyTorch model on ``--device`` (CUDA, fp32) on random images at the inference size: pixel agreement
and max |logit| difference, plus the ms per image of each. A ``.plan`` and a ``.fp16.plan``
(strongly typed, from the matching ONNX) are built and compared too when TensorRT is installed.
Random weights suffice: parity is about the graph, not the accuracy.

Gate (exit 3 when it fails): fp32 files agree with PyTorch on at least the parity gate's fp32
pixel share (``export.parity.MIN_AGREEMENT``); fp16 agreement is reported, not gated, as in the
parity gate. Without a visible CUDA device the check is skipped with the reason and exits 0;
``--device cpu`` with a small encoder exercises the same code path in tests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from clda_deploy.artifacts import kind_for, kind_of_variant, model_file_name
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config
from clda_deploy.models.segmenter import build_segmenter
from clda_deploy.profiling import time_predictor
from clda_deploy.reporting import Target, gate_status
from clda_deploy.runtime import Predictor, available_backends, load_predictor
from export.parity import MIN_AGREEMENT


def timed_predict(predictor: Predictor, images: np.ndarray, runs: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits, labels and ms per image of ``predictor`` on ``images`` (the first call, whose outputs
    are kept, is the warm-up)."""
    prediction = predictor.predict(images)
    assert prediction.logits is not None
    times = time_predictor(predictor, images, 0, runs, want_logits=True)
    return prediction.logits, prediction.labels, sum(times) / (runs * len(images))


def agreement_target(name: str, agreement: float) -> Target | None:
    """The gate of an fp32 file; None for the others (reported only)."""
    threshold = MIN_AGREEMENT["fp32"]
    if kind_of_variant(name).precision != "fp32" or threshold is None:
        return None
    return Target(f"{name} pixel agreement", agreement, threshold, ">=", gate=True, unit=" %")


def export_files(
    encoder: str, work: Path, with_tensorrt: bool, batch: int = 1, size: tuple[int, int] = (512, 1024)
) -> dict[str, Path]:
    """Checkpoint -> ``model.onnx`` and ``model.fp16.onnx`` (+ ``model.plan`` and ``model.fp16.plan``,
    strongly typed from the matching ONNX) with the export stage's code, keyed by backend variant
    (``torch`` for the checkpoint itself). The engines' profile is the check's own ``batch`` x ``size``,
    so the builds time tactics for the one shape that runs (minutes less than the desktop preset)."""
    from export.fp16 import convert_fp16
    from export.to_onnx import export_onnx, onnx_metadata

    cfg = load_config(None, [f"model.encoder={encoder}"])
    torch.manual_seed(0)
    model = build_segmenter(encoder, cfg.model.head, cfg.model.num_classes, head_channels=cfg.model.head_channels)
    checkpoint = save_model(work / "model.safetensors", model, cfg, role="student")
    onnx, half = kind_for("onnxruntime"), kind_for("onnxruntime", "fp16")
    files = {"torch": checkpoint, onnx.variant: export_onnx(checkpoint, work / model_file_name("model", onnx), "model")}
    files[half.variant] = convert_fp16(files[onnx.variant], work / model_file_name("model", half))
    if with_tensorrt:
        from export.to_tensorrt import Profile, TensorRTOptions, build_engine

        shape = (batch, 3, *size)
        options = TensorRTOptions(Profile((1, 3, *size), shape, shape), workspace_gib=2.0)
        for precision, source in (("fp32", files[onnx.variant]), ("fp16", files[half.variant])):
            engine = kind_for("tensorrt", precision)
            metadata = onnx_metadata(checkpoint, "model", precision)
            plan = work / model_file_name("model", engine)
            files[engine.variant] = build_engine(source, plan, precision, metadata, options)
    return files


def backend_device(name: str, device: str) -> str:
    """``device`` for TensorRT; for ONNX Runtime ``device`` only where its CUDA build is installed
    (the CPU build refuses a CUDA request), else ``cpu``, so the check still compares the graphs."""
    if kind_of_variant(name).backend == "onnxruntime" and device.startswith("cuda"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return "cpu"
    return device


def run(encoder: str, height: int, width: int, batch: int, runs: int, device: str) -> tuple[list[str], list[Target]]:
    """The report lines (one per exported backend, compared with PyTorch on ``device``) and the gates."""
    lines, targets = [], []
    with_tensorrt = device.startswith("cuda") and available_backends().get("tensorrt") is None
    with tempfile.TemporaryDirectory(prefix="clda-gpu-check-") as folder:
        files = export_files(encoder, Path(folder), with_tensorrt, batch, (height, width))
        images = np.random.default_rng(0).standard_normal((batch, 3, height, width)).astype(np.float32)
        reference = load_predictor(files.pop("torch"), device=device)
        ref_logits, ref_labels, ref_ms = timed_predict(reference, images, runs)
        lines.append(f"torch {reference.device}: {ref_ms:.1f} ms/image")
        for name, path in files.items():
            predictor = load_predictor(path, device=backend_device(name, device))
            logits, labels, ms = timed_predict(predictor, images, runs)
            agreement = pixel_agreement(labels, ref_labels)
            targets += [target for target in [agreement_target(name, agreement)] if target is not None]
            difference = float(np.abs(logits - ref_logits).max())
            lines.append(
                f"{name} ({predictor.backend}, {','.join(predictor.providers)}): {ms:.1f} ms/image, "
                f"pixel agreement {agreement:.3f} %, max |logit diff| {difference:.2e}"
            )
            predictor.close()
        reference.close()
    return lines, targets


def pixel_agreement(labels: np.ndarray, reference: np.ndarray) -> float:
    """Percent of pixels whose label equals the reference's."""
    return 100.0 * float((labels == reference).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--encoder", default="mit_b3", help="the paper's student (default mit_b3)")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: skipped: no CUDA device visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 0
    print(f"export parity: {args.encoder} at {args.size[0]}x{args.size[1]}, batch {args.batch}, vs torch {args.device}")
    lines, targets = run(args.encoder, *args.size, args.batch, args.runs, args.device)
    for line in lines + [target.describe() for target in targets]:
        print(line)
    return gate_status(targets)


if __name__ == "__main__":
    sys.exit(main())
