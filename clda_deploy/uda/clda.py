"""CLDA (paper §5, Algorithm 1) as a loop task: the student learns from the teacher (T->S) and the
teacher's non-salient blocks learn from the student (S->T), with no backpropagation through the
teacher.

Per training step t (0-based) with T2 = t2·T and T3 = t3·T:
1. Stage 1, T->S (Eq. 4, 5, 9): loss = CE(student(source), source labels)
   + q-weighted CE(student(target), argmax teacher(target)); the teacher runs under ``torch.no_grad``
   with autocast off, none of its parameters requires grad, and its BatchNorm layers use the target
   batch's statistics when ``uda.teacher_batch_stats`` is set (as the DAFormer teacher was trained to
   predict). With ``clda.student_mixing`` the target half is DAFormer's ClassMix of the source onto
   the target with the teacher's labels, colour-jittered and blurred.
2. Stage 2, layer mapping: at the first step >= T2, LSR of every teacher block (Eq. 2) on a fixed
   target subset (and, recorded beside it, on a source subset); ``clda.saliency_rule`` marks the
   non-salient ones, 30% of which are picked at random (seeded). For T2 <= t < T3 the
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

from clda_deploy.artifacts import MAPPING_FILE, SALIENCY_FILE
from clda_deploy.config import SIMILARITY_MAPPINGS, Config, stage_iterations
from clda_deploy.errors import CldaError
from clda_deploy.uda.daformer import unwrap
from clda_deploy.uda.ema import ema_update_pairs
from clda_deploy.uda.mixing import mix_with_pseudo_labels
from clda_deploy.uda.pseudo_label import pseudo_labels, teacher_logits
from clda_deploy.uda.saliency import is_salient, reference_for, select_nonsalient, teacher_saliency
from clda_deploy.uda.scales import build_train_forward
from clda_deploy.uda.similarity import SimilarityAccumulator, mapping_entries, random_mapping
from clda_deploy.uda.task import Batch

SALIENCY_KEYS = ("block", "lsr", "delta", "salient", "rule", "delta_source", "lsr_source")


class TeacherMismatchError(CldaError, ValueError):
    """A run resumed with another teacher file than it was trained from; the message says what to pass."""


def full_precision(device: torch.device) -> Any:
    """A context with autocast off: LSR (Eq. 2) and the pseudo-labels are measured in float32."""
    return torch.autocast(device.type, enabled=False)


class CLDATask:
    """Student training with a collaborating teacher (the teacher is updated in place)."""

    domains = ("source", "target")
    target_labels = False

    def __init__(
        self,
        cfg: Config,
        teacher: nn.Module,
        saliency_batches: list[Any],
        run_dir: Path,
        is_main: bool = True,
        source_batches: list[Any] | None = None,
        teacher_sha256: str | None = None,
        rank: int = 0,
    ) -> None:
        self.cfg, self.clda = cfg, cfg.clda
        self.teacher = teacher.eval().requires_grad_(False)
        self.saliency_batches, self.source_batches = saliency_batches, source_batches
        self.run_dir, self.is_main = run_dir, is_main
        self.t2, self.t3 = stage_iterations(cfg)
        self.saliency: list[dict[str, Any]] | None = None
        self.picked: list[str] | None = None
        self.accumulator: SimilarityAccumulator | None = None
        self.mapping: dict[str, str] | None = None
        self.generator = torch.Generator().manual_seed(cfg.train.seed + rank)  # ClassMix draws (student_mixing)
        self.forward = build_train_forward(cfg, cfg.train.seed + rank)  # one scale, or HRDA's two
        self.pseudo_weight_sum: Tensor | float = 0.0  # q summed over training (a tensor: no sync per step)
        self.pseudo_weight_count = 0
        # The digest of the teacher file this run started from; a resume or fork keeps the saved one, so
        # metrics.json names the teacher that was trained with even if the file at --teacher changed.
        self.teacher_sha256 = teacher_sha256
        # LSR rows (with their deltas) measured on this teacher and these images by the run this one forked
        # from; the rule is applied anew at T2, so a fork need not repeat the forward passes.
        self.measured_saliency: list[dict[str, Any]] | None = None

    # ----- stage 2 -----------------------------------------------------------------------------
    def _start_mapping(self, student: nn.Module) -> None:
        """LSR of every teacher block (Eq. 2), then the seeded 30% pick of the non-salient ones."""
        threshold, rule = self.clda.nonsalient_threshold, self.clda.saliency_rule
        if self.measured_saliency is not None:  # the same teacher and images measured by the run this forked
            self.saliency = [{**row, "salient": is_salient(row["delta"], threshold, rule), "rule": rule}
                             for row in self.measured_saliency]  # fmt: skip
        else:
            reference = reference_for(self.clda.saliency_data)
            with full_precision(next(self.teacher.parameters()).device):
                self.saliency = teacher_saliency(self.teacher, self.saliency_batches, self.source_batches,
                                                 reference=reference, threshold=threshold, rule=rule)  # fmt: skip
        self.picked = select_nonsalient(self.saliency, self.clda.select_ratio, seed=self.cfg.train.seed)
        if self.clda.mapping in SIMILARITY_MAPPINGS:
            self.accumulator = SimilarityAccumulator(self.picked, unwrap(student).block_names(), self.clda.mapping)
        self._write(SALIENCY_FILE, [{k: e[k] for k in SALIENCY_KEYS} for e in self.saliency])

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
        self._write(MAPPING_FILE, entries)

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
    def _teacher_forward(self, images: Tensor, capture: list[str] | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Teacher logits in float32 without gradient (and, with ``capture``, its attention outputs)."""
        batch_stats = self.cfg.uda.teacher_batch_stats
        with torch.no_grad(), full_precision(images.device):
            if not capture:
                return teacher_logits(self.teacher, images, batch_stats), {}
            with self.teacher.capture_attention(capture, detach=True) as attention:
                if self.cfg.uda.method == "hrda":  # the whole-image pass of ``_hrda_attention``
                    return self.teacher(images), attention
                logits = teacher_logits(self.teacher, images, batch_stats)
            return logits, attention

    @torch.no_grad()
    def _hrda_attention(self, model: nn.Module, images: Tensor, capture: list[str]) -> None:
        """Eq. 6 for HRDA models: both models' whole-image multi-resolution forward on the same target
        images (the last encoder pass, the full-scale detail, is what the hooks keep), no gradient."""
        assert self.accumulator is not None
        _, teacher_attention = self._teacher_forward(images, capture)
        student = unwrap(model)
        training = student.training
        try:  # eval: no drop-path noise in the attention outputs, no BatchNorm statistics from this pass
            with student.capture_attention(self.accumulator.student_blocks(), detach=True) as student_attention:
                student.eval()(images)
        finally:
            student.train(training)
        self.accumulator.update(teacher_attention, student_attention)

    def losses(self, model: nn.Module, batch: Batch, iteration: int) -> dict[str, Tensor]:
        if self.clda.mapping != "none" and self.picked is None and iteration >= self.t2:
            self._start_mapping(model)
        source, target = batch["source"], batch["target"]
        count = source["image"].shape[0]
        accumulate = self._accumulating(iteration)
        assert self.accumulator is not None or not accumulate
        capture = list(self.accumulator.scores) if accumulate else None
        # Eq. 6 compares both models' attention outputs on the same tokens: with one scale, those of this
        # step's forwards; HRDA's forwards see other crops in teacher and student (sliding windows, a
        # detail box), so both are read from an extra whole-image pass (``_hrda_attention``).
        mixing = self.clda.student_mixing
        separate = mixing or self.cfg.uda.method == "hrda"
        teacher_logits_target, teacher_attention = self._teacher_forward(target["image"], None if separate else capture)
        uda = self.cfg.uda
        labels, weight, confidence = pseudo_labels(teacher_logits_target, threshold=uda.pseudo_threshold,
                                                   ignore_top=uda.ignore_top, ignore_bottom=uda.ignore_bottom,
                                                   ignore_left=uda.ignore_left,
                                                   ignore_right=uda.ignore_right)  # fmt: skip
        q = (confidence >= self.cfg.uda.pseudo_threshold).float().mean()  # the share DAFormer calls q
        target_images = target["image"]
        if mixing:  # DAFormer's step with the fixed teacher's labels
            target_images, labels, weight = mix_with_pseudo_labels(source, target_images, labels, weight,
                                                                   self.cfg.uda, self.generator)  # fmt: skip
        images = torch.cat([source["image"], target_images])
        if accumulate and self.cfg.uda.method == "hrda":
            self._hrda_attention(model, target_images, capture)
        elif accumulate and mixing:  # Eq. 6 compares both models on the same images: the mixed ones here
            _, teacher_attention = self._teacher_forward(target_images, capture)
        if accumulate and self.cfg.uda.method != "hrda":
            with unwrap(model).capture_attention(self.accumulator.student_blocks(), detach=True) as student_attention:
                output = self.forward(model, images)
            self.accumulator.update(teacher_attention, {k: v[count:] for k, v in student_attention.items()})
        else:
            output = self.forward(model, images)
        source_ce = self.forward.loss(output, slice(0, count), source["label"])
        distill = self.forward.loss(output, slice(count, None), labels, weight)  # Eq. 4 with q
        total = source_ce + distill  # Eq. 9
        self.pseudo_weight_sum = self.pseudo_weight_sum + q.detach()
        self.pseudo_weight_count += 1
        return {"loss": total, "source_ce": source_ce.detach(), "distill_ce": distill.detach(), "pseudo_weight": q}

    def after_step(self, model: nn.Module, iteration: int) -> None:
        if self.picked is not None and self.mapping is None and iteration >= self.t3 - 1:
            self._finish_mapping(model)
        if self.mapping and iteration >= self.t3:
            scope = self.clda.update_scope
            ema_update_pairs(self.teacher, unwrap(model), self.mapping, self.clda.alpha, scope=scope)  # Eq. 8

    # ----- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher.state_dict(),
            "saliency": self.saliency,
            "picked": self.picked,
            "accumulator": None if self.accumulator is None else self.accumulator.state_dict(),
            "mapping": self.mapping,
            "generator": self.generator.get_state(),
            "forward": self.forward.state_dict(),
            "pseudo_weight": [float(self.pseudo_weight_sum), self.pseudo_weight_count],
            "teacher_sha256": self.teacher_sha256,
            "measured_saliency": self.measured_saliency,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("teacher_sha256")
        if saved is not None and self.teacher_sha256 is not None and saved != self.teacher_sha256:
            raise TeacherMismatchError(
                f"the checkpoint was trained from teacher sha256 {saved}, but --teacher is now a file with sha256 "
                f"{self.teacher_sha256}: resume with the original teacher file or start a new run"
            )
        self.teacher_sha256 = saved or self.teacher_sha256
        self.measured_saliency = state.get("measured_saliency")
        self.teacher.load_state_dict(state["teacher"])
        self.saliency, self.picked, self.mapping = state["saliency"], state["picked"], state["mapping"]
        if "generator" in state:  # checkpoints written before student_mixing have neither
            self.generator.set_state(state["generator"])
            self.forward.load_state_dict(state.get("forward", {}))
            self.pseudo_weight_sum, self.pseudo_weight_count = state["pseudo_weight"]
        self.accumulator = None
        if state["accumulator"] is not None:
            saved = state["accumulator"]
            students = sorted({s for row in saved["scores"].values() for s in row})
            self.accumulator = SimilarityAccumulator(list(saved["scores"]), students, saved["mode"])
            self.accumulator.load_state_dict(saved)

    # ----- reporting ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What a student run's ``metrics.json`` records of CLDA: the mapping and the mean q."""
        mean = float(self.pseudo_weight_sum) / self.pseudo_weight_count if self.pseudo_weight_count else None
        return {"mapping": self.mapping or {}, "picked": self.picked or [], "pseudo_weight_mean": mean,
                "teacher_sha256": self.teacher_sha256}  # fmt: skip


