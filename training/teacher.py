"""``python -m training teacher``: the DAFormer UDA teacher (and the source-only / oracle baselines).

Recipe: 1 config (validated: data folders, ``model.init``); 2 datasets (fail fast on missing folders);
3 model; 4 task; 5 streams; 6 the loop; 7 ``model.safetensors`` + ``metrics.json`` (rank 0). The steps
the student shares (resume check, devices, datasets, streams, loop, outputs) are training/run.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clda_deploy.config import Config
from training.run import (
    build_datasets,
    check_resumable,
    run_loop,
    save_run_config,
    start_devices,
    stream_factories,
    write_outputs,
)


def prepare_teacher(cfg: Config, run_dir: Path, resume: bool) -> tuple[Any, Any]:
    """Steps 1-5: validated inputs for the loop and the distributed context (datasets fail fast)."""
    from clda_deploy.checkpoint import build_for_training
    from clda_deploy.uda.daformer import build_teacher_task
    from training.loop import LoopInputs
    from training.state import seed_everything

    if resume:
        check_resumable(cfg, run_dir)
    needs_target = cfg.uda.mode in ("daformer", "oracle")
    datasets = build_datasets(cfg, needs_target, target_labels=cfg.uda.mode == "oracle")
    device, dist = start_devices(cfg)
    seed_everything(cfg.train.seed)
    model = build_for_training(cfg, resume).to(device)
    task = build_teacher_task(cfg, model, seed=cfg.train.seed + dist.rank)
    save_run_config(cfg, run_dir, dist)
    streams = stream_factories(cfg, datasets, task.domains, dist)
    return LoopInputs(cfg, model, task, streams, datasets["val"], run_dir, device, dist), datasets["val"]


def train_teacher(cfg: Config, run_dir: Path, resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train, then write ``model.safetensors`` and ``metrics.json`` on rank 0: (loop result, metrics)."""
    from training.distributed import shutdown

    inputs, val = prepare_teacher(cfg, run_dir, resume)
    try:
        result = run_loop(inputs, resume)
        payload: dict[str, Any] = {}
        if inputs.dist.is_main:
            payload = write_outputs(cfg, run_dir, result, val, "teacher", inputs.device)
        return result, payload
    finally:
        shutdown(inputs.dist)


def check_teacher_config(cfg: Config) -> None:
    """Everything a teacher run can get wrong before training, in milliseconds: the data folders its
    ``uda.mode`` reads and the ``model.init`` file."""
    from clda_deploy.data import check_roots

    needed = {"data.val": cfg.data.val}
    if cfg.uda.mode != "oracle":
        needed["data.source"] = cfg.data.source
    if cfg.uda.mode != "source_only":
        needed["data.target"] = cfg.data.target
    check_roots(needed)
    if cfg.model.init is not None:
        from clda_deploy.checkpoint import check_init

        check_init(cfg.model.init, cfg)


def run_teacher(cfg: Config, run_dir: Path, resume: bool = False) -> dict[str, Any]:
    """The ``teacher`` command (and each teacher-type run of the studies): check, train, report."""
    check_teacher_config(cfg)
    result, payload = train_teacher(cfg, run_dir, resume)
    if payload:
        scheme = (
            cfg.uda.mode
            + ("" if cfg.uda.method == "daformer" else f", {cfg.uda.method}")
            + (", mic" if cfg.uda.mic else "")
        )
        print(f"teacher ({scheme}) target-val mIoU: {payload['miou']:.2f} -> {run_dir / 'model.safetensors'}")
    return payload
