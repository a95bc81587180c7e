"""Layer Saliency Rate (Eq. 2) of the teacher on the target and on the source, and the rule that
marks a block non-salient.

Eq. 2 takes |R(f) - R(f without block i)|, so a block whose removal *raises* target mIoU by more
than the threshold counts as salient. By the paper's own argument such blocks are the ones the
domain shift hurts most, so ``rule="signed"`` (ours) marks a block non-salient whenever skipping it
costs less than the threshold, harmful blocks included. The source-domain delta, recorded beside the
target's, tells an under-trained block (no use on either domain) from a domain-shift one (useful on
the source, useless or harmful on the target).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from clda_deploy.models.segmenter import Segmenter
from clda_deploy.uda.mapping import DEFAULT_LSR_THRESHOLD, Batches, layer_saliency

__all__ = ["RULES", "is_salient", "reference_for", "teacher_saliency"]

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