def forked_task_state(state: dict[str, Any], mapping: str, t2: int, t3: int, iteration: int) -> dict[str, Any]:
    """A CLDA task state taken from another run at ``iteration``, adapted to ``clda.mapping`` ``mapping``.

    Every mapping mode trains the student identically before T3 (LSR and the similarity sums read the
    models without changing them), so a snapshot up to T3 can seed another mode: ``none`` (the mapping
    is dropped), ``random`` at T3 (the same LSR pick, a random i*), the snapshot's own mode (e.g. with
    another alpha), and any other similarity mode only up to T2 (it must accumulate its own sums).
    Past T3 the teacher already carries S->T updates, so no fork is allowed there. Raises ValueError
    when the snapshot cannot serve ``mapping``."""
    saved_mode = None if state["accumulator"] is None else state["accumulator"]["mode"]
    forked = dict(state)
    if iteration > t3:  # the snapshot's teacher already carries S->T updates made with its own settings
        raise ValueError(f"a snapshot at iteration {iteration} is past T3={t3}: fork at T2 or T3")
    if mapping == "none":
        return {**forked, "saliency": None, "picked": None, "accumulator": None, "mapping": None}
    if iteration <= t2:
        if state["picked"] is not None:
            raise ValueError(f"snapshot at iteration {iteration} already holds a mapping pick")
        return forked
    if mapping == "random" and iteration <= t3 and state["picked"] is not None:
        return {**forked, "accumulator": None, "mapping": None}
    if mapping == saved_mode and iteration <= t3:
        return forked
    raise ValueError(
        f"a snapshot at iteration {iteration} (T2={t2}, T3={t3}, mode {saved_mode}) cannot start a "
        f"clda.mapping={mapping} run: fork similarity modes at T2, random at T3"
    )
