"""DAFormer self-training (Hoyer et al. 2022), with HRDA's two scales and MIC's masked target as
options, and the supervised baselines, as loop tasks.

One DAFormer step (the recipe DESIGN §7 fixes):
1. pseudo-labels from the EMA teacher on the clean target batch (no gradient reaches it);
2. ClassMix: half the classes of each source label pasted onto a target image, labels and
   pixel weights mixed the same way (source pixels weight 1, target pixels q);
3. colour jitter + Gaussian blur on the mixed images only;
4. one forward of [source; mixed] (one forward keeps DDP's one-forward-per-backward rule; BatchNorm
   in the head then sees both halves at once, a small departure from DAFormer's two forwards);
5. loss = CE(source) + q-weighted CE(mixed) [+ MIC: q-weighted CE(masked target) against the clean
   target's pseudo-labels] [+ lambda * thing-class ImageNet feature distance]; with ``uda.method``
   hrda each CE is HRDA's fused + detail loss (``clda_deploy.uda.scales``) and the pseudo-labels come
   from the teacher's sliding multi-resolution inference;
6. after the optimizer step: EMA teacher <- student with alpha_t = min(1 - 1/(t+1), 0.999).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from clda_deploy.config import Config
from clda_deploy.losses import masked_feature_distance
from clda_deploy.models.hrda import HRDAOutput
from clda_deploy.uda.ema import copy_model, ema_alpha, ema_update
from clda_deploy.uda.masking import masked_images
from clda_deploy.uda.mixing import mix_with_pseudo_labels
from clda_deploy.uda.pseudo_label import pseudo_labels, teacher_logits
from clda_deploy.uda.scales import SingleScale, TrainForward, build_train_forward
from clda_deploy.uda.task import Batch

log = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


class SupervisedTask:
    """Baselines: ``source_only`` (CE on source) or ``oracle`` (CE on target-train labels), with the
    configured scheme's forward and loss (one scale, or HRDA's two)."""

    target_labels = False

    def __init__(self, domain: str, train_forward: TrainForward | None = None) -> None:
        if domain not in ("source", "target"):
            raise ValueError(f"supervised domain must be 'source' or 'target', got {domain!r}")
        self.domains = (domain,)
        self.target_labels = domain == "target"
        self.forward = train_forward or SingleScale()

    def losses(self, model: nn.Module, batch: Batch, iteration: int) -> dict[str, Tensor]:
        data = batch[self.domains[0]]
        loss = self.forward.loss(self.forward(model, data["image"]), slice(None), data["label"])
        return {"loss": loss, f"{self.domains[0]}_ce": loss.detach()}

    def after_step(self, model: nn.Module, iteration: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"forward": self.forward.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.forward.load_state_dict(state.get("forward", {}))


class DAFormerTask:
    """Self-training with an EMA teacher, ClassMix and the ImageNet feature distance."""

    domains = ("source", "target")
    target_labels = False

    def __init__(self, cfg: Config, model: nn.Module, seed: int = 0) -> None:
        self.cfg = cfg.uda
        self.crop_height = cfg.data.crop[0]
        self.teacher = copy_model(model).eval()  # the EMA ("mean") teacher: weights only, no grads
        self.generator = torch.Generator().manual_seed(seed)
        self.forward = build_train_forward(cfg, seed)  # one scale, or HRDA's context + detail crop
        self.imagenet = self._imagenet_encoder(cfg)
        if self.imagenet is not None:
            self.imagenet.to(next(model.parameters()).device)
        self._features: list[Tensor] = []

    @staticmethod
    def _imagenet_encoder(cfg: Config) -> nn.Module | None:
        """The frozen ImageNet encoder of the feature distance; off without pretrained weights."""
        if cfg.uda.imnet_feature_dist <= 0:
            return None
        if not cfg.model.pretrained:
            log.info(
                "ImageNet feature distance off: model.pretrained is not set (it regularises towards "
                "ImageNet features, meaningless for a randomly initialised encoder)"
            )
            return None
        from clda_deploy.models.encoders import build_encoder

        return copy_model(build_encoder(cfg.model.encoder, pretrained=cfg.model.pretrained)).eval()

    @torch.no_grad()
    def _mixed_batch(self, source: dict[str, Any], target: dict[str, Any]) -> dict[str, Tensor]:
        """Steps 1-3 (and MIC's masked target): mixed images, labels, weights, q and the pseudo-labels."""
        cfg = self.cfg
        logits = teacher_logits(self.teacher, target["image"], cfg.teacher_batch_stats)  # HRDA: sliding detail
        labels, weight, _ = pseudo_labels(logits, cfg.pseudo_threshold, cfg.ignore_top, cfg.ignore_bottom,
                                          reference_height=512, ignore_left=cfg.ignore_left,
                                          ignore_right=cfg.ignore_right)  # fmt: skip
        images, mixed_labels, mixed_weight = mix_with_pseudo_labels(
            source, target["image"], labels, weight, cfg, self.generator
        )
        batch = {"images": images, "labels": mixed_labels, "weight": mixed_weight, "q": weight.amax(),
                 "pseudo_labels": labels, "pseudo_weight": weight}  # fmt: skip
        if cfg.mic:
            batch["masked"] = masked_images(target["image"], cfg, self.generator)
        return batch

    def _feature_distance(self, output: Any, source: dict[str, Any], count: int) -> Tensor:
        """DAFormer's thing-class ImageNet feature distance on the source rows (HRDA: its context features)."""
        features = output.context_features[-1] if isinstance(output, HRDAOutput) else self._features[0]
        with torch.no_grad():
            reference = self.imagenet(self.forward.context_images(source["image"]))[-1]
        return masked_feature_distance(features[:count], reference, source["label"])

    def losses(self, model: nn.Module, batch: Batch, iteration: int) -> dict[str, Tensor]:
        source, target = batch["source"], batch["target"]
        mixed = self._mixed_batch(source, target)
        count, mixed_count = source["image"].shape[0], mixed["images"].shape[0]
        parts = [source["image"], mixed["images"]] + ([mixed["masked"]] if "masked" in mixed else [])
        hook = None
        if self.imagenet is not None and self.cfg.method != "hrda":
            self._features.clear()
            hook = unwrap(model).encoder.register_forward_hook(lambda m, i, out: self._features.append(out[-1]))
        try:
            output = self.forward(model, torch.cat(parts))  # one forward (DDP) for every loss below
        finally:
            if hook is not None:
                hook.remove()
        source_ce = self.forward.loss(output, slice(0, count), source["label"])
        mix_rows = slice(count, count + mixed_count)
        mix_ce = self.forward.loss(output, mix_rows, mixed["labels"], mixed["weight"])
        out = {"source_ce": source_ce.detach(), "mix_ce": mix_ce.detach(), "pseudo_weight": mixed["q"]}
        total = source_ce + mix_ce
        if "masked" in mixed:  # MIC: the masked target learns the clean target's pseudo-labels, same q
            masked_rows = slice(count + mixed_count, None)
            masked_ce = self.forward.loss(output, masked_rows, mixed["pseudo_labels"], mixed["pseudo_weight"])
            total = total + self.cfg.mic_weight * masked_ce
            out["masked_ce"] = masked_ce.detach()
        if self.imagenet is not None:
            distance = self._feature_distance(output, source, count)
            total = total + self.cfg.imnet_feature_dist * distance
            out["feature_dist"] = distance.detach()
        out["loss"] = total
        return out

    def after_step(self, model: nn.Module, iteration: int) -> None:
        # DAFormer updates the teacher at the start of step t+1 with alpha_{t+1}; same thing.
        ema_update(self.teacher, unwrap(model), ema_alpha(iteration + 1, self.cfg.ema_alpha))

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "generator": self.generator.get_state(),
                "forward": self.forward.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.generator.set_state(state["generator"])
        self.forward.load_state_dict(state.get("forward", {}))


def build_teacher_task(cfg: Config, model: nn.Module, seed: int) -> DAFormerTask | SupervisedTask:
    """The task ``uda.mode`` names: daformer, source_only or oracle."""
    if cfg.uda.mode == "daformer":
        return DAFormerTask(cfg, model, seed)
    return SupervisedTask("source" if cfg.uda.mode == "source_only" else "target", build_train_forward(cfg, seed))
