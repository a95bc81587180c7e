"""CLDA (paper §5, Algorithm 1) as a loop task: the student learns from the teacher (T->S) and the
teacher's non-salient blocks learn from the student (S->T), with no backpropagation through the
teacher.

Per training step t (0-based) with T2 = t2·T and T3 = t3·T:
1. Stage 1, T->S (Eq. 4, 5, 9): loss = CE(student(source), source labels)
   + q-weighted CE(student(target), argmax teacher(target)); the teacher runs in eval mode under
   ``torch.no_grad`` and none of its parameters requires grad.
2. Stage 2, layer mapping: at the first step >= T2, LSR of every teacher block (Eq. 2) on a fixed
   target subset; 30% of the non-salient blocks are picked at random (seeded). For T2 <= t < T3 the
   channel-wise cosine similarity (Eq. 6) between each picked teacher block's attention output and
   every same-stage student block's, on the same target batch, is accumulated; after step T3 - 1,
   i* = argmax (Eq. 7).
3. Stage 3, S->T (Eq. 8): after every step t >= T3, phi_T,gamma <- alpha phi_T,gamma + (1 - alpha)
   phi_S,i* for each mapped block (the whole block, or its attention with update_scope: attention).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clda_deploy.config import SIMILARITY_MAPPINGS, Config, stage_iterations
from clda_deploy.losses import pixel_weighted_cross_entropy
from clda_deploy.uda.daformer import unwrap
from clda_deploy.uda.ema import ema_update_pairs
from clda_deploy.uda.mapping import (
    SimilarityAccumulator,
    layer_saliency,
    mapping_entries,
    random_mapping,
    select_nonsalient,
)
from clda_deploy.uda.pseudo_label import pseudo_labels
from clda_deploy.uda.task import Batch


def block_path(name: str, scope: str) -> str:
    """``stage3.block05`` -> ``encoder.stages.2.blocks.5`` (``.attn`` for update_scope: attention)."""
    stage, block = name.split(".")
    path = f"encoder.stages.{int(stage[5:]) - 1}.blocks.{int(block[5:])}"
    return f"{path}.attn" if scope == "attention" else path


class CLDATask:
    """Student training with a collaborating teacher (the teacher is updated in place)."""

    domains = ("source", "target")
    target_labels = False

    def __init__(
        self, cfg: Config, teacher: nn.Module, saliency_batches: list[Any], run_dir: Path, is_main: bool = True
    ) -> None:
        self.cfg, self.clda = cfg, cfg.clda
        self.teacher = teacher.eval().requires_grad_(False)
        self.saliency_batches = saliency_batches
        self.run_dir, self.is_main = run_dir, is_main
        self.t2, self.t3 = stage_iterations(cfg)
        self.saliency: list[dict[str, Any]] | None = None
        self.picked: list[str] | None = None
        self.accumulator: SimilarityAccumulator | None = None
        self.mapping: dict[str, str] | None = None

    # ----- stage 2 -----------------------------------------------------------------------------
    def _start_mapping(self, student: nn.Module) -> None:
        """LSR of every teacher block (Eq. 2), then the seeded 30% pick of the non-salient ones."""
        reference = "labels" if self.clda.saliency_labels else "agreement"
        self.saliency = layer_saliency(self.teacher, self.saliency_batches, reference=reference,
                                       num_classes=self.cfg.model.num_classes,
                                       threshold=self.clda.nonsalient_threshold, progress=False)  # fmt: skip
        self.picked = select_nonsalient(self.saliency, self.clda.select_ratio, seed=self.cfg.train.seed)
        if self.clda.mapping in SIMILARITY_MAPPINGS:
            self.accumulator = SimilarityAccumulator(self.picked, unwrap(student).block_names(), self.clda.mapping)
        self._write("saliency.json", [{k: e[k] for k in ("block", "lsr", "delta", "salient")} for e in self.saliency])

    def _finish_mapping(self, student: nn.Module) -> None:
        """Eq. 7 (or the random ablation): the student block for each picked teacher block."""
        assert self.picked is not None
        if self.accumulator is not None:
            self._sum_across_ranks(self.accumulator)
            best = self.accumulator.best()
            self.mapping = {t: s for t, (s, _) in best.items()}
            entries = mapping_entries(best)
        else:
            self.mapping = random_mapping(self.picked, unwrap(student).block_names(), seed=self.cfg.train.seed)
            entries = mapping_entries(self.mapping)
        self._write("mapping.json", entries)

    @staticmethod
    def _sum_across_ranks(accumulator: SimilarityAccumulator) -> None:
        """Under DDP each rank saw other target batches: sum the scores so every rank picks the same
        i* (the teacher is not synchronised by DDP, so its S->T updates must agree)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        pairs = [(t, s) for t, row in accumulator.scores.items() for s in row]
        nccl = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        totals = torch.tensor([accumulator.scores[t][s] for t, s in pairs], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        for (t, s), value in zip(pairs, totals.tolist(), strict=True):
            accumulator.scores[t][s] = value

    def _write(self, name: str, payload: Any) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / name).write_text(json.dumps(payload, indent=2) + "\n")

    def _accumulating(self, iteration: int) -> bool:
        return self.accumulator is not None and self.t2 <= iteration < self.t3

    # ----- the step ----------------------------------------------------------------------------
    def losses(self, model: nn.Module, batch: Batch, iteration: int) -> dict[str, Tensor]:
        if self.clda.mapping != "none" and self.picked is None and iteration >= self.t2:
            self._start_mapping(model)
        source, target = batch["source"], batch["target"]
        count = source["image"].shape[0]
        accumulate = self._accumulating(iteration)
        assert self.accumulator is not None or not accumulate
        with torch.no_grad():
            if accumulate:
                with self.teacher.capture_attention(list(self.accumulator.scores), detach=True) as teacher_attention:
                    teacher_logits = self.teacher(target["image"])
            else:
                teacher_logits = self.teacher(target["image"])
        labels, weight, _ = pseudo_labels(teacher_logits, threshold=self.cfg.uda.pseudo_threshold,
                                          ignore_top=self.cfg.uda.ignore_top,
                                          ignore_bottom=self.cfg.uda.ignore_bottom)  # fmt: skip
        images = torch.cat([source["image"], target["image"]])
        if accumulate:
            with unwrap(model).capture_attention(self.accumulator.student_blocks(), detach=True) as student_attention:
                logits = model(images)
            self.accumulator.update(teacher_attention, {k: v[count:] for k, v in student_attention.items()})
        else:
            logits = model(images)
        source_ce = pixel_weighted_cross_entropy(logits[:count], source["label"])
        distill = pixel_weighted_cross_entropy(logits[count:], labels, weight)  # Eq. 4 with q
        total = source_ce + distill  # Eq. 9
        return {"loss": total, "source_ce": source_ce.detach(), "distill_ce": distill.detach(),
                "pseudo_weight": weight.amax()}  # fmt: skip

    def after_step(self, model: nn.Module, iteration: int) -> None:
        if self.picked is not None and self.mapping is None and iteration >= self.t3 - 1:
            self._finish_mapping(model)
        if self.mapping and iteration >= self.t3:
            pairs = {block_path(t, self.clda.update_scope): block_path(s, self.clda.update_scope)
                     for t, s in self.mapping.items()}  # fmt: skip
            ema_update_pairs(self.teacher, unwrap(model), pairs, self.clda.alpha)  # Eq. 8

    # ----- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher.state_dict(),
            "saliency": self.saliency,
            "picked": self.picked,
            "accumulator": None if self.accumulator is None else self.accumulator.state_dict(),
            "mapping": self.mapping,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.saliency, self.picked, self.mapping = state["saliency"], state["picked"], state["mapping"]
        if state["accumulator"] is not None:
            saved = state["accumulator"]
            students = sorted({s for row in saved["scores"].values() for s in row})
            self.accumulator = SimilarityAccumulator(list(saved["scores"]), students, saved["mode"])
            self.accumulator.load_state_dict(saved)
