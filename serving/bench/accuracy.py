"""``python -m serving.bench accuracy``: student vs teacher mIoU through the deployment runtimes,
with each model's latency from the same run, so the accuracy/latency trade-off is one table.

Scoring is the project's own (``clda_deploy.evaluation.evaluate_predictors``, the one the export
parity gate uses: shared preprocessing, logits rescaled to each label's native size), so numbers
match ``python -m training eval`` for PyTorch and show what export changed for ONNX Runtime. The
dataset is the checkpoint config's ``data.val`` (target-val) unless ``-c``/``--set`` say otherwise.
Files are evaluated one after the other, each loaded only while it runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clda_deploy.artifacts import variants
from clda_deploy.profiling import predictor_details, time_predictor
from clda_deploy.reporting import Bars, grouped_bars, machine_line, markdown_table
from clda_deploy.statistics import ratio, summarize_timings
from serving.bench.common import BenchError, BenchRun, Skipped, describe, option, recorded_settings, size_label
from serving.bench.models import ModelSettings, open_predictor
from serving.model_files import ModelFile


@dataclass(frozen=True)
class AccuracySettings(ModelSettings):
    backends: tuple[str, ...] = option(
        "--backends", help=f"among {', '.join(dict.fromkeys(variants()))}", default=["torch", "onnxruntime"],
        nargs="+", metavar="B", recorded=False,
    )  # fmt: skip
    config: str | None = option("-c", "--config", help="YAML config applied over the checkpoint's", default=None)
    overrides: tuple[str, ...] = option("--set", help="config overrides", default=[], nargs="+", action="extend",
                                        metavar="KEY=VALUE")  # fmt: skip
    max_images: int | None = option("--max-images", help="evaluate the first N images only", default=None, type=int,
                                    positive=True)  # fmt: skip
    warmup: int = option("--warmup", help="untimed calls before the latency (default 2)", default=2, type=int)
    iters: int = option("--iters", help="timed calls for the latency (default 10)", default=10, type=int,
                        positive=True)  # fmt: skip


@dataclass(frozen=True)
class AccuracyRow:
    """mIoU, per-class IoU and batch-1 latency of one model file."""

    model: str
    backend: str
    path: str
    runtime: str
    device: str
    providers: list[str]
    precision_used: str
    miou: float
    per_class_iou: dict[str, float | None]
    num_images: int
    size: tuple[int, int]
    latency_ms: dict[str, float | int]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "size": list(self.size)}


@dataclass(frozen=True)
class AccuracyResult:
    settings: AccuracySettings
    dataset: dict[str, Any]  # format, root, split, images, evaluated, eval_mode
    results: list[AccuracyRow]
    skipped: list[Skipped]
    stem: str = "accuracy"

    def pair(self, backend: str | None) -> tuple[AccuracyRow | None, AccuracyRow | None]:
        """Teacher and student results on ``backend``."""
        rows = {r.model: r for r in self.results if r.backend == backend}
        return rows.get(self.settings.teacher), rows.get(self.settings.student)

    def comparison(self) -> list[dict[str, Any]]:
        """Per backend: teacher and student mIoU, the student's mIoU change and its speedup."""
        rows = []
        for backend in dict.fromkeys(r.backend for r in self.results):
            teacher, student = self.pair(backend)
            if teacher is None or student is None:
                continue
            teacher_p50, student_p50 = teacher.latency_ms["p50"], student.latency_ms["p50"]
            rows.append({"backend": backend, "teacher_miou": teacher.miou, "student_miou": student.miou,
                         "delta_miou": student.miou - teacher.miou, "teacher_p50_ms": teacher_p50,
                         "student_p50_ms": student_p50, "speedup": ratio(teacher_p50, student_p50)})  # fmt: skip
        return rows

    @property
    def reference_backend(self) -> str | None:
        """The first backend both models ran on: the per-class table's."""
        return next((row["backend"] for row in self.comparison()), None)

    def targets(self) -> list:
        return []

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": recorded_settings(self.settings),
            "dataset": self.dataset,
            "results": [row.to_json() for row in self.results],
            "comparison": self.comparison(),
            "reference_backend": self.reference_backend,
            "skipped": [entry.to_json() for entry in self.skipped],
        }

    def markdown(self, run: BenchRun) -> str:
        return render_markdown(self, run)

    def plot(self, path: Path) -> Path:
        return render_plot(self, path)


def resolve_config(files: list[ModelFile], settings: AccuracySettings) -> Any:
    """The config of the student's (else any) ``model.safetensors``, then ``-c``, then ``--set``."""
    from clda_deploy.evaluation import eval_config_for

    checkpoints = sorted((f for f in files if f.backend == "torch"), key=lambda f: f.name != settings.student)
    if not checkpoints and settings.config is None:
        raise BenchError("accuracy needs a model.safetensors (its config names the dataset) or -c CONFIG")
    checkpoint = checkpoints[0].path if checkpoints else None
    return eval_config_for(checkpoint, settings.config, settings.overrides, settings.max_images)


