"""The teacher-initialised student (``clda.student_init: teacher``; ours, DESIGN §7).

Compression work initialises a shallower student from its teacher (DistilBERT takes every other
teacher layer). Here the student's patch embeddings, norms and decode head are copied from the
teacher, and each student block from a teacher block of the same stage. Besides a better start, it
gives Eq. 6 (channel-wise similarity) and Eq. 8 (S->T averaging) a shared basis: channel j of a
student block then means what channel j of its teacher block means. It needs equal stage widths,
heads and head channels (``check_compatible``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clda_deploy.models.blocks import BlockName
from clda_deploy.models.encoders import IncompatibleModelsError
from clda_deploy.models.segmenter import Segmenter

__all__ = ["evenly_spaced", "most_salient", "student_block_sources", "initialise_from_teacher"]


def evenly_spaced(teacher_depth: int, student_depth: int) -> list[int]:
    """Teacher block indices for a stage of ``student_depth`` blocks: every k-th block (k = ratio of
    the depths), ending with the stage's last block, which feeds the stage norm and the next stage.
    ``evenly_spaced(6, 2) == [2, 5]``, ``evenly_spaced(2, 1) == [1]``, equal depths give the identity."""
    if not 1 <= student_depth <= teacher_depth:
        raise IncompatibleModelsError(
            f"a stage of {student_depth} student blocks cannot start from {teacher_depth} teacher blocks"
        )
    step = teacher_depth / student_depth
    return [teacher_depth - 1 - math.floor((student_depth - 1 - i) * step + 0.5) for i in range(student_depth)]


def most_salient(saliency: Sequence[Mapping[str, Any]], stage: int, count: int) -> list[int]:
    """Indices of the ``count`` teacher blocks of ``stage`` (1-based) whose removal costs the most
    target mIoU (largest signed delta of Eq. 2), in forward order."""
    rows = [row for row in saliency if BlockName.parse(row["block"]).stage == stage]
    if len(rows) < count:
        raise IncompatibleModelsError(
            f"stage {stage}: saliency lists {len(rows)} teacher blocks, the student needs {count}"
        )
    ranked = sorted(rows, key=lambda row: -float(row["delta"]))[:count]
    return sorted(BlockName.parse(row["block"]).block for row in ranked)


def student_block_sources(
    teacher: Segmenter, student: Segmenter, mode: str = "evenly", saliency: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, str]:
    """``{student block: teacher block}``, same stage each (``mode``: ``evenly`` or ``salient``)."""
    if mode not in ("evenly", "salient"):
        raise ValueError(f"clda.student_init_blocks must be 'evenly' or 'salient', got {mode!r}")
    if mode == "salient" and saliency is None:
        raise ValueError("student_init_blocks 'salient' needs the teacher's saliency rows (Eq. 2)")
    teacher_depths, student_depths = teacher.encoder.depths, student.encoder.depths
    if len(teacher_depths) != len(student_depths):
        raise ValueError(f"teacher has {len(teacher_depths)} stages, student {len(student_depths)}")
    sources = {}
    for stage, (t_depth, s_depth) in enumerate(zip(teacher_depths, student_depths, strict=True), start=1):
        chosen = evenly_spaced(t_depth, s_depth) if mode == "evenly" else most_salient(saliency, stage, s_depth)
        for index, teacher_index in enumerate(chosen):
            sources[str(BlockName(stage, index))] = str(BlockName(stage, teacher_index))
    return sources


@torch.no_grad()
def initialise_from_teacher(student: Segmenter, teacher: Segmenter, sources: Mapping[str, str]) -> None:
    """Copy, bit for bit, every student tensor from the teacher: block tensors from the teacher block
    ``sources`` names, everything else (patch embeddings, norms, head) from the same key. Raises
    ValueError naming the tensor when a key is missing or a shape differs."""
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    prefixes = {student.block_state_prefix(name) + ".": teacher.block_state_prefix(source) + "."
                for name, source in sources.items()}  # fmt: skip
    unmapped = [name for name in student.block_names() if name not in sources]
    if unmapped:
        raise ValueError(f"no teacher block given for student blocks {', '.join(unmapped)}")
    block_prefixes = tuple(student.block_state_prefix(name) + "." for name in student.block_names())
    for key, tensor in student_state.items():
        source_key = key
        if key.startswith(block_prefixes):
            prefix = next(p for p in prefixes if key.startswith(p))
            source_key = prefixes[prefix] + key[len(prefix) :]
        if source_key not in teacher_state:
            raise ValueError(f"student tensor {key!r}: the teacher has no {source_key!r}")
        if teacher_state[source_key].shape != tensor.shape:
            raise ValueError(
                f"student tensor {key!r} has shape {tuple(tensor.shape)}, teacher {source_key!r} "
                f"{tuple(teacher_state[source_key].shape)}: teacher and student must share widths and head channels"
            )
        tensor.copy_(teacher_state[source_key].to(tensor.device))
