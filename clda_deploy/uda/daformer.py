"""DAFormer self-training (Hoyer et al. 2022) and the supervised baselines, as loop tasks.

One DAFormer step (the recipe DESIGN §7 fixes):
1. pseudo-labels from the EMA teacher on the clean target batch (no gradient reaches it);
2. ClassMix: half the classes of each source label pasted onto a target image, labels and
   pixel weights mixed the same way (source pixels weight 1, target pixels q);
3. colour jitter + Gaussian blur on the mixed images only;
4. one forward of [source; mixed] (one forward keeps DDP's one-forward-per-backward rule; BatchNorm
   in the head then sees both halves at once, a small departure from DAFormer's two forwards);
5. loss = CE(source) + q-weighted CE(mixed) [+ lambda * thing-class ImageNet feature distance];
6. after the optimizer step: EMA teacher <- student with alpha_t = min(1 - 1/(t+1), 0.999).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from clda_deploy.config import Config
from clda_deploy.losses import masked_feature_distance, pixel_weighted_cross_entropy
from clda_deploy.uda.ema import copy_model, ema_alpha, ema_update
from clda_deploy.uda.mixing import mix_with_pseudo_labels
from clda_deploy.uda.pseudo_label import pseudo_labels, teacher_logits
from clda_deploy.uda.task import Batch

log = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


class SupervisedTask:
    """Baselines: ``source_only`` (CE on source) or ``oracle`` (CE on target-train labels)."""

    target_labels = False

    def __init__(self, domain: str) -> None:
        if domain not in ("source", "target"):
            raise ValueError(f"supervised domain must be 'source' or 'target', got {domain!r}")
        self.domains = (domain,)
        self.target_labels = domain == "target"

    def losses(self, model: nn.Module, batch: Batch, iteration: int) -> dict[str, Tensor]:
        data = batch[self.domains[0]]
        loss = pixel_weighted_cross_entropy(model(data["image"]), data["label"])
        return {"loss": loss, f"{self.domains[0]}_ce": loss.detach()}

    def after_step(self, model: nn.Module, iteration: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class DAFormerTask:
    """Self-training with an EMA teacher, ClassMix and the ImageNet feature distance."""

    domains = ("source", "target")
    target_labels = False

    def __init__(self, cfg: Config, model: nn.Module, seed: int = 0) -> None:
        self.cfg = cfg.uda
        self.crop_height = cfg.data.crop[0]
        self.teacher = copy_model(model).eval()  # the EMA ("mean") teacher: weights only, no grads
        self.generator = torch.Generator().manual_seed(seed)
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
    def _mixed_batch(self, source: dict[str, Any], target: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Steps 1-3: (mixed images, mixed labels, mixed weights, q)."""
        cfg = self.cfg
        logits = teacher_logits(self.teacher, target["image"], cfg.teacher_batch_stats)
        labels, weight, _ = pseudo_labels(logits, cfg.pseudo_threshold, cfg.ignore_top, cfg.ignore_bottom,
                                          reference_height=512)  # fmt: skip
        images, mixed_labels, mixed_weight = mix_with_pseudo_labels(
            source, target["image"], labels, weight, cfg, self.generator
        )
        return images, mixed_labels, mixed_weight, weight.amax()

    def losses(self, model: nn.Module, batch: Batch, iteration: int) -> dict[str, Tensor]:
        source, target = batch["source"], batch["target"]
        images, mixed_labels, mixed_weight, share = self._mixed_batch(source, target)
        count = source["image"].shape[0]
        hook = None
        if self.imagenet is not None:
            self._features.clear()
            hook = unwrap(model).encoder.register_forward_hook(lambda m, i, out: self._features.append(out[-1]))
        try:
            logits = model(torch.cat([source["image"], images]))
        finally:
            if hook is not None:
                hook.remove()
        source_ce = pixel_weighted_cross_entropy(logits[:count], source["label"])
        mix_ce = pixel_weighted_cross_entropy(logits[count:], mixed_labels, mixed_weight)
        out = {"source_ce": source_ce.detach(), "mix_ce": mix_ce.detach(), "pseudo_weight": share}
        total = source_ce + mix_ce
        if self.imagenet is not None:
            with torch.no_grad():
                reference = self.imagenet(source["image"])[-1]
            distance = masked_feature_distance(self._features[0][:count], reference, source["label"])
            total = total + self.cfg.imnet_feature_dist * distance
            out["feature_dist"] = distance.detach()
        out["loss"] = total
        return out

    def after_step(self, model: nn.Module, iteration: int) -> None:
        # DAFormer updates the teacher at the start of step t+1 with alpha_{t+1}; same thing.
        ema_update(self.teacher, unwrap(model), ema_alpha(iteration + 1, self.cfg.ema_alpha))

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.generator.set_state(state["generator"])


def build_teacher_task(cfg: Config, model: nn.Module, seed: int) -> DAFormerTask | SupervisedTask:
    """The task ``uda.mode`` names: daformer, source_only or oracle."""
    if cfg.uda.mode == "daformer":
        return DAFormerTask(cfg, model, seed)
    return SupervisedTask("source" if cfg.uda.mode == "source_only" else "target")
