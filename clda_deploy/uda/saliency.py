"""Layer Saliency Rate (paper Eq. 2) of a model, the rule that marks a block non-salient, and the
seeded pick of the non-salient blocks that CLDA's S->T update (Eq. 8) may change.

Eq. 2 is ``LSR_i = |R(f) - R(f without block i)|`` with R the mIoU on a fixed target subset
(``layer_saliency``). It takes the absolute value, so a block whose removal *raises* target mIoU by
more than the threshold counts as salient. By the paper's own argument such blocks are the ones the
domain shift hurts most, so ``rule="signed"`` (ours) marks a block non-salient whenever skipping it
costs less than the threshold, harmful blocks included. The source-domain delta, recorded beside the
target's (``teacher_saliency``), tells an under-trained block (no use on either domain) from a
domain-shift one (useful on the source, useless or harmful on the target).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from clda_deploy.data.labels import IGNORE_INDEX
from clda_deploy.inference import resize_logits
from clda_deploy.metrics import ConfusionMeter, mean_iou
from clda_deploy.models.blocks import BlockName
from clda_deploy.models.segmenter import Segmenter

__all__ = [
    "DEFAULT_LSR_THRESHOLD",
    "RULES",
    "is_salient",
    "layer_saliency",
    "reference_for",
    "select_nonsalient",
    "split_batches",
    "teacher_saliency",
]

DEFAULT_LSR_THRESHOLD = 0.1  # mIoU points; the paper's 0.1 % for segmentation (0.3 % for classification)

Batches = Tensor | Iterable[Any]


def split_batches(images: Batches, labels: Tensor | None = None) -> list[tuple[Tensor, Any]]:
    """The analyses' inputs as a list of ``(image [B,3,H,W], label | None)``.

    ``images`` is one batch ``[B,3,H,W]`` (``labels`` then ``[B,H,W]`` or None) or an iterable of batches,
    each a tensor, an ``(image, label)`` pair or a dict with ``"image"`` (and ``"label"``) as the data
    loaders yield. A label is ``[B,H,W]`` or a list of ``[H_i,W_i]`` at native size (``collate_eval``).
    """
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be [B,3,H,W], got shape {tuple(images.shape)}")
        return [(images, labels)]
    if labels is not None:
        raise ValueError("with an iterable of batches, put the labels in the batches ((image, label) or dicts)")
    batches = [_image_and_label(batch) for batch in images]
    if not batches:
        raise ValueError("no image batches given")
    return batches


def _image_and_label(batch: Any) -> tuple[Tensor, Any]:
    if isinstance(batch, Mapping):
        return batch["image"], batch.get("label")
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def _predict(model: Segmenter, image: Tensor, target: Any = None) -> list[Tensor]:
    """Per image argmax ``[H_i, W_i]`` at its target's size (the image's without one), as evaluation does."""
    logits = model(image.to(next(model.parameters()).device)).float()
    sizes = [tuple((image if target is None else target[i]).shape[-2:]) for i in range(len(logits))]
    return [resize_logits(logits[i : i + 1], size).argmax(dim=1)[0] for i, size in enumerate(sizes)]


def _miou(model: Segmenter, batches: list[tuple[Tensor, Any]], num_classes: int, ignore_index: int) -> float:
    """R of Eq. 2: mIoU (0..100) of ``model`` against each batch's target over the whole subset."""
    meter = ConfusionMeter(num_classes, ignore_index)
    for image, target in batches:
        for prediction, label in zip(_predict(model, image, target), target, strict=True):
            meter.update(prediction, label.to(prediction.device))
    return mean_iou(meter.matrix)


