"""The parity gate (DESIGN §8): exported files must segment the target-val set like PyTorch does.

Every backend and the PyTorch reference see the same batches from the checkpoint's own
``data.val`` (shared preprocessing) and the same inference as ``python -m training eval``
(``clda_deploy.inference.predict_logits`` in ``eval.mode``, logits resized to each label's native
size, the same class subset for mIoU). Per backend: mIoU, ΔmIoU (points), pixel agreement with
PyTorch's labels (percent of label pixels, ignore pixels included), max |logit difference| (at model
resolution) and per-class IoU deltas.

Gate (``Tolerances``): |ΔmIoU| <= 0.1 and agreement >= 99.9 % for fp32 files; |ΔmIoU| <= 0.5 for
fp16 and bf16 (labels may legitimately flip on near-ties, so agreement is reported, not gated);
|ΔmIoU| <= 1.0 for INT8, and no class may lose more than 3 IoU points (quantization error
concentrates on a few classes, which a mean hides). Every runnable variant of every file is gated:
OpenVINO runs the same ``.onnx`` files as ONNX Runtime, and the torch bf16 autocast baseline runs
the checkpoint itself, so each is its own entry.

Which failures fail the export: a written file failing under its own kind (``student.int8.onnx`` in
ONNX Runtime) is a broken file, and the exit status says so. Another way to run a file failing
(OpenVINO's Q/DQ reading of that same file, torch bf16 of the checkpoint) says the file is fine and
that runtime is not: the entry records ``passed: false`` and the service does not serve it.

When the gate fails, the files exported before it stay on disk: they are complete, valid files
(written atomically) and the parity.json beside them says why they failed, which is what one needs
to debug them; the non-zero exit status (3) is what stops a pipeline from shipping them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clda_deploy.checkpoint import load_segmenter
from clda_deploy.config import Config
from clda_deploy.evaluation import (
    Tally,
    eval_config_for,
    evaluate_predictors,
    reported_classes,
    val_dataset,
)
from clda_deploy.inference import resolve_device
from clda_deploy.metrics import iou_per_class, mean_iou
from clda_deploy.reporting import Target
from clda_deploy.runtime import as_logits_fn, load_predictor
from export import ExportError, write_atomic

log = logging.getLogger("export")

MAX_DELTA_MIOU = {"fp32": 0.1, "fp16": 0.5, "bf16": 0.5, "int8": 1.0}  # mIoU points
MIN_AGREEMENT = {"fp32": 99.9, "fp16": None, "bf16": None, "int8": None}  # percent of pixels equal to PyTorch's
MAX_CLASS_DROP = {"fp32": None, "fp16": None, "bf16": None, "int8": 3.0}  # IoU points any one class may lose


@dataclass(frozen=True)
class Tolerances:
    """The gate's thresholds per precision; ``python -m export --int8-tolerance`` and
    ``--int8-max-class-drop`` change the INT8 ones."""

    max_delta_miou: tuple[tuple[str, float], ...] = tuple(MAX_DELTA_MIOU.items())
    min_agreement: tuple[tuple[str, float | None], ...] = tuple(MIN_AGREEMENT.items())
    max_class_drop: tuple[tuple[str, float | None], ...] = tuple(MAX_CLASS_DROP.items())

    @classmethod
    def with_int8(cls, delta_miou: float | None = None, class_drop: float | None = None) -> Tolerances:
        """The defaults, with the INT8 thresholds given (None keeps a default)."""
        for flag, value in (("--int8-tolerance", delta_miou), ("--int8-max-class-drop", class_drop)):
            if value is not None and not value >= 0:
                raise ExportError(f"{flag} must be >= 0 (IoU points), got {value}")
        deltas = {**MAX_DELTA_MIOU, "int8": MAX_DELTA_MIOU["int8"] if delta_miou is None else delta_miou}
        drops = {**MAX_CLASS_DROP, "int8": MAX_CLASS_DROP["int8"] if class_drop is None else class_drop}
        return cls(tuple(deltas.items()), tuple(MIN_AGREEMENT.items()), tuple(drops.items()))

    def of(self, precision: str) -> dict[str, float | None]:
        """``{"max_abs_delta_miou", "min_pixel_agreement", "max_class_drop"}`` for ``precision``."""
        return {
            "max_abs_delta_miou": dict(self.max_delta_miou)[precision],
            "min_pixel_agreement": dict(self.min_agreement)[precision],
            "max_class_drop": dict(self.max_class_drop)[precision],
        }


def parity_targets(
    delta_miou: float, agreement: float, precision: str, class_drop: float = 0.0, tolerances: Tolerances | None = None
) -> list[Target]:
    """The gate of one variant: |ΔmIoU|; for fp32 pixel agreement; for INT8 the worst class's drop."""
    limits = (tolerances or Tolerances()).of(precision)
    targets = [Target("|ΔmIoU|", abs(delta_miou), limits["max_abs_delta_miou"], "<=", gate=True, unit=" points")]
    if limits["min_pixel_agreement"] is not None:
        targets.append(Target("pixel agreement", agreement, limits["min_pixel_agreement"], ">=", gate=True, unit=" %"))
    if limits["max_class_drop"] is not None:
        drop = Target("worst class drop", class_drop, limits["max_class_drop"], "<=", gate=True, unit=" points")
        targets.append(drop)
    return targets


