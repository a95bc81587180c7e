"""``python -m serving.bench accuracy``: student vs teacher mIoU through the deployment runtimes,
with each model's latency from the same run, so the accuracy/latency trade-off is one table.

Scoring is the project's own (``clda_deploy.evaluation.evaluate`` with the shared preprocessing,
logits rescaled to each label's native size), so numbers match ``python -m training eval`` for
PyTorch and show what export changed for ONNX Runtime. The dataset is the checkpoint config's
``data.val`` (target-val) unless ``-c``/``--set`` say otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from serving.bench.common import BenchError, ModelFile, describe
from serving.bench.stats import ratio, summarize
from serving.bench.timing import open_predictor, predictor_details, time_predictor


@dataclass(frozen=True)
class AccuracySettings:
    config: str | None = None
    overrides: tuple[str, ...] = ()
    max_images: int | None = None
    warmup: int = 2
    iters: int = 10
    threads: int = 1
    device: str = "cpu"
    student: str = "student"
    teacher: str = "teacher"
    progress: bool = True


def resolve_config(files: list[ModelFile], settings: AccuracySettings) -> Any:
    """The config of the student's (else any) ``model.safetensors``, then ``-c``, then ``--set``."""
    from clda_deploy.checkpoint import read_config
    from clda_deploy.config import config_to_dict, load_config

    checkpoints = sorted((f for f in files if f.backend == "torch"), key=lambda f: f.name != settings.student)
    if not checkpoints and settings.config is None:
        raise BenchError("accuracy needs a model.safetensors (its config names the dataset) or -c CONFIG")
    base = config_to_dict(read_config(checkpoints[0].path)) if checkpoints else None
    cfg = load_config(settings.config, list(settings.overrides), base=base)
    if settings.max_images is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_images=settings.max_images))
    return cfg


def load_dataset(cfg: Any) -> Any:
    from clda_deploy.data import build_dataset, check_roots

    try:
        check_roots({"data.val": cfg.data.val})
        return build_dataset(cfg.data.val, train=False)
    except (FileNotFoundError, ValueError) as exc:
        raise BenchError(str(exc).splitlines()[0]) from None


def logits_function(predictor: Any) -> Callable[[Any], Any]:
    """A runtime predictor as the ``images -> logits`` callable ``evaluate`` expects (torch tensors)."""
    import torch

    def predict(images: torch.Tensor) -> torch.Tensor:
        logits = predictor.predict(images.cpu().numpy(), want_logits=True).logits
        return torch.from_numpy(logits)

    return predict


def class_subset(cfg: Any, class_names: tuple[str, ...]) -> tuple[int, ...] | None:
    """The classes mIoU is reported over (Synthia's 16/13-class protocols), None for all."""
    from clda_deploy.data.labels import EVAL_SUBSETS, NUM_CLASSES

    return EVAL_SUBSETS[cfg.eval.num_classes_reported] if len(class_names) == NUM_CLASSES else None


def evaluate_file(item: ModelFile, dataset: Any, cfg: Any, settings: AccuracySettings) -> dict[str, Any]:
    """mIoU and per-class IoU of one model file, then its latency at the dataset's image size."""
    from clda_deploy.evaluation import evaluate
    from clda_deploy.metrics import summarize as iou_summary

    predictor = open_predictor(item, settings.device, settings.threads)
    try:
        result = evaluate(
            logits_function(predictor),
            dataset,
            cfg.model.num_classes,
            cfg.eval,
            device="cpu",
            workers=0,
            progress=settings.progress,
        )
        scores = iou_summary(result.matrix, list(dataset.class_names), class_subset(cfg, dataset.class_names))
        image = dataset[0]["image"][None].numpy().astype(np.float32)
        times = time_predictor(predictor, image, settings.warmup, settings.iters)
        details = predictor_details(predictor)
    finally:
        predictor.close()
    return {
        "model": item.name,
        "backend": item.backend,
        "path": str(item.path),
        **details,
        **scores,
        "num_images": result.num_images,
        "size": list(image.shape[-2:]),
        "latency_ms": summarize(times),
    }


def compare(results: list[dict[str, Any]], settings: AccuracySettings) -> list[dict[str, Any]]:
    """Per backend: teacher and student mIoU, the student's mIoU change and its speedup."""
    rows = []
    for backend in dict.fromkeys(r["backend"] for r in results):
        pair = {r["model"]: r for r in results if r["backend"] == backend}
        teacher, student = pair.get(settings.teacher), pair.get(settings.student)
        if teacher is None or student is None:
            continue
        rows.append(
            {
                "backend": backend,
                "teacher_miou": teacher["miou"],
                "student_miou": student["miou"],
                "delta_miou": student["miou"] - teacher["miou"],
                "teacher_p50_ms": teacher["latency_ms"]["p50"],
                "student_p50_ms": student["latency_ms"]["p50"],
                "speedup": ratio(teacher["latency_ms"]["p50"], student["latency_ms"]["p50"]),
            }
        )
    return rows


def run_accuracy(files: list[ModelFile], missing: list[dict], settings: AccuracySettings) -> dict[str, Any]:
    """Steps: 1 config and dataset; 2 evaluate + time every file (one that cannot run is skipped
    with the reason); 3 teacher-vs-student rows per backend."""
    from clda_deploy.data.base import DatasetError

    cfg = resolve_config(files, settings)
    dataset = load_dataset(cfg)
    results, skipped = [], [dict(entry) for entry in missing]
    for item in files:
        try:
            results.append(evaluate_file(item, dataset, cfg, settings))
        except DatasetError as exc:
            raise BenchError(f"dataset {cfg.data.val.root}: {exc}") from None
        except Exception as exc:  # a runtime that cannot load or run here
            skipped.append(
                {"model": item.name, "backend": item.backend, "path": str(item.path), "reason": describe(exc)}
            )
    val = cfg.data.val
    reference = next((row["backend"] for row in compare(results, settings)), None)
    return {
        "settings": {**asdict(settings), "overrides": list(settings.overrides)},
        "dataset": {
            "format": val.format,
            "root": val.root,
            "split": val.split,
            "images": len(dataset),
            "evaluated": results[0]["num_images"] if results else 0,
            "eval_mode": cfg.eval.mode,
        },
        "results": results,
        "comparison": compare(results, settings),
        "reference_backend": reference,
        "skipped": skipped,
    }