@torch.no_grad()
def layer_saliency(
    model: Segmenter,
    images: Batches,
    reference: Literal["labels", "agreement"] = "labels",
    labels: Tensor | None = None,
    num_classes: int | None = None,
    names: Sequence[str] | None = None,
    threshold: float = DEFAULT_LSR_THRESHOLD,
    progress: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> list[dict[str, Any]]:
    """Eq. 2, ``LSR_i = |R(f) - R(f with block i skipped)|`` for every block (or ``names``).

    Args:
        model: run in eval mode without gradients (its training flag is restored afterwards).
        images: the fixed subset, see ``split_batches`` (one ``[B,3,H,W]`` batch or an iterable).
        reference: ``"labels"``: R = mIoU against the labels (target-val); ``"agreement"`` (label-free,
            DESIGN §7): R = mIoU against the full model's own argmax, so R(full) = 100.
        num_classes: K (default ``model.spec["num_classes"]``); progress: a tqdm bar over the blocks.
        threshold: a block is salient when ``lsr >= threshold`` (mIoU points; paper: 0.1).

    Returns, per block in the given order: ``{"block", "lsr", "delta", "salient", "r_full",
    "r_skipped"}`` with ``delta = R(full) - R(skipped)`` (positive: the block helps) and ``lsr = |delta|``.
    """
    if reference not in ("labels", "agreement"):
        raise ValueError(f"reference must be 'labels' or 'agreement', got {reference!r}")
    num_classes = int(model.spec["num_classes"] if num_classes is None else num_classes)
    names = model.block_names() if names is None else [str(BlockName.parse(name)) for name in names]
    for name in names:  # a malformed or unknown name fails here, before any forward pass
        model.block(name)
    batches = split_batches(images, labels)
    was_training = model.training
    model.eval()
    try:
        if reference == "agreement":  # the full model's predictions become the labels
            batches = [(image, _predict(model, image)) for image, _ in batches]
        elif any(label is None for _, label in batches):
            raise ValueError("reference='labels' needs labels for every batch; use reference='agreement' without")
        r_full = _miou(model, batches, num_classes, ignore_index)
        results = []
        for name in tqdm(names, desc="saliency", unit="block", disable=not progress, leave=False):
            with model.skip_blocks([name]):
                r_skipped = _miou(model, batches, num_classes, ignore_index)
            delta = r_full - r_skipped
            entry = {"block": name, "lsr": abs(delta), "delta": delta, "salient": abs(delta) >= threshold}
            results.append({**entry, "r_full": r_full, "r_skipped": r_skipped})
    finally:
        model.train(was_training)
    return results


RULES = ("abs", "signed")


def reference_for(saliency_data: str) -> Literal["labels", "agreement"]:
    """What R of Eq. 2 is compared with for a ``clda.saliency_data`` mode: the full model's own predictions
    for ``agreement`` (label-free), the labels otherwise."""
    return "agreement" if saliency_data == "agreement" else "labels"


def is_salient(delta: float, threshold: float = DEFAULT_LSR_THRESHOLD, rule: str = "abs") -> bool:
    """``abs`` (Eq. 2): ``|delta| >= threshold``; ``signed``: ``delta >= threshold`` (skipping the block
    costs at least the threshold). ``delta = R(full) - R(block skipped)`` in mIoU points."""
    if rule not in RULES:
        raise ValueError(f"saliency rule must be one of {list(RULES)}, got {rule!r}")
    return abs(delta) >= threshold if rule == "abs" else delta >= threshold


def teacher_saliency(
    model: Segmenter,
    target: Batches,
    source: Batches | None = None,
    reference: Literal["labels", "agreement"] = "labels",
    threshold: float = DEFAULT_LSR_THRESHOLD,
    rule: str = "abs",
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per block, in forward order: ``{"block", "lsr", "delta", "salient", "rule", "r_full", "r_skipped",
    "delta_source", "lsr_source"}``. ``lsr``/``delta`` are on ``target`` (labels or label-free agreement,
    as ``reference`` says) and decide ``salient`` by ``rule``; the source ones (always against labels) are
    ``None`` without ``source`` batches."""
    is_salient(0.0, threshold, rule)  # an unknown rule fails before any forward pass
    rows = layer_saliency(model, target, reference=reference, names=names, threshold=threshold, progress=False)
    source_rows = None
    if source is not None:
        source_rows = layer_saliency(model, source, reference="labels", names=names, threshold=threshold,
                                     progress=False)  # fmt: skip
    out = []
    for index, row in enumerate(rows):
        source_row = None if source_rows is None else source_rows[index]
        out.append({
            **row,
            "salient": is_salient(row["delta"], threshold, rule),
            "rule": rule,
            "delta_source": None if source_row is None else source_row["delta"],
            "lsr_source": None if source_row is None else source_row["lsr"],
        })  # fmt: skip
    return out


def select_nonsalient(saliency: Sequence[Mapping[str, Any]], ratio: float = 0.3, seed: int = 0) -> list[str]:
    """``round(ratio * count)`` (half up) non-salient blocks drawn with ``random.Random(seed)``, forward
    order. At least one is picked when a non-salient block exists and ``ratio > 0``; none for ``ratio == 0``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    candidates = sorted((entry["block"] for entry in saliency if not entry["salient"]), key=BlockName.parse)
    count = 0 if not candidates or ratio == 0.0 else max(1, math.floor(ratio * len(candidates) + 0.5 + 1e-9))
    return sorted(random.Random(seed).sample(candidates, count), key=BlockName.parse)
