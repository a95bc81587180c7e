"""The parity gate (DESIGN §8): exported files must segment the target-val set like PyTorch does.

Every backend and the PyTorch reference see the same batches from the checkpoint's own
``data.val`` (shared preprocessing) and the same inference as ``python -m training eval``
(``clda_deploy.inference.predict_logits`` in ``eval.mode``, logits resized to each label's native
size, the same class subset for mIoU). Per backend: mIoU, ΔmIoU (points), pixel agreement with
PyTorch's labels (percent of label pixels, ignore pixels included), max |logit difference| (at model
resolution) and per-class IoU deltas.

Gate: |ΔmIoU| <= 0.1 and agreement >= 99.9 % for fp32 files; |ΔmIoU| <= 0.5 for fp16 files (fp16
labels may legitimately flip on near-ties, so agreement is reported, not gated).

When the gate fails, the files exported before it stay on disk: they are complete, valid files
(written atomically) and the parity.json beside them says why they failed, which is what one needs
to debug them; the non-zero exit status (3) is what stops a pipeline from shipping them.
"""

from __future__ import annotations

import json
import logging
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

MAX_DELTA_MIOU = {"fp32": 0.1, "fp16": 0.5}  # mIoU points
MIN_AGREEMENT = {"fp32": 99.9, "fp16": None}  # percent of pixels equal to PyTorch's labels


def parity_targets(delta_miou: float, agreement: float, precision: str) -> list[Target]:
    """The gate of one exported file: |ΔmIoU| and, for fp32, pixel agreement with PyTorch."""
    targets = [Target("|ΔmIoU|", abs(delta_miou), MAX_DELTA_MIOU[precision], "<=", gate=True, unit=" points")]
    if MIN_AGREEMENT[precision] is not None:
        targets.append(Target("pixel agreement", agreement, MIN_AGREEMENT[precision], ">=", gate=True, unit=" %"))
    return targets


def backend_report(
    tally: Tally, reference: Tally, precision: str, class_names: list[str], subset: list[int] | None
) -> dict[str, Any]:
    """One ``parity.json`` backend entry: the DESIGN §3 keys, the thresholds, per-class deltas."""
    miou, ref_miou = mean_iou(tally.meter.matrix, subset), mean_iou(reference.meter.matrix, subset)
    delta = miou - ref_miou
    agreement = tally.agreement
    max_delta, min_agreement = MAX_DELTA_MIOU[precision], MIN_AGREEMENT[precision]
    passed = all(target.met for target in parity_targets(delta, agreement, precision))
    ious, ref_ious = iou_per_class(tally.meter.matrix), iou_per_class(reference.meter.matrix)
    per_class = {
        name: None if ious[c] is None or ref_ious[c] is None else 100.0 * (ious[c] - ref_ious[c])
        for c, name in enumerate(class_names)
    }
    return {
        "miou": miou,
        "delta_miou": delta,
        "pixel_agreement": agreement,
        "max_abs_logit_diff": tally.max_logit_diff,
        "passed": bool(passed),
        "precision": precision,
        "threshold": {"max_abs_delta_miou": max_delta, "min_pixel_agreement": min_agreement},
        "per_class_delta": per_class,
    }


def format_parity(payload: dict[str, Any]) -> str:
    """A fixed-width table of ``parity.json`` for the terminal."""
    lines = [
        f"{'backend':<16} {'mIoU':>7} {'ΔmIoU':>8} {'agree %':>9} {'max|Δlogit|':>12}  result",
        f"{'torch (reference)':<16} {payload['reference']['miou']:7.2f}",
    ]
    for name, entry in payload["backends"].items():
        verdict = "pass" if entry["passed"] else "FAIL"
        lines.append(
            f"{name:<16} {entry['miou']:7.2f} {entry['delta_miou']:+8.3f} {entry['pixel_agreement']:9.3f} "
            f"{entry['max_abs_logit_diff']:12.2e}  {verdict}"
        )
        worst = sorted(
            ((abs(v), k, v) for k, v in entry["per_class_delta"].items() if v is not None and abs(v) >= 0.05),
            reverse=True,
        )[:3]
        if worst:
            lines.append(" " * 17 + "largest class deltas: " + ", ".join(f"{k} {v:+.2f}" for _, k, v in worst))
    return "\n".join(lines)


def parity_payload(
    reference: Tally,
    tallies: dict[str, Tally],
    precisions: dict[str, str],
    class_names: list[str],
    subset: list[int] | None,
    extra: dict[str, Any],
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
            name: backend_report(tally, reference, precisions[name], class_names, subset)
            for name, tally in tallies.items()
        },
    }


def all_passed(payload: dict[str, Any]) -> bool:
    return all(entry["passed"] for entry in payload["backends"].values())


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
) -> dict[str, Any]:
    """Compare PyTorch with every ``files[name] = (path, precision)``; write the parity files.

    Returns the DESIGN §3 record ``{"reference", "backends"}`` of this model (see ``write_parity``).
    """
    torch_device = resolve_device(device)
    reference = load_segmenter(checkpoint, device=torch_device)
    predictors = {name: load_predictor(path, device=device) for name, (path, _) in files.items()}
    log.info(
        "parity on %d images of %s (%s mode): %s", len(dataset), cfg.data.val.root, cfg.eval.mode, ", ".join(files)
    )
    scored = {"torch": reference, **{name: as_logits_fn(predictor) for name, predictor in predictors.items()}}
    try:
        tallies = evaluate_predictors(
            scored, dataset, cfg.model.num_classes, cfg.eval, torch_device, progress=progress, reference="torch"
        )
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
    payload = parity_payload(ref, tallies, precisions, class_names, subset, extra)
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
