"""``python -m training.studies.cost``: CLDA's training cost against KD-only and against joint backprop.

The method's claim (paper §1, §5): updating the teacher costs almost nothing because it is never
backpropagated. Each mode runs in its own process (peak memory is per process) for the same number
of real steps of the one training loop on synthetic batches:
- ``kd_only``: ``clda.mapping: none`` (T->S only);
- ``clda_mapping``: a step inside T2..T3 (teacher and student attention captured, Eq. 6 summed);
- ``clda_update``: a step after T3 (Eq. 8 EMA of the mapped blocks after every step);
- ``joint``: the naive alternative, the teacher trained by backprop beside the student.
Time per step is the median over steps; memory is the process's peak resident set on CPU
(``ru_maxrss``) or ``torch.cuda.max_memory_allocated`` on CUDA. Ratios are against ``kd_only``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clda_deploy.artifacts import RunLayout
from clda_deploy.profiling import peak_memory_mib, time_calls
from clda_deploy.reporting import markdown_table, write_json, write_text
from clda_deploy.statistics import ratio, summarize_timings

MODES = ("kd_only", "clda_mapping", "clda_update", "joint")


class JointTask:
    """The naive baseline: CLDA's KD losses plus the teacher's own source CE, both backpropagated."""

    def __init__(self, task: Any, teacher: nn.Module) -> None:
        self.task, self.teacher = task, teacher
        self.domains, self.target_labels = task.domains, False

    def losses(self, model: nn.Module, batch: dict, iteration: int) -> dict[str, Tensor]:
        from clda_deploy.losses import pixel_weighted_cross_entropy

        out = self.task.losses(model.student, batch, iteration)
        teacher_ce = pixel_weighted_cross_entropy(model.teacher(batch["source"]["image"]), batch["source"]["label"])
        out["loss"] = out["loss"] + teacher_ce
        return out

    def after_step(self, model: nn.Module, iteration: int) -> None:
        self.task.after_step(model.student, iteration)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class StudentAndTeacher(nn.Module):
    """Both networks under one optimizer (``head.`` keys stay recognisable for the head lr)."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher


def synthetic(batch: int, size: int, classes: int) -> Any:
    generator = torch.Generator().manual_seed(0)
    while True:
        yield {"image": torch.randn(batch, 3, size, size, generator=generator),
               "label": torch.randint(0, classes, (batch, size, size), generator=generator)}  # fmt: skip


def build_trainer(mode: str, config: str, teacher_path: str, size: int, steps: int, run_dir: Path) -> tuple[Any, int]:
    """A Trainer for ``mode`` and the first iteration to time (inside the phase being measured)."""
    from clda_deploy.checkpoint import load_segmenter
    from clda_deploy.config import load_config
    from clda_deploy.models.segmenter import build_segmenter
    from clda_deploy.uda.clda import CLDATask, stage_iterations
    from training.loop import LoopInputs, Trainer

    mapping = "none" if mode == "kd_only" else "channel"
    iters = 100 * (steps + 2)
    # Every block counts as non-salient, so 30% of all teacher blocks are mapped: an upper bound on
    # the S->T cost (a real run maps 30% of the non-salient ones). LSR is label-free here.
    cfg = load_config(config, [f"clda.mapping={mapping}", f"data.crop=[{size},{size}]", f"train.iters={iters}",
                               "train.device=cpu", "train.progress=false", "clda.saliency_data=agreement",
                               "clda.nonsalient_threshold=1000"])  # fmt: skip
    teacher = load_segmenter(teacher_path)
    student = build_segmenter(cfg.model.encoder, cfg.model.head, head_channels=cfg.model.head_channels)
    task: Any = CLDATask(cfg, teacher, [{"image": torch.randn(4, 3, size, size)}], run_dir)
    model: nn.Module = student
    if mode == "joint":
        teacher.requires_grad_(True).train()
        model, task = StudentAndTeacher(student, teacher), JointTask(task, teacher)
    t2, t3 = stage_iterations(cfg)
    # The warm-up step runs at ``start``: at T2 it computes LSR; at T3 - 1 it also chooses i*, so the
    # timed steps after it are S->T steps.
    start = {"kd_only": t2, "clda_mapping": t2, "clda_update": t3 - 1, "joint": t3 - 1}[mode]
    trainer = Trainer(LoopInputs(cfg, model, task, {}, None, run_dir, torch.device("cpu")))
    trainer.iteration = start
    return trainer, cfg.model.num_classes


def measure(mode: str, config: str, teacher_path: str, size: int, steps: int, run_dir: Path) -> dict[str, float]:
    """Median step time and peak memory of ``steps`` steps of ``mode`` (run in a fresh process)."""
    trainer, classes = build_trainer(mode, config, teacher_path, size, steps, run_dir)
    streams = {"source": synthetic(2, size, classes), "target": synthetic(2, size, classes)}
    # The warm-up step: for CLDA, stage 2's saliency pass happens here.
    times_ms = time_calls(lambda: trainer.step(streams), 1, steps)
    return {"step_s": summarize_timings(times_ms)["p50"] / 1000.0, "peak_mib": peak_memory_mib()}


def relative_to(results: dict[str, dict[str, float]], base: str = "kd_only") -> dict[str, dict[str, float | None]]:
    """Every mode's measurements plus ``time_ratio`` and ``memory_ratio`` against ``base``'s."""
    reference = results[base]
    return {
        mode: {**entry, "time_ratio": ratio(entry["step_s"], reference["step_s"]),
               "memory_ratio": ratio(entry["peak_mib"], reference["peak_mib"])}
        for mode, entry in results.items()
    }  # fmt: skip


def cost_table(results: dict[str, dict[str, Any]]) -> str:
    """``cost.md``: one row per mode, times and memory with their ratios to KD-only."""
    headers = ["mode", "step time (s)", "× KD-only", "peak memory (MiB)", "× KD-only"]
    rows = [[mode, f"{r['step_s']:.3f}", f"{r['time_ratio']:.3f}", f"{r['peak_mib']:.0f}", f"{r['memory_ratio']:.3f}"]
            for mode, r in results.items()]  # fmt: skip
    return markdown_table(headers, rows)


def compare(config: str, teacher: str, size: int, steps: int, out: Path) -> dict[str, Any]:
    """Run every mode in its own process; write ``cost.json`` and ``cost.md``."""
    results = {}
    for mode in MODES:
        command = [sys.executable, "-m", "training.studies.cost", "--mode", mode, "-c", config, "--teacher", teacher,
                   "--size", str(size), "--steps", str(steps), "--out", str(out)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cost measurement of {mode} failed:\n{done.stderr[-2000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    results = relative_to(results)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "cost.json", results)
    table = cost_table(results)
    write_text(out / "cost.md", table)
    print(table)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.studies.cost", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="training/configs/synthcity_clda.yaml")
    parser.add_argument("--teacher", required=True, help="teacher model.safetensors")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=str(RunLayout().cost))
    parser.add_argument("--mode", choices=MODES, default=None, help="(internal) measure one mode and print JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.mode is not None:
        print(json.dumps(measure(args.mode, args.config, args.teacher, args.size, args.steps, Path(args.out))))
        return 0
    compare(args.config, args.teacher, args.size, args.steps, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
