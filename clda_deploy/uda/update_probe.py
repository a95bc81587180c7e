"""A training-free check of CLDA's S->T update (paper section 5.2, Eq. 8) for one teacher/student pair.

Eq. 8 blends a non-salient teacher block gamma (Eq. 2: skipping it barely changes the teacher's mIoU)
toward its mapped student block i*: ``phi_T,gamma <- alpha phi_T,gamma + (1 - alpha) phi_S,i*``.
``probe`` measures the teacher's target-val mIoU after one such blend with weight ``w = 1 - alpha``
toward every same-stage student block, against two controls at the same ``w``:

- ``shrink``: the same block shrunk toward the identity (its residual branches scaled by ``1 - w``);
- ``teacher_block``: the block blended toward another teacher block of its stage.

If blending toward the student helps no more than the controls, the update can only act as a damping
of the block, not as a transfer of what the student learned. The input models are never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from clda_deploy.data.labels import IGNORE_INDEX
from clda_deploy.inference import resize_logits
from clda_deploy.metrics import ConfusionMeter, mean_iou
from clda_deploy.models.encoders import check_compatible
from clda_deploy.models.segmenter import Segmenter
from clda_deploy.uda.analysis import _figure, _save, _short
from clda_deploy.uda.saliency import DEFAULT_LSR_THRESHOLD, Batches, layer_saliency, split_batches
from clda_deploy.uda.similarity import same_stage_candidates

__all__ = ["PROBE_KINDS", "blend_block", "shrink_block", "measure_miou", "probe", "summarize_probe", "plot_probe"]

PROBE_KINDS = ("student", "shrink", "teacher_block")
_KIND_LABELS = {"student": "student block", "shrink": "shrink (control)", "teacher_block": "teacher block (control)"}
_KIND_STYLES = {"student": ("tab:green", "o"), "shrink": ("tab:gray", "s"), "teacher_block": ("tab:orange", "^")}


def _check_weight(w: float) -> float:
    if not 0.0 <= float(w) <= 1.0:
        raise ValueError(f"blend weight w must lie in [0, 1], got {w}")
    return float(w)


@torch.no_grad()
def blend_block(teacher: Segmenter, name: str, source_block: nn.Module, w: float) -> None:
    """Eq. 8 on one block, in place: every floating tensor ``t`` of ``teacher.block(name).state_dict()``
    becomes ``(1 - w) * t + w * s`` (``w = 1 - alpha``), ``s`` the source block's tensor of that name.

    Pass a copy to keep the original. Non-floating tensors are left as they are. Raises ValueError
    naming the tensor when the source lacks it or holds it in another shape (nothing is changed then).
    """
    w = _check_weight(w)
    target_state, source_state = teacher.block(name).state_dict(), source_block.state_dict()
    for key, tensor in target_state.items():
        if key not in source_state:
            raise ValueError(f"{name}.{key}: the source block has no tensor of that name")
        if source_state[key].shape != tensor.shape:
            shapes = f"{tuple(tensor.shape)} in the teacher, {tuple(source_state[key].shape)} in the source"
            raise ValueError(f"{name}.{key}: shapes differ ({shapes}); blend same-stage blocks only")
    for key, tensor in target_state.items():
        if tensor.is_floating_point():
            source = source_state[key].to(device=tensor.device, dtype=tensor.dtype)
            tensor.copy_((1.0 - w) * tensor + w * source)


@torch.no_grad()
def shrink_block(teacher: Segmenter, name: str, w: float) -> None:
    """Control 1, in place: scale the block's residual branches by ``1 - w`` (``w = 1``: an identity).

    A block computes ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``; scaling the weight and bias of
    the last linear layer of each branch (``encoder.branch_outputs``) scales the branch output exactly.
    """
    w = _check_weight(w)
    for layer in teacher.encoder.branch_outputs(name):
        layer.weight.mul_(1.0 - w)
        if layer.bias is not None:
            layer.bias.mul_(1.0 - w)


@torch.no_grad()
def measure_miou(
    model: Segmenter, batches: Sequence[tuple[torch.Tensor, Any]], num_classes: int, ignore_index: int = IGNORE_INDEX
) -> float:
    """R of Eq. 2: mIoU (0..100) of ``model`` (eval mode, float32, no autocast) over ``(image, label)``
    batches, each prediction resized to its label's size as evaluation does."""
    meter = ConfusionMeter(num_classes, ignore_index)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            for image, target in batches:
                logits = model(image.to(device)).float()  # [B, K, H, W]
                for index, label in enumerate(target):
                    size = tuple(label.shape[-2:])
                    prediction = resize_logits(logits[index : index + 1], size).argmax(dim=1)[0]
                    meter.update(prediction, label.to(device))
    finally:
        model.train(was_training)
    return mean_iou(meter.matrix)