def backend_report(
    tally: Tally,
    reference: Tally,
    precision: str,
    class_names: list[str],
    subset: list[int] | None,
    tolerances: Tolerances | None = None,
) -> dict[str, Any]:
    """One ``parity.json`` backend entry: the DESIGN §3 keys, the thresholds, per-class deltas."""
    miou, ref_miou = mean_iou(tally.meter.matrix, subset), mean_iou(reference.meter.matrix, subset)
    delta = miou - ref_miou
    agreement = tally.agreement
    ious, ref_ious = iou_per_class(tally.meter.matrix), iou_per_class(reference.meter.matrix)
    per_class = {
        name: None if ious[c] is None or ref_ious[c] is None else 100.0 * (ious[c] - ref_ious[c])
        for c, name in enumerate(class_names)
    }
    reported = [class_names[c] for c in (subset if subset is not None else range(len(class_names)))]
    class_drop = max([0.0] + [-per_class[name] for name in reported if per_class[name] is not None])
    targets = parity_targets(delta, agreement, precision, class_drop, tolerances)
    return {
        "miou": miou,
        "delta_miou": delta,
        "pixel_agreement": agreement,
        "max_abs_logit_diff": tally.max_logit_diff,
        "passed": all(target.met for target in targets),
        "precision": precision,
        "worst_class_drop": class_drop,
        "threshold": (tolerances or Tolerances()).of(precision),
        "per_class_delta": per_class,
    }


def format_parity(payload: dict[str, Any]) -> str:
    """A fixed-width table of ``parity.json`` for the terminal."""
    lines = [
        f"{'backend':<22} {'mIoU':>7} {'ΔmIoU':>8} {'agree %':>9} {'max|Δlogit|':>12}  result",
        f"{'torch (reference)':<22} {payload['reference']['miou']:7.2f}",
    ]
    for name, entry in payload["backends"].items():
        verdict = "pass" if entry["passed"] else "FAIL"
        used = entry.get("precision_used")
        lines.append(
            f"{name:<22} {entry['miou']:7.2f} {entry['delta_miou']:+8.3f} {entry['pixel_agreement']:9.3f} "
            f"{entry['max_abs_logit_diff']:12.2e}  {verdict}" + (f"  (runs {used})" if used else "")
        )
        worst = sorted(
            ((abs(v), k, v) for k, v in entry["per_class_delta"].items() if v is not None and abs(v) >= 0.05),
            reverse=True,
        )[:3]
        if worst:
            lines.append(" " * 23 + "largest class deltas: " + ", ".join(f"{k} {v:+.2f}" for _, k, v in worst))
    return "\n".join(lines)


def parity_payload(
    reference: Tally,
    tallies: dict[str, Tally],
    precisions: dict[str, str],
    class_names: list[str],
    subset: list[int] | None,
    extra: dict[str, Any],
    tolerances: Tolerances | None = None,
) -> dict[str, Any]:
    """``{"reference": {"miou", ...}, "backends": {name: {...}}}`` (DESIGN §3)."""
    ref_iou = [None if v is None else 100.0 * v for v in iou_per_class(reference.meter.matrix)]
    return {
        "reference": {
            "backend": "torch",
            "miou": mean_iou(reference.meter.matrix, subset),
            "per_class_iou": dict(zip(class_names, ref_iou, strict=True)),
            **extra,
        },
        "backends": {
            name: backend_report(tally, reference, precisions[name], class_names, subset, tolerances)
            for name, tally in tallies.items()
        },
    }


