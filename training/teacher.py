"""``python -m training teacher``: the DAFormer UDA teacher (and the source-only / oracle baselines).

Recipe: 1 config (validated); 2 datasets (fail fast on missing folders); 3 model; 4 task;
5 streams; 6 the loop; 7 ``model.safetensors`` + ``metrics.json`` (rank 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clda_deploy.config import Config, ConfigError, config_to_dict, load_config, save_config

DEFAULT_OUT = "runs/default/teacher"
# Keys that may change between a run and its resume without changing what is being trained.
RESUMABLE_CHANGES = (
    "train.iters",
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.progress",
    "train.device",
    "data.workers",
    "eval.",
)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(
    saved: dict[str, Any], cfg: Config, prefixes: tuple[str, ...] = (), keys: tuple[str, ...] = ()
) -> str | None:
    """``"key: old -> new, ..."`` for the (first 8) dotted keys in which ``cfg`` differs from the saved
    config dict, ignoring keys that start with one of ``prefixes`` or equal one of ``keys``; None if none."""
    old, new = flatten(saved), flatten(config_to_dict(cfg))
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.startswith(prefixes) and k not in keys]  # fmt: skip
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8]) if changed else None


def check_resumable(saved: dict[str, Any], cfg: Config, path: Path) -> None:
    """A resumed run must train the same thing; name every key that differs."""
    details = config_differences(saved, cfg, RESUMABLE_CHANGES)
    if details:
        raise ConfigError(
            f"--resume: the config differs from the one in {path} ({details}); "
            "resume with the original config or start a new --out"
        )


def build_datasets(cfg: Config, needs_target: bool, target_labels: bool) -> dict[str, Any]:
    """Train-mode source/target and eval-mode val datasets; missing folders fail here, in seconds."""
    from clda_deploy.data import build_dataset

    common = {
        "train": True,
        "crop": cfg.data.crop,
        "cat_max_ratio": cfg.data.cat_max_ratio,
        "flip": cfg.data.flip,
        "seed": cfg.train.seed,
    }
    datasets = {"val": build_dataset(cfg.data.val, train=False)}
    if cfg.uda.mode != "oracle":
        datasets["source"] = build_dataset(cfg.data.source, **common)
    if needs_target:
        datasets["target"] = build_dataset(cfg.data.target, labels=target_labels, **common)
    return datasets


def stream_factories(cfg: Config, datasets: dict[str, Any], domains: tuple[str, ...], dist: Any) -> dict[str, Any]:
    """domain -> ``make(start_iteration)`` returning an endless batch iterator."""
    from training.streams import RareClassStream, ShuffledStream, endless_batches

    factories = {}
    for domain in domains:
        dataset = datasets[domain]
        stream: Any = ShuffledStream(dataset, seed=cfg.train.seed + (0 if domain == "source" else 1))
        if domain == "source" and cfg.uda.rcs:
            stream = RareClassStream(dataset, rare_class_sampler(cfg, dataset, dist), seed=cfg.train.seed)

        def make(start: int, stream: Any = stream) -> Any:
            return endless_batches(stream, cfg.train.batch_size, cfg.data.workers, start, dist.rank, dist.world_size)

        factories[domain] = make
    return factories


def rare_class_sampler(cfg: Config, dataset: Any, dist: Any) -> Any:
    """Rank 0 builds the cached class statistics first; the other ranks then read them."""
    from clda_deploy.data.sampling import RareClassSampler
    from training.distributed import barrier

    kwargs = {
        "temperature": cfg.uda.rcs_temperature,
        "min_pixels": cfg.uda.rcs_min_pixels,
        "crop_min_pixels": cfg.uda.rcs_min_crop_pixels,
        "seed": cfg.train.seed,
    }
    if dist.is_main:
        sampler = RareClassSampler.from_dataset(dataset, progress=cfg.train.progress, **kwargs)
    barrier(dist)
    if not dist.is_main:
        sampler = RareClassSampler.from_dataset(dataset, progress=False, **kwargs)
    return sampler


def write_outputs(
    cfg: Config, run_dir: Path, result: Any, val: Any, role: str, device: Any, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``model.safetensors`` (config inside) and ``metrics.json`` on target-val (plus ``extra`` keys)."""
    from clda_deploy.checkpoint import atomic_write, save_model
    from clda_deploy.evaluation import evaluate
    from training.evaluate import metrics_payload

    model_path = save_model(
        run_dir / "model.safetensors",
        result.model,
        cfg,
        role=role,
        extra={"clda_uda_mode": cfg.uda.mode, "clda_iteration": str(result.iteration)},
    )
    outcome = evaluate(
        result.model.eval(), val, cfg.model.num_classes, cfg.eval, device=device, progress=cfg.train.progress
    )
    payload = metrics_payload(outcome.matrix, list(val.class_names), cfg, outcome.num_images, str(model_path))
    payload.update(extra or {})
    atomic_write(run_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    return payload


def prepare_teacher(cfg: Config, run_dir: Path, resume: bool) -> tuple[Any, Any]:
    """Steps 1-5: validated inputs for the loop and the distributed context (datasets fail fast)."""
    from clda_deploy.checkpoint import build_for_training
    from clda_deploy.inference import resolve_device
    from clda_deploy.uda.daformer import build_teacher_task
    from training.distributed import device_for, init_distributed
    from training.loop import CHECKPOINT, LoopInputs
    from training.state import load_checkpoint, seed_everything

    if resume:
        check_resumable(load_checkpoint(run_dir / CHECKPOINT)["config"], cfg, run_dir / CHECKPOINT)
    needs_target = cfg.uda.mode in ("daformer", "oracle")
    datasets = build_datasets(cfg, needs_target, target_labels=cfg.uda.mode == "oracle")
    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    device = device_for(device, dist)
    seed_everything(cfg.train.seed)
    model = build_for_training(cfg, resume).to(device)
    task = build_teacher_task(cfg, model, seed=cfg.train.seed + dist.rank)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    streams = stream_factories(cfg, datasets, task.domains, dist)
    return LoopInputs(cfg, model, task, streams, datasets["val"], run_dir, device, dist), datasets["val"]


def train_teacher(cfg: Config, run_dir: Path, resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train, then write ``model.safetensors`` and ``metrics.json`` on rank 0: (loop result, metrics)."""
    from training.distributed import shutdown
    from training.loop import Trainer

    inputs, val = prepare_teacher(cfg, run_dir, resume)
    try:
        result = Trainer(inputs).run(resume=resume)
        if result.interrupted:
            raise KeyboardInterrupt
        payload: dict[str, Any] = {}
        if inputs.dist.is_main:
            payload = write_outputs(cfg, run_dir, result, val, "teacher", inputs.device)
        return result, payload
    finally:
        shutdown(inputs.dist)


def run_teacher(config_path: str | None, overrides: list[str], out: str | None, resume: bool) -> dict[str, Any]:
    """The ``teacher`` command."""
    from clda_deploy.data import check_roots

    cfg = load_config(config_path, overrides)
    needed = {"data.val": cfg.data.val}
    if cfg.uda.mode != "oracle":
        needed["data.source"] = cfg.data.source
    if cfg.uda.mode != "source_only":
        needed["data.target"] = cfg.data.target
    check_roots(needed)
    if cfg.model.init is not None:
        from clda_deploy.checkpoint import check_init

        check_init(cfg.model.init, cfg)
    run_dir = Path(out or DEFAULT_OUT)
    result, payload = train_teacher(cfg, run_dir, resume)
    if payload:
        print(f"teacher ({cfg.uda.mode}) target-val mIoU: {payload['miou']:.2f} -> {run_dir / 'model.safetensors'}")
    return payload