def _experiments(
    teacher: Segmenter, student: Segmenter, blocks: Iterable[str], weights: Sequence[float]
) -> list[tuple[str, str, str | None, float]]:
    """Every ``(teacher block, kind, source block, w)`` to measure, in a fixed order."""
    student_names, teacher_names = student.block_names(), teacher.block_names()
    plan: list[tuple[str, str, str | None, float]] = []
    for name in blocks:
        sources = same_stage_candidates(name, student_names)
        others = [other for other in same_stage_candidates(name, teacher_names) if other != name]
        for w in weights:
            plan += [(name, "student", source, w) for source in sources]
            plan.append((name, "shrink", None, w))
            plan += [(name, "teacher_block", other, w) for other in others]
    return plan


@torch.no_grad()
def probe(
    teacher: Segmenter,
    student: Segmenter,
    batches: Batches,
    weights: Sequence[float] = (0.3, 1.0),
    blocks: Sequence[str] | None = None,
    num_classes: int | None = None,
    progress: bool = True,
    threshold: float = DEFAULT_LSR_THRESHOLD,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Any]:
    """Can Eq. 8 help this pair? The teacher's mIoU after blending each probed block toward every
    same-stage student block, and after the two controls (module docstring), each at every ``w``.

    Args:
        batches: labelled target-val batches (``saliency.split_batches`` forms: ``(image, label)`` pairs
            or dicts with ``"image"`` and ``"label"``).
        weights: the blend weights ``w = 1 - alpha`` of Eq. 8, each in [0, 1].
        blocks: the teacher blocks to probe; default the non-salient ones (Eq. 2, ``lsr < threshold``
            mIoU points, ``saliency.layer_saliency`` against the labels).
        num_classes: K (default ``teacher.spec["num_classes"]``); progress: tqdm bars.

    Returns ``{"r_full", "weights", "blocks", "saliency", "entries", "summary"}``: ``saliency`` holds the
    ``layer_saliency`` rows of the probed blocks; each entry is ``{"teacher_block", "kind", "source", "w",
    "miou", "delta"}`` with ``delta = miou - r_full``; ``summary`` is ``summarize_probe``'s.
    """
    weights = [_check_weight(w) for w in weights]
    if not weights:
        raise ValueError("give at least one blend weight")
    check_compatible(teacher, student)
    batches = split_batches(batches)
    if any(label is None for _, label in batches):
        raise ValueError("the update probe measures mIoU against labels: every batch needs its label")
    num_classes = int(teacher.spec["num_classes"] if num_classes is None else num_classes)
    for name in blocks or ():
        teacher.block(name)  # an unknown name fails here, before any forward pass
    saliency = layer_saliency(teacher, batches, "labels", num_classes=num_classes, names=blocks, threshold=threshold,
                              progress=progress, ignore_index=ignore_index)  # fmt: skip
    if blocks is None:
        saliency = [row for row in saliency if not row["salient"]]
    names = [row["block"] for row in saliency]
    r_full = measure_miou(teacher, batches, num_classes, ignore_index)

    work = copy.deepcopy(teacher)  # every change goes to this copy; each block is restored after use
    entries = []
    plan = _experiments(teacher, student, names, weights)
    for name, kind, source, w in tqdm(plan, desc="update probe", unit="blend", disable=not progress, leave=False):
        if kind == "shrink":
            shrink_block(work, name, w)
        else:
            blend_block(work, name, (student if kind == "student" else teacher).block(source), w)
        miou = measure_miou(work, batches, num_classes, ignore_index)
        work.block(name).load_state_dict(teacher.block(name).state_dict())
        entry = {"teacher_block": name, "kind": kind, "source": source, "w": w, "miou": miou, "delta": miou - r_full}
        entries.append(entry)
    result = {"r_full": r_full, "weights": weights, "blocks": names, "saliency": saliency, "entries": entries}
    return {**result, "summary": summarize_probe(entries, weights, r_full)}


