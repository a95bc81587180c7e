"""CLDA's layer mapping (paper section 5.2, stage 2): which student block each picked teacher block
learns from. ``channel_similarity`` is Eq. 6 (plus the token-wise and flattened ablations);
``SimilarityAccumulator`` sums it from T2 to T3 for every picked teacher block and every student
block of its stage (only those share N and C), and ``best()`` is Eq. 7's argmax. ``random_mapping``
is the random ablation; ``mapping_entries`` gives the rows of ``mapping.json``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from clda_deploy.models.blocks import BlockName

__all__ = [
    "SIMILARITIES",
    "SimilarityAccumulator",
    "channel_similarity",
    "flattened_similarity",
    "mapping_entries",
    "random_mapping",
    "same_stage_candidates",
    "token_similarity",
]

EPS = 1e-12  # cosine denominators: a zero vector has cosine 0 with anything


def _check_names(names: Iterable[str]) -> None:
    """BlockNameError for the first malformed name, before any work (and even where none is looked at)."""
    for name in names:
        BlockName.parse(name)


def same_stage_candidates(teacher_block: str, student_block_names: Iterable[str]) -> list[str]:
    """The student blocks in the teacher block's stage, in forward order (only they share N and C)."""
    stage = BlockName.parse(teacher_block).stage
    return sorted((name for name in student_block_names if BlockName.parse(name).stage == stage), key=BlockName.parse)


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
        stage = BlockName.parse(teacher_block).stage
        raise ValueError(f"no student block in stage {stage} for teacher block {teacher_block!r}")
    return candidates


class SimilarityAccumulator:
    """Running ``sum_eta theta_i^eta`` (Eq. 7) for every picked teacher block and same-stage student block.

    ``scores[teacher][student]`` is the sum (plain floats, JSON-ready, candidates in forward order);
    ``mean_scores()`` divides by the number of cosines summed: mean cosines in [-1, 1] for heatmaps.
    """

    def __init__(self, teacher_blocks: Sequence[str], student_blocks: Sequence[str], mode: str = "channel") -> None:
        if mode not in SIMILARITIES:
            raise ValueError(f"mode must be one of {', '.join(SIMILARITIES)}, got {mode!r}")
        _check_names([*teacher_blocks, *student_blocks])
        self.mode = mode
        self.scores: dict[str, dict[str, float]] = {}
        for teacher in sorted(teacher_blocks, key=BlockName.parse):
            self.scores[teacher] = dict.fromkeys(_candidates(teacher, student_blocks), 0.0)
        self.terms = dict.fromkeys(self.scores, 0)  # cosines summed per score: C, N or 1 per update
        self.updates = 0

    def student_blocks(self) -> list[str]:
        """Every student block some teacher block is compared with (what to capture), forward order."""
        return sorted({s for row in self.scores.values() for s in row}, key=BlockName.parse)

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
    _check_names([*teacher_blocks, *student_blocks])
    generator = random.Random(seed)
    return {t: generator.choice(_candidates(t, student_blocks)) for t in sorted(teacher_blocks, key=BlockName.parse)}


def mapping_entries(mapping: Mapping[str, str | tuple[str, float]]) -> list[dict[str, Any]]:
    """``mapping.json`` rows ``{"teacher_block", "student_block", "similarity"}`` from ``best()`` or
    ``random_mapping`` (similarity None)."""
    pairs = {t: (value, None) if isinstance(value, str) else value for t, value in mapping.items()}
    _check_names([name for t, (s, _) in pairs.items() for name in (t, s)])  # a later run reads these rows back
    return [{"teacher_block": t, "student_block": s, "similarity": score} for t, (s, score) in pairs.items()]
