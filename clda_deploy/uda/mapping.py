"""CLDA's layer mapping (paper section 5.2, stage 2) on blocks named ``stage{s}.block{bb}`` (DESIGN §3):
``layer_saliency`` (Eq. 2) on a fixed target subset, ``select_nonsalient`` (the seeded 30 % pick), and
``SimilarityAccumulator``, which sums from T2 to T3 the attention similarity (Eq. 6) of every picked teacher
block and every student block of its stage; ``best()`` is Eq. 7."""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from clda_deploy.data.labels import IGNORE_INDEX
from clda_deploy.errors import CldaError
from clda_deploy.inference import resize_logits
from clda_deploy.metrics import ConfusionMeter, mean_iou
from clda_deploy.models.segmenter import Segmenter

DEFAULT_LSR_THRESHOLD = 0.1  # mIoU points; the paper's 0.1 % for segmentation (0.3 % for classification)
EPS = 1e-12  # cosine denominators: a zero vector has cosine 0 with anything
_NAME = re.compile(r"^stage(\d+)\.block(\d+)$")

Batches = Tensor | Iterable[Any]


def _forward_key(name: str) -> tuple[int, int]:
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a block name; block names look like 'stage3.block05'")
    return int(match.group(1)), int(match.group(2))


def stage_of(name: str) -> int:
    """``stage_of("stage3.block05") == 3`` (1-based, as in the name)."""
    return _forward_key(name)[0]


def same_stage_candidates(teacher_block: str, student_block_names: Iterable[str]) -> list[str]:
    """The student blocks in the teacher block's stage, in forward order (only they share N and C)."""
    stage = stage_of(teacher_block)
    return sorted((name for name in student_block_names if stage_of(name) == stage), key=_forward_key)


class IncompatibleModelsError(CldaError, ValueError):
    """A teacher and a student that cannot exchange block weights; the message names the stage and the fix."""


def check_compatible(teacher: Segmenter, student: Segmenter) -> None:
    """Raise IncompatibleModelsError naming the first stage whose blocks cannot exchange weights (Eq. 8 copies them
    block to block): width, head count, spatial-reduction ratio and every block tensor shape must agree."""
    t_enc, s_enc = teacher.encoder, student.encoder
    hint = "CLDA copies weights block to block: pick a student with the teacher's stage widths and heads"
    if len(t_enc.depths) != len(s_enc.depths):
        raise IncompatibleModelsError(f"teacher has {len(t_enc.depths)} stages, student {len(s_enc.depths)}; {hint}")
    for index in range(len(t_enc.depths)):
        for what, attribute in (("width", "embed_dims"), ("heads", "num_heads"), ("sr_ratio", "sr_ratios")):
            t_value, s_value = getattr(t_enc, attribute)[index], getattr(s_enc, attribute)[index]
            if t_value != s_value:
                raise IncompatibleModelsError(
                    f"stage {index + 1}: teacher {what} {t_value}, student {what} {s_value}; {hint}"
                )
        t_shapes, s_shapes = (
            [(key, tuple(value.shape)) for key, value in enc.stages[index].blocks[0].state_dict().items()]
            for enc in (t_enc, s_enc)
        )
        if t_shapes != s_shapes:
            raise IncompatibleModelsError(
                f"stage {index + 1}: teacher and student block tensors differ in shape; {hint}"
            )


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
    names = list(model.block_names() if names is None else names)
    for name in names:  # an unknown name fails here, before any forward pass
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