def _weight_key(w: float) -> str:
    return f"{w:g}"


def summarize_probe(entries: Sequence[dict[str, Any]], weights: Sequence[float], r_full: float) -> dict[str, Any]:
    """``{"kinds": {kind: {"<w>": {"count", "improved", "best_delta", "mean_delta"}}}, "verdict": str}``:
    per kind and weight the number of entries, how many raise the teacher (``delta > 0``), the best and
    the mean delta (None without entries); the verdict is one line built from these numbers."""
    kinds: dict[str, dict[str, dict[str, Any]]] = {}
    for kind in PROBE_KINDS:
        kinds[kind] = {}
        for w in weights:
            deltas = [entry["delta"] for entry in entries if entry["kind"] == kind and entry["w"] == w]
            kinds[kind][_weight_key(w)] = {
                "count": len(deltas),
                "improved": sum(delta > 0 for delta in deltas),
                "best_delta": max(deltas) if deltas else None,
                "mean_delta": float(np.mean(deltas)) if deltas else None,
            }
    return {"kinds": kinds, "verdict": _verdict(kinds, weights, r_full)}


def _verdict(kinds: dict[str, dict[str, dict[str, Any]]], weights: Sequence[float], r_full: float) -> str:
    if not any(stats["count"] for row in kinds.values() for stats in row.values()):
        return f"Teacher mIoU {r_full:.2f}: no non-salient teacher block to probe, so Eq. 8 has nothing to update"

    def counts(stats: dict[str, Any], noun: str) -> str:
        best = f" (best {stats['best_delta']:+.2f})" if stats["count"] else ""
        return f"{stats['improved']} of {stats['count']}{noun}{best}"

    sentences = []
    for w in weights:
        student, shrink, other = (kinds[kind][_weight_key(w)] for kind in PROBE_KINDS)
        best_control = max((stats["best_delta"] for stats in (shrink, other) if stats["count"]), default=float("-inf"))
        comparison = "beats" if student["count"] and student["best_delta"] > best_control else "does not beat"
        sentences.append(
            f"At w={w:g}, blending toward the student raises the teacher in {counts(student, ' cases')}; "
            f"the shrink control in {counts(shrink, '')}; another same-stage teacher block in {counts(other, '')}; "
            f"the best student blend {comparison} the best control."
        )
    return f"Teacher mIoU {r_full:.2f}. " + " ".join(sentences)


def plot_probe(result: dict[str, Any], path: str | Path) -> Path:
    """One panel per weight: for each probed teacher block the delta mIoU of every entry, grouped by kind
    (student sources, shrink, other teacher blocks) around the block's tick, with a zero line."""
    weights, blocks = result["weights"], result["blocks"]
    figure = _figure(2 + max(3.0, 0.8 * len(blocks)) * len(weights), 4)
    axes = figure.subplots(1, len(weights), squeeze=False)[0]
    offsets = dict(zip(PROBE_KINDS, (-0.25, 0.0, 0.25), strict=True))
    position = {name: index for index, name in enumerate(blocks)}
    for axis, w in zip(axes, weights, strict=True):
        for kind in PROBE_KINDS:
            points = [entry for entry in result["entries"] if entry["kind"] == kind and entry["w"] == w]
            color, marker = _KIND_STYLES[kind]
            x = [position[entry["teacher_block"]] + offsets[kind] for entry in points]
            axis.scatter(x, [entry["delta"] for entry in points], color=color, marker=marker, label=_KIND_LABELS[kind])
        axis.axhline(0.0, color="black", linewidth=1)
        axis.set_xticks(range(len(blocks)), [_short(name) for name in blocks], rotation=90, fontsize=7)
        axis.set_xlim(-0.6, max(len(blocks), 1) - 0.4)
        axis.set(xlabel="probed teacher block", ylabel="delta mIoU (points)", title=f"w = {w:g}")
        if not blocks:
            axis.text(0.5, 0.5, "no non-salient block", ha="center", va="center", transform=axis.transAxes)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"Eq. 8 update probe: teacher mIoU {result['r_full']:.2f} before any blend")
    return _save(figure, path)
