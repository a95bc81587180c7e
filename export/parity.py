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

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clda_deploy.checkpoint import load_segmenter, read_config
from clda_deploy.config import Config, EvalConfig, config_to_dict, load_config
from clda_deploy.data.labels import EVAL_SUBSETS, NUM_CLASSES
from clda_deploy.evaluation import iterate_batches
from clda_deploy.inference import predict_logits, resize_logits, resolve_device
from clda_deploy.metrics import ConfusionMeter, iou_per_class, mean_iou
from clda_deploy.runtime import Predictor, load_predictor
from export import ExportError, write_atomic

log = logging.getLogger("export")

MAX_DELTA_MIOU = {"fp32": 0.1, "fp16": 0.5}  # mIoU points
MIN_AGREEMENT = {"fp32": 99.9, "fp16": None}  # percent of pixels equal to PyTorch's labels


@dataclass
class Tally:
    """Running totals of one backend over the evaluation set."""

    meter: ConfusionMeter
    agree: int = 0
    pixels: int = 0
    max_logit_diff: float = 0.0
    images: int = 0
    labels: list[torch.Tensor] = field(default_factory=list)  # this batch's predictions (native size)


def logits_of(predictor: Predictor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Adapt a runtime predictor to ``clda_deploy.inference``: ``[B,3,H,W]`` -> logits ``[B,K,H,W]``."""

    def predict(images: torch.Tensor) -> torch.Tensor:
        result = predictor.predict(images.detach().cpu().numpy(), want_logits=True)
        return torch.from_numpy(result.logits)

    return predict


def _score(tally: Tally, logits: torch.Tensor, labels: list[torch.Tensor], reference: Tally | None) -> None:
    """Resize to each label's size, argmax, update the confusion matrix and agreement counts."""
    tally.labels = []
    for index, label in enumerate(labels):
        prediction = resize_logits(logits[index : index + 1], tuple(label.shape[-2:])).argmax(dim=1)[0].cpu()
        tally.meter.update(prediction, label)
        tally.labels.append(prediction)
        if reference is not None:
            tally.agree += int((prediction == reference.labels[index]).sum())
            tally.pixels += prediction.numel()


def compare(
    reference: Callable[[torch.Tensor], torch.Tensor],
    predictors: dict[str, Predictor],
    dataset: Any,
    num_classes: int,
    eval_config: EvalConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[Tally, dict[str, Tally]]:
    """Run the reference and every predictor over ``dataset``; return their tallies."""
    ref = Tally(ConfusionMeter(num_classes))
    tallies = {name: Tally(ConfusionMeter(num_classes)) for name in predictors}
    total = len(dataset) if eval_config.max_images is None else min(eval_config.max_images, len(dataset))
    mode = (eval_config.mode, eval_config.crop, eval_config.stride)
    with tqdm(total=total, desc="parity", unit="img", disable=not progress, leave=False) as bar:
        for batch in iterate_batches(dataset, eval_config.batch_size, 0, eval_config.max_images):
            images = batch["image"].to(device)
            with torch.no_grad():
                ref_logits = predict_logits(reference, images, *mode).cpu()
            _score(ref, ref_logits, batch["label"], None)
            ref.images += len(batch["label"])
            for name, predictor in predictors.items():
                logits = predict_logits(logits_of(predictor), images, *mode).cpu()
                diff = float((logits - ref_logits).abs().max())
                tallies[name].max_logit_diff = max(tallies[name].max_logit_diff, diff)
                _score(tallies[name], logits, batch["label"], ref)
            bar.update(len(batch["label"]))
    return ref, tallies


def backend_report(
    tally: Tally, reference: Tally, precision: str, class_names: list[str], subset: list[int] | None
) -> dict[str, Any]:
    """One ``parity.json`` backend entry: the DESIGN §3 keys, the thresholds, per-class deltas."""
    miou, ref_miou = mean_iou(tally.meter.matrix, subset), mean_iou(reference.meter.matrix, subset)
    delta = miou - ref_miou
    agreement = 100.0 * tally.agree / max(tally.pixels, 1)
    max_delta, min_agreement = MAX_DELTA_MIOU[precision], MIN_AGREEMENT[precision]
    passed = abs(delta) <= max_delta and (min_agreement is None or agreement >= min_agreement)
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
    from clda_deploy.data import build_dataset, check_roots

    cfg = load_config(config_path, overrides, base=config_to_dict(read_config(checkpoint)))
    if max_images is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_images=max_images))
    check_roots({"data.val": cfg.data.val})
    dataset = build_dataset(cfg.data.val, train=False)
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
    try:
        ref, tallies = compare(reference, predictors, dataset, cfg.model.num_classes, cfg.eval, torch_device, progress)
    finally:
        for predictor in predictors.values():
            predictor.close()
    class_names = list(dataset.class_names)
    subset = list(EVAL_SUBSETS[cfg.eval.num_classes_reported]) if len(class_names) == NUM_CLASSES else None
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