def select_nonsalient(saliency: Sequence[Mapping[str, Any]], ratio: float = 0.3, seed: int = 0) -> list[str]:
    """``round(ratio * count)`` (half up) non-salient blocks drawn with ``random.Random(seed)``, forward
    order. At least one is picked when a non-salient block exists and ``ratio > 0``; none for ``ratio == 0``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1], got {ratio}")
    candidates = sorted((entry["block"] for entry in saliency if not entry["salient"]), key=_forward_key)
    count = 0 if not candidates or ratio == 0.0 else max(1, math.floor(ratio * len(candidates) + 0.5 + 1e-9))
    return sorted(random.Random(seed).sample(candidates, count), key=_forward_key)


def _check_shapes(teacher: Tensor, student: Tensor) -> None:
    if teacher.dim() != 3 or teacher.shape != student.shape:
        shapes = f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)}"
        raise ValueError(f"attention maps must both be [B,N,C] of one shape, got {shapes} (use same-stage blocks)")


def _cosine_sum(a: Tensor, b: Tensor) -> Tensor:
    """Sum over rows of the cosine between rows of ``a`` and ``b`` ``[R, D]`` (0 for a zero row)."""
    dot = (a * b).sum(dim=1)
    norms = a.norm(dim=1) * b.norm(dim=1)
    return (dot / norms.clamp_min(EPS)).sum()


def channel_similarity(teacher_attention: Tensor, student_attention: Tensor) -> Tensor:
    """Eq. 6: ``sum_j cos(A_T[:, :, j], A_S[:, :, j])`` over the C channels, each a (B*N)-vector.
    ``[B,N,C], [B,N,C] -> []`` (float32, in [-C, C]; C when every channel is a positive multiple)."""
    _check_shapes(teacher_attention, student_attention)
    channels = teacher_attention.shape[-1]
    teacher = teacher_attention.float().reshape(-1, channels).t()  # [C, B*N]
    student = student_attention.float().reshape(-1, channels).t()
    return _cosine_sum(teacher, student)


def token_similarity(teacher_attention: Tensor, student_attention: Tensor) -> Tensor:
    """Token-wise ablation: for each token (b, n) the cosine of the C-vectors, summed over the N tokens
    and averaged over the batch. ``[B,N,C], [B,N,C] -> []`` (in [-N, N])."""
    _check_shapes(teacher_attention, student_attention)
    batch, _, channels = teacher_attention.shape
    teacher, student = teacher_attention.float().reshape(-1, channels), student_attention.float().reshape(-1, channels)
    return _cosine_sum(teacher, student) / batch


def flattened_similarity(teacher_attention: Tensor, student_attention: Tensor) -> Tensor:
    """``both`` ablation: cosine of the fully flattened maps. ``[B,N,C], [B,N,C] -> []`` (in [-1, 1])."""
    _check_shapes(teacher_attention, student_attention)
    return _cosine_sum(teacher_attention.float().reshape(1, -1), student_attention.float().reshape(1, -1))


SIMILARITIES = {"channel": channel_similarity, "token": token_similarity, "both": flattened_similarity}


def _candidates(teacher_block: str, student_blocks: Iterable[str]) -> list[str]:
    candidates = same_stage_candidates(teacher_block, student_blocks)
    if not candidates:
        raise ValueError(f"no student block in stage {stage_of(teacher_block)} for teacher block {teacher_block!r}")
    return candidates


class SimilarityAccumulator:
    """Running ``sum_eta theta_i^eta`` (Eq. 7) for every picked teacher block and same-stage student block.

    ``scores[teacher][student]`` is the sum (plain floats, JSON-ready, candidates in forward order);
    ``mean_scores()`` divides by the number of cosines summed: mean cosines in [-1, 1] for heatmaps.
    """

    def __init__(self, teacher_blocks: Sequence[str], student_blocks: Sequence[str], mode: str = "channel") -> None:
        if mode not in SIMILARITIES:
            raise ValueError(f"mode must be one of {', '.join(SIMILARITIES)}, got {mode!r}")
        self.mode = mode
        self.scores: dict[str, dict[str, float]] = {}
        for teacher in sorted(teacher_blocks, key=_forward_key):
            self.scores[teacher] = dict.fromkeys(_candidates(teacher, student_blocks), 0.0)
        self.terms = dict.fromkeys(self.scores, 0)  # cosines summed per score: C, N or 1 per update
        self.updates = 0

    def student_blocks(self) -> list[str]:
        """Every student block some teacher block is compared with (what to capture), forward order."""
        return sorted({s for row in self.scores.values() for s in row}, key=_forward_key)

    @torch.no_grad()
    def update(self, teacher_attention: Mapping[str, Tensor], student_attention: Mapping[str, Tensor]) -> None:
        """Add theta (Eq. 6, or the ablation's similarity) of one batch: ``{block: [B,N,C]}`` per model,
        captured on the same target batch (``Segmenter.capture_attention``)."""
        missing = [f"teacher {t}" for t in self.scores if t not in teacher_attention]
        missing += [f"student {s}" for s in self.student_blocks() if s not in student_attention]
        if missing:
            raise KeyError(f"no attention captured for {', '.join(missing)}; capture_attention() these blocks")
        similarity = SIMILARITIES[self.mode]
        pairs = [(t, s) for t, row in self.scores.items() for s in row]
        values = [
            similarity(teacher_attention[t], student_attention[s].to(teacher_attention[t].device)) for t, s in pairs
        ]
        values = torch.stack(values).tolist() if values else []  # one device sync per update
        for (t, s), value in zip(pairs, values, strict=True):
            self.scores[t][s] += value
        for t in self.terms:
            shape = teacher_attention[t].shape  # [B, N, C]
            self.terms[t] += {"channel": shape[2], "token": shape[1], "both": 1}[self.mode]
        self.updates += 1

    def best(self) -> dict[str, tuple[str, float]]:
        """Eq. 7: ``{teacher block: (argmax student block, summed score)}``; ties go to the first block in
        forward order (max() keeps the first maximum). RuntimeError before any update (arbitrary argmax)."""
        if self.updates == 0 and self.scores:
            raise RuntimeError("no similarity accumulated yet: call update() between T2 and T3 first")
        return {teacher: max(row.items(), key=lambda item: item[1]) for teacher, row in self.scores.items()}

    def mean_scores(self) -> dict[str, dict[str, float]]:
        """Scores divided by the number of cosines summed: mean cosine in [-1, 1] (0 before any update)."""
        return {t: {s: v / max(self.terms[t], 1) for s, v in row.items()} for t, row in self.scores.items()}

    def state_dict(self) -> dict[str, Any]:
        """Plain Python (JSON and ``torch.load(weights_only=True)`` safe)."""
        return {"mode": self.mode, "updates": self.updates, "scores": self.scores, "terms": self.terms}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume; the mode and the (teacher, student) pairs must match this accumulator's."""
        if state["mode"] != self.mode:
            raise ValueError(f"saved accumulator has mode {state['mode']!r}, this one {self.mode!r}")
        saved = {t: list(row) for t, row in state["scores"].items()}
        if saved != {t: list(row) for t, row in self.scores.items()}:
            raise ValueError(f"saved accumulator maps {saved}, this one {dict(self.scores)}")
        self.scores = {t: {s: float(v) for s, v in row.items()} for t, row in state["scores"].items()}
        self.terms = {t: int(state["terms"][t]) for t in self.scores}
        self.updates = int(state["updates"])


def random_mapping(teacher_blocks: Sequence[str], student_blocks: Sequence[str], seed: int = 0) -> dict[str, str]:
    """The ``random`` ablation (Tab. 3 row 2): a same-stage student block drawn at random (seeded)."""
    generator = random.Random(seed)
    return {t: generator.choice(_candidates(t, student_blocks)) for t in sorted(teacher_blocks, key=_forward_key)}


def mapping_entries(mapping: Mapping[str, str | tuple[str, float]]) -> list[dict[str, Any]]:
    """``mapping.json`` rows ``{"teacher_block", "student_block", "similarity"}`` from ``best()`` or
    ``random_mapping`` (similarity None)."""
    pairs = {t: (value, None) if isinstance(value, str) else value for t, value in mapping.items()}
    return [{"teacher_block": t, "student_block": s, "similarity": score} for t, (s, score) in pairs.items()]
