"""The run setup every training command shares: the run folder, typed config overrides, the resume
check, device and distributed context, the datasets and their data streams, the loop, and the outputs.

The teacher and the student command (and the studies that drive them) import these from here, so each
step is spelled once; the commands keep only what is theirs (the teacher's task, the student's teacher
file, saliency subsets and CLDA task).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clda_deploy.artifacts import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE, RunLayout
from clda_deploy.config import Config, ConfigError, config_to_dict, save_config

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


def run_dir_for(out: str | Path | None, role: str) -> Path:
    """``--out`` when given, else ``runs/default/<role>`` (DESIGN §3)."""
    return Path(out) if out else RunLayout().run_dir(role)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
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


def check_resumable(cfg: Config, run_dir: Path) -> None:
    """A resumed run must train the same thing as the one in ``run_dir``; name every key that differs."""
    from training.state import load_checkpoint

    path = run_dir / CHECKPOINT_FILE
    details = config_differences(load_checkpoint(path)["config"], cfg, RESUMABLE_CHANGES)
    if details:
        raise ConfigError(
            f"--resume: the config differs from the one in {path} ({details}); "
            "resume with the original config or start a new --out"
        )


def start_devices(cfg: Config) -> tuple[Any, Any]:
    """(this process's torch device, its ``DistInfo``): ``train.device`` resolved, the process group
    joined under torchrun, one GPU per process."""
    from clda_deploy.inference import resolve_device
    from training.distributed import device_for, init_distributed

    device = resolve_device(cfg.train.device)
    dist = init_distributed(device)
    return device_for(device, dist), dist


def save_run_config(cfg: Config, run_dir: Path, dist: Any) -> None:
    """Rank 0 writes the resolved config to ``<run>/config.yaml`` (DESIGN §4)."""
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)


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


def run_loop(inputs: Any, resume: bool) -> Any:
    """The one loop to its end (``LoopResult``); a Ctrl-C that the loop checkpointed is re-raised, so no
    outputs are written for an unfinished run."""
    from training.loop import Trainer

    result = Trainer(inputs).run(resume=resume)
    if result.interrupted:
        raise KeyboardInterrupt
    return result


def write_outputs(
    cfg: Config, run_dir: Path, result: Any, val: Any, role: str, device: Any, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``model.safetensors`` (config inside) and ``metrics.json`` on target-val (plus ``extra`` keys)."""
    from clda_deploy.checkpoint import atomic_write, save_model
    from clda_deploy.evaluation import evaluate
    from training.evaluate import metrics_payload

    model_path = save_model(
        run_dir / MODEL_FILE,
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
    atomic_write(run_dir / METRICS_FILE, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    return payload