def evaluate_file(item: ModelFile, dataset: Any, cfg: Any, settings: AccuracySettings) -> AccuracyRow:
    """mIoU and per-class IoU of one model file, then its latency at the dataset's image size."""
    from clda_deploy.evaluation import evaluate_predictors, reported_classes
    from clda_deploy.metrics import summarize as iou_summary
    from clda_deploy.runtime import as_logits_fn

    predictor = open_predictor(item, settings.device, settings.threads)
    try:
        (tally,) = evaluate_predictors(
            {item.name: as_logits_fn(predictor)}, dataset, cfg.model.num_classes, cfg.eval,
            progress=settings.progress,
        ).values()  # fmt: skip
        scores = iou_summary(tally.meter.matrix, list(dataset.class_names), reported_classes(cfg, dataset.class_names))
        image = dataset[0]["image"][None].numpy().astype(np.float32)
        times = time_predictor(predictor, image, settings.warmup, settings.iters)
        details = predictor_details(predictor)
    finally:
        predictor.close()
    return AccuracyRow(item.name, item.backend, str(item.path), **details, **scores, num_images=tally.images,
                       size=tuple(image.shape[-2:]), latency_ms=summarize_timings(times))  # fmt: skip


def run_accuracy(settings: AccuracySettings) -> AccuracyResult:
    """Steps: 1 files, config and dataset; 2 evaluate + time every file (one that cannot run is
    skipped with the reason)."""
    from clda_deploy.data.base import DatasetError
    from clda_deploy.evaluation import val_dataset
    from serving.bench.models import select_models

    files, missing = select_models(settings.run_dir, settings.model_specs, settings.backends)
    cfg = resolve_config(files, settings)
    try:
        dataset = val_dataset(cfg)
    except (FileNotFoundError, ValueError) as exc:
        raise BenchError(str(exc).splitlines()[0]) from None
    results, skipped = [], [Skipped(**entry) for entry in missing]
    for item in files:
        try:
            results.append(evaluate_file(item, dataset, cfg, settings))
        except DatasetError as exc:
            raise BenchError(f"dataset {cfg.data.val.root}: {exc}") from None
        except Exception as exc:  # a runtime that cannot load or run here
            skipped.append(Skipped(item.name, item.backend, describe(exc), path=str(item.path)))
    val = cfg.data.val
    evaluated = results[0].num_images if results else 0
    dataset_entry = {"format": val.format, "root": val.root, "split": val.split, "images": len(dataset),
                     "evaluated": evaluated, "eval_mode": cfg.eval.mode}  # fmt: skip
    return AccuracyResult(settings, dataset_entry, results, skipped)


def _tradeoff_table(result: AccuracyResult) -> str:
    teacher = result.settings.teacher
    by_key = {(r.model, r.backend): r for r in result.results}
    rows = []
    for r in result.results:
        base = by_key.get((teacher, r.backend)) if r.model != teacher else None  # the reference: no change
        delta = None if base is None else r.miou - base.miou
        speedup = None if base is None else base.latency_ms["p50"] / r.latency_ms["p50"]
        rows.append([r.model, r.backend, r.num_images, r.miou, delta, size_label(r.size), r.latency_ms["p50"],
                     r.latency_ms["p90"], speedup])  # fmt: skip
    headers = ["model", "backend", "images", "mIoU", "Δ mIoU vs teacher", "size", "p50 ms", "p90 ms",
               "speedup vs teacher"]  # fmt: skip
    return markdown_table(headers, rows)


def _per_class_table(result: AccuracyResult) -> str:
    teacher, student = result.pair(result.reference_backend)
    if teacher is None or student is None:
        return "(per-class table needs teacher and student on one backend)"
    rows = []
    for name, teacher_iou in teacher.per_class_iou.items():
        student_iou = student.per_class_iou.get(name)
        delta = None if teacher_iou is None or student_iou is None else student_iou - teacher_iou
        rows.append([name, teacher_iou, student_iou, delta])
    rows.append(["**mIoU**", teacher.miou, student.miou, student.miou - teacher.miou])
    return markdown_table(["class", "teacher IoU", "student IoU", "Δ"], rows, 1)


def render_markdown(result: AccuracyResult, run: BenchRun) -> str:
    dataset, settings = result.dataset, result.settings
    parts = [
        "## Accuracy and latency: student vs teacher",
        "",
        f"`{run.command}`  ",
        f"{machine_line(run.machine, settings.threads)}; device {settings.device}  ",
        f"{dataset['format']} {dataset['root']} ({dataset['split']}), {dataset['evaluated']} of {dataset['images']} "
        f"images, {dataset['eval_mode']} inference; latency = {settings.warmup} warm-up + {settings.iters} "
        "timed calls on the first image, batch 1",
        "",
        _tradeoff_table(result),
        "",
        f"Per-class IoU ({result.reference_backend or 'no common backend'}):",
        "",
        _per_class_table(result),
    ]
    if result.skipped:
        skipped = [[s.model, s.backend, s.reason] for s in result.skipped]
        parts += ["", "Skipped:", "", markdown_table(["model", "backend", "reason"], skipped)]
    return "\n".join(parts)


def render_plot(result: AccuracyResult, path: Path) -> Path:
    """Per-class IoU bars, teacher vs student, on the reference backend."""
    teacher, student = result.pair(result.reference_backend)
    classes = list((teacher or student).per_class_iou) if (teacher or student) else []
    series = {}
    for label, row in (("teacher", teacher), ("student", student)):
        if row is not None:
            series[f"{label} ({row.miou:.1f} mIoU)"] = [row.per_class_iou.get(c) for c in classes]
    title = f"Per-class IoU on {result.dataset['split']} ({result.reference_backend or '–'})"
    return grouped_bars(path, Bars(classes or ["(no results)"], series, "IoU (%)", title))
