"""Segmentation metrics from an accumulated confusion matrix.

IoU_c = TP_c / (TP_c + FP_c + FN_c). A class that appears neither in the labels nor in the
predictions has an undefined IoU: it is reported as ``None`` and left out of the mean (the
Cityscapes benchmark and mmseg do the same; reporting 0 would punish a model for a class the
evaluation set does not contain, NaN would poison JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clda_deploy.data.labels import IGNORE_INDEX


def confusion_matrix(
    prediction: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """``[K, K]`` int64 matrix, rows = ground truth, columns = prediction.

    ``prediction`` and ``label`` hold class indices of the same shape (any number of dims).
    Pixels labelled ``ignore_index`` are skipped; a label outside 0..K-1 (other than the ignore
    index) or a prediction outside 0..K-1 is a programming error and raises.
    """
    prediction = torch.as_tensor(prediction).reshape(-1).long()
    label = torch.as_tensor(label).reshape(-1).long()
    if prediction.shape != label.shape:
        raise ValueError(f"prediction has {prediction.numel()} pixels but label has {label.numel()}")
    keep = label != ignore_index
    prediction, label = prediction[keep], label[keep]
    if label.numel() and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(f"label values must be in 0..{num_classes - 1} or {ignore_index}")
    if prediction.numel() and (prediction.min() < 0 or prediction.max() >= num_classes):
        raise ValueError(f"prediction values must be in 0..{num_classes - 1}")
    counts = torch.bincount(label * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


class ConfusionMeter:
    """Accumulates a confusion matrix over batches."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> None:
        self.matrix += confusion_matrix(prediction, label, self.num_classes, self.ignore_index)


def iou_per_class(matrix: np.ndarray) -> list[float | None]:
    """IoU of every class in 0..1; ``None`` where the class is in neither labels nor predictions."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    return [None if u == 0 else float(tp / u) for tp, u in zip(true_positive, union, strict=True)]


def mean_iou(matrix: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """mIoU in percent (0..100) over ``classes`` (default all), skipping undefined IoUs."""
    ious = iou_per_class(matrix)
    selected = range(len(ious)) if classes is None else classes
    defined = [ious[c] for c in selected if ious[c] is not None]
    return 100.0 * float(np.mean(defined)) if defined else 0.0


def summarize(matrix: np.ndarray, class_names: Sequence[str], classes: Sequence[int] | None = None) -> dict[str, Any]:
    """``{"miou": 0..100, "per_class_iou": {name: 0..100 | None}}`` over ``classes`` (default all)."""
    ious = iou_per_class(matrix)
    selected = list(range(len(ious))) if classes is None else list(classes)
    per_class = {class_names[c]: None if ious[c] is None else 100.0 * ious[c] for c in selected}
    return {"miou": mean_iou(matrix, selected), "per_class_iou": per_class}


def format_table(per_class_iou: dict[str, float | None], miou: float) -> str:
    """A fixed-width per-class table for terminals and logs."""
    width = max(len(name) for name in per_class_iou) if per_class_iou else 5
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in per_class_iou.items():
        lines.append(f"{name:<{width}}  {'  n/a' if iou is None else f'{iou:5.1f}'}")
    lines.append(f"{'mIoU':<{width}}  {miou:5.2f}")
    return "\n".join(lines)
