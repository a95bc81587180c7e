"""The one training loop: every training command (teacher, baselines, CLDA student) runs here.

Iteration-based. The task returns losses; the loop owns the optimizer (AdamW, head lr x10, no decay
on norms), the warmup + poly schedule, mixed precision on CUDA (bf16 where supported, else fp16
with a gradient scaler), DDP, tqdm progress, ``metrics.jsonl`` + TensorBoard, evaluation every
``train.eval_every``, and atomic ``checkpoint.pt`` every ``train.checkpoint_every``, at the end and
on Ctrl-C / SIGTERM. ``resume=True`` continues at the checkpointed iteration with the same model,
EMA teacher, optimizer, scheduler, scaler, RNG and data-stream position.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from clda_deploy.artifacts import CHECKPOINT_FILE, METRICS_LOG
from clda_deploy.config import Config, config_to_dict
from clda_deploy.evaluation import evaluate
from clda_deploy.metrics import mean_iou
from clda_deploy.uda.task import Task
from training.distributed import DistInfo, barrier
from training.errors import TrainingDivergedError
from training.optim import build_optimizer, build_scheduler
from training.state import capture_rng, load_checkpoint, restore_rng, save_checkpoint


def snapshot_name(iteration: int) -> str:
    """``snapshot-000180.pt``: the resume state after ``iteration`` steps (LoopInputs.snapshots)."""
    return f"snapshot-{iteration:06d}.pt"


@dataclass
class LoopInputs:
    """What a training command hands the loop."""

    cfg: Config
    model: nn.Module  # on its device already
    task: Task
    streams: dict[str, Any]  # domain -> callable(start_iteration) -> iterator of batches
    val_dataset: Any | None
    run_dir: Path
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    extra_state: dict[str, Any] = field(default_factory=dict)
    # Iterations after which a copy of the resume state is kept as snapshot-<iteration>.pt, so that
    # runs identical up to that point can fork from it (training/fork.py).
    snapshots: tuple[int, ...] = ()
    # Stop (checkpoint written, no final evaluation) after this many steps: a shared prefix run.
    stop_at: int | None = None


@dataclass
class LoopResult:
    model: nn.Module
    iteration: int
    val_miou: float | None
    interrupted: bool = False


def autocast_settings(device: torch.device, amp: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed): bf16 where supported, else fp16."""
    if not amp or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (cluster preemption, ``kill``) saves a checkpoint like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class MetricsLog:
    """``metrics.jsonl`` (one line per logged iteration) and TensorBoard, on rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_LOG
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency; tolerate a trimmed environment
                print("TensorBoard logging off: `pip install tensorboard` to enable it")

    def write(self, iteration: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as stream:
            stream.write(json.dumps({"iteration": iteration, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Trainer:
    def __init__(self, inputs: LoopInputs) -> None:
        self.inputs, self.cfg = inputs, inputs.cfg
        self.model = inputs.model
        self.optimizer = build_optimizer(self.model, self.cfg.train)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.train)
        self.amp_dtype, needs_scaler = autocast_settings(inputs.device, self.cfg.train.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_scaler)
        self.iteration = 0
        self.wrapped = self._wrap(self.model)
        self.log = MetricsLog(inputs.run_dir, inputs.dist.is_main)
        self.last_miou: float | None = None

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.inputs.dist.enabled:
            return model
        device_ids = [self.inputs.device.index] if self.inputs.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # ----- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "task": self.inputs.task.state_dict(),
            "rng": capture_rng(),
            "config": config_to_dict(self.cfg),
            **self.inputs.extra_state,
        }

    def save(self) -> None:
        if self.inputs.dist.is_main:
            save_checkpoint(self.inputs.run_dir / CHECKPOINT_FILE, self.state())

    def resume(self) -> None:
        state = load_checkpoint(self.inputs.run_dir / CHECKPOINT_FILE)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.inputs.task.load_state_dict(state["task"])
        restore_rng(state["rng"])
        self.iteration = int(state["iteration"])
        print(f"resumed from {self.inputs.run_dir / CHECKPOINT_FILE} at iteration {self.iteration}")

    # ----- one step ----------------------------------------------------------------------------
    def step(self, batches: dict[str, Iterator[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        device = self.inputs.device
        batch = {domain: to_device(next(stream), device) for domain, stream in batches.items()}
        self.model.train()
        autocast = torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        with autocast:
            losses = self.inputs.task.losses(self.wrapped, batch, self.iteration)
        self.scaler.scale(losses["loss"]).backward()
        if self.cfg.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.inputs.task.after_step(self.model, self.iteration)
        self.iteration += 1
        return losses

    def evaluate(self) -> float | None:
        """Target-val mIoU on rank 0 (others wait); ``None`` without a val set."""
        if self.inputs.val_dataset is None:
            return None
        miou = None
        if self.inputs.dist.is_main:
            cfg = self.cfg
            result = evaluate(
                self.model.eval(),
                self.inputs.val_dataset,
                cfg.model.num_classes,
                cfg.eval,
                device=self.inputs.device,
                workers=0,
                progress=False,
            )
            miou = mean_iou(result.matrix)
            self.log.write(self.iteration, {"val_miou": miou})
        barrier(self.inputs.dist)
        self.last_miou = miou
        return miou

    # ----- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> LoopResult:
        if resume:
            self.resume()
        cfg = self.cfg.train
        batches = {domain: make(self.iteration) for domain, make in self.inputs.streams.items()}
        bar = tqdm(
            total=cfg.iters,
            initial=self.iteration,
            desc="train",
            unit="it",
            disable=not (cfg.progress and self.inputs.dist.is_main),
            dynamic_ncols=True,
        )
        sums: dict[str, float] = {}
        started, logged_at = time.perf_counter(), self.iteration
        interrupted = False
        try:
            with sigterm_as_interrupt():
                last = cfg.iters if self.inputs.stop_at is None else min(cfg.iters, self.inputs.stop_at)
                while self.iteration < last:
                    losses = self.step(batches)
                    for key, value in losses.items():
                        sums[key] = sums.get(key, 0.0) + float(value.detach())
                    bar.update(1)
                    if self.iteration % max(cfg.log_every, 1) == 0 or self.iteration == cfg.iters:
                        rate = (self.iteration - logged_at) / max(time.perf_counter() - started, 1e-9)
                        self._log(sums, self.iteration - logged_at, rate, bar)
                        sums, started, logged_at = {}, time.perf_counter(), self.iteration
                    if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.iteration < cfg.iters:
                        self.evaluate()
                    if cfg.checkpoint_every and self.iteration % cfg.checkpoint_every == 0:
                        self.save()
                    if self.iteration in self.inputs.snapshots and self.inputs.dist.is_main:
                        save_checkpoint(self.inputs.run_dir / snapshot_name(self.iteration), self.state())
        except KeyboardInterrupt:
            interrupted = True
            self.save()
            print(
                f"\ninterrupted at iteration {self.iteration}: checkpoint written to "
                f"{self.inputs.run_dir / CHECKPOINT_FILE}; continue with --resume"
            )
        finally:
            bar.close()
        if not interrupted:
            self.save()
        self.log.close()
        return LoopResult(self.model, self.iteration, self.last_miou, interrupted)

    def _log(self, sums: dict[str, float], count: int, rate: float, bar: tqdm) -> None:
        means = {key: value / max(count, 1) for key, value in sums.items()}
        if not math.isfinite(means.get("loss", 0.0)):
            raise TrainingDivergedError(
                f"the loss became {means['loss']} by iteration {self.iteration}: lower train.lr or set "
                "train.grad_clip (the last checkpoint is still intact)"
            )
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{means.get('loss', 0.0):.3f}", lr=f"{lr:.2e}", refresh=False)
        self.log.write(self.iteration, {**means, "lr": lr, "it_per_s": rate})
