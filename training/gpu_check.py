"""``make gpu-check``: CUDA training steps with mixed precision and a CUDA inference pass (≤ 5 min).

For each of the paper's models (DAFormer teacher MiT-B5, CLDA student MiT-B3) it runs real
DAFormer training steps through the one training loop's ``Trainer.step`` (EMA teacher, ClassMix,
pseudo-labels, AMP, the optimizer) on 512×512 crops, batch 2 source + 2 target, then an inference
pass at 512×1024, and prints it/s and peak memory. Then HRDA MiT-B5 steps at HRDA's sizes (1024×1024
context crops seen at 0.5, 512×512 detail crops, pseudo-labels by the sliding detail), with whether
its peak memory leaves room on a 24 GB card (HRDA's users report out-of-memory at 22.5 GB). Synthetic
tensors replace the datasets (the GPU machine has none); timings do not depend on pixel values.

Gate (exit 3 when it fails, like the export half's parity gate): every timed step's loss is finite
(mixed precision that overflows shows up as NaN/inf losses, not as an error). Without a visible
CUDA device the check is skipped with the reason and exits 0, so ``make gpu-check`` passes on a CPU
machine; ``--device cpu`` with a small encoder exercises the same code path in tests.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from clda_deploy.checkpoint import segmenter_from_config
from clda_deploy.config import load_config
from clda_deploy.models.segmenter import build_segmenter
from clda_deploy.profiling import peak_memory_mib, random_images, synchronize, time_calls
from clda_deploy.reporting import Target, gate_status
from clda_deploy.uda.daformer import DAFormerTask
from training.loop import LoopInputs, Trainer


def synthetic_batches(batch: int, size: int, classes: int, device: torch.device) -> Iterator[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    while True:
        yield {
            "image": torch.randn(batch, 3, size, size, generator=generator).to(device),
            "label": torch.randint(0, classes, (batch, size, size), generator=generator).to(device),
        }


CARD_GIB = 24e9 / 2**30  # a "24 GB" card: 22.35 GiB
CONTEXT_GIB = 1.0  # what the CUDA context and allocator fragmentation take beyond PyTorch's peak


def fits_card(peak_gib: float) -> bool:
    """Whether a training run with this PyTorch peak leaves room on a 24 GB card."""
    return peak_gib + CONTEXT_GIB <= CARD_GIB


def check_training(
    encoder: str, size: int, steps: int, device: torch.device, run_dir: Path, method: str = "daformer"
) -> dict[str, float]:
    """it/s and peak memory of DAFormer steps (``method`` hrda: HRDA's) with AMP (bf16/fp16) for ``encoder``."""
    cfg = load_config(
        None,
        [
            f"model.encoder={encoder}",
            f"data.crop=[{size},{size}]",
            f"train.iters={steps + 2}",
            "train.warmup_iters=1",
            "train.progress=false",
            f"train.device={device.type}",
            f"uda.method={method}",
        ],
    )
    model = segmenter_from_config(cfg).to(device)
    task = DAFormerTask(cfg, model, seed=0)
    trainer = Trainer(LoopInputs(cfg, model, task, {}, None, run_dir, device))
    streams = {d: synthetic_batches(cfg.train.batch_size, size, cfg.model.num_classes, device) for d in task.domains}
    trainer.step(streams)  # warm-up: cuDNN autotuning, allocator
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[float] = []
    times = time_calls(lambda: losses.append(float(trainer.step(streams)["loss"].detach())), 0, steps, device)
    peak = peak_memory_mib(device) / 1024 if device.type == "cuda" else float("nan")
    nonfinite = sum(not math.isfinite(loss) for loss in losses)
    return {"it_per_s": steps / (sum(times) / 1000.0), "peak_gib": peak, "amp": str(trainer.amp_dtype),
            "nonfinite_losses": nonfinite}  # fmt: skip


@torch.no_grad()
def check_inference(encoder: str, height: int, width: int, runs: int, device: torch.device) -> dict[str, float]:
    model = build_segmenter(encoder).to(device).eval()
    image = torch.from_numpy(random_images(height, width)).to(device)
    times = time_calls(lambda: model(image), 3, runs, device)
    assert model(image).shape[-2:] == (height, width)
    return {"ms_per_image": sum(times) / runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--teacher", default="mit_b5")
    parser.add_argument("--student", default="mit_b3")
    parser.add_argument("--size", type=int, default=512, help="training crop (square)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--infer", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--hrda-size", type=int, default=1024, help="HRDA context crop (square; 0 skips HRDA)")
    parser.add_argument("--hrda-steps", type=int, default=5)
    parser.add_argument("--out", default="runs/gpu_check")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: skipped: no CUDA device visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}")
    targets = []
    for role, encoder in (("teacher", args.teacher), ("student", args.student)):
        stats = check_training(encoder, args.size, args.steps, device, Path(args.out))
        print(f"train {role} {encoder} {args.size}x{args.size} batch 2+2 amp={stats['amp']}: "
              f"{stats['it_per_s']:.2f} it/s, peak {stats['peak_gib']:.2f} GiB")  # fmt: skip
        targets.append(Target(f"{role} non-finite losses", stats["nonfinite_losses"], 0, "<=", gate=True))
    if args.hrda_size:
        stats = check_training(args.teacher, args.hrda_size, args.hrda_steps, device, Path(args.out), method="hrda")
        fits = "yes" if fits_card(stats["peak_gib"]) else "no"
        print(f"train hrda teacher {args.teacher} {args.hrda_size}x{args.hrda_size} (detail {args.hrda_size // 2}) "
              f"batch 2+2 amp={stats['amp']}: {stats['it_per_s']:.2f} it/s, peak {stats['peak_gib']:.2f} GiB; "
              f"fits a 24 GB card (peak + {CONTEXT_GIB:g} GiB <= {CARD_GIB:.2f} GiB): {fits}")  # fmt: skip
        targets.append(Target("hrda non-finite losses", stats["nonfinite_losses"], 0, "<=", gate=True))
    for role, encoder in (("teacher", args.teacher), ("student", args.student)):
        stats = check_inference(encoder, *args.infer, runs=10, device=device)
        print(f"infer {role} {encoder} {args.infer[0]}x{args.infer[1]}: {stats['ms_per_image']:.1f} ms/image")
    for target in targets:
        print(target.describe())
    return gate_status(targets)


if __name__ == "__main__":
    sys.exit(main())