def all_passed(payload: dict[str, Any], variants: set[str] | None = None) -> bool:
    """Every entry passed (or every one of ``variants``)."""
    entries = payload["backends"]
    return all(entry["passed"] for name, entry in entries.items() if variants is None or name in variants)


def parity_dataset(
    checkpoint: str | Path, config_path: str | None, overrides: list[str], max_images: int | None
) -> tuple[Any, Config]:
    """The target-val set of the checkpoint's config (then ``-c``, then ``--set``); built before any
    export so that a missing dataset fails in seconds, not after the export."""
    cfg = eval_config_for(checkpoint, config_path, overrides, max_images)
    dataset = val_dataset(cfg)
    if len(dataset) == 0:
        raise ExportError(f"data.val ({cfg.data.val.root}, split {cfg.data.val.split}) has no images")
    return dataset, cfg


def run_parity(
    checkpoint: str | Path,
    files: dict[str, tuple[Path, str]],
    dataset: Any,
    cfg: Config,
    out_dir: str | Path,
    device: str = "auto",
    progress: bool = True,
    model_name: str = "model",
    tolerances: Tolerances | None = None,
    details: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compare PyTorch with every ``files[variant] = (path, precision)``; write the parity files.

    ``variant`` is an artifact-kind variant of the file (``openvino-bf16`` of ``student.onnx``);
    ``details[variant]`` adds keys to that entry (e.g. the INT8 calibration). Returns the DESIGN §3
    record ``{"reference", "backends"}`` of this model (see ``write_parity``).
    """
    torch_device = resolve_device(device)
    reference = load_segmenter(checkpoint, device=torch_device)
    predictors = {name: load_predictor(path, backend=name, device=device) for name, (path, _) in files.items()}
    log.info(
        "parity on %d images of %s (%s mode): %s", len(dataset), cfg.data.val.root, cfg.eval.mode, ", ".join(files)
    )
    scored = {"torch": reference, **{name: as_logits_fn(predictor) for name, predictor in predictors.items()}}
    try:
        tallies = evaluate_predictors(
            scored, dataset, cfg.model.num_classes, cfg.eval, torch_device, progress=progress, reference="torch"
        )
        used = {name: str(getattr(predictor, "precision_used", "")) for name, predictor in predictors.items()}
    finally:
        for predictor in predictors.values():
            predictor.close()
    ref = tallies.pop("torch")
    class_names = list(dataset.class_names)
    subset = reported_classes(cfg, class_names)
    extra = {
        "checkpoint": str(checkpoint),
        "num_images": ref.images,
        "dataset": f"{cfg.data.val.format}:{cfg.data.val.root}:{cfg.data.val.split}",
        "eval_mode": cfg.eval.mode,
    }
    precisions = {name: precision for name, (_, precision) in files.items()}
    payload = parity_payload(ref, tallies, precisions, class_names, subset, extra, tolerances)
    for name, entry in payload["backends"].items():
        entry["file"] = str(files[name][0])
        entry["precision_used"] = used.get(name, precisions[name])
        entry.update((details or {}).get(name, {}))
    write_parity(Path(out_dir), model_name, payload)
    return payload


def write_parity(out_dir: Path, model_name: str, payload: dict[str, Any]) -> None:
    """Write ``<name>.parity.json`` (this model's DESIGN §3 record) and merge it into ``parity.json``.

    One export folder holds several models (``make export`` puts student and teacher side by side,
    which is what the server loads), so ``parity.json`` maps each model name to its record instead of
    holding one record: a second export must not erase the first one's evidence.
    """
    write_atomic(out_dir / f"{model_name}.parity.json", lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))
    index_path = out_dir / "parity.json"
    index: dict[str, Any] = {}
    if index_path.is_file():
        try:
            loaded = json.loads(index_path.read_text())
            index = loaded if isinstance(loaded, dict) and "reference" not in loaded else {}
        except (OSError, json.JSONDecodeError):
            log.warning("%s is unreadable; starting it anew", index_path)
    index[model_name] = payload
    write_atomic(index_path, lambda tmp: tmp.write_text(json.dumps(index, indent=2, sort_keys=True)))
