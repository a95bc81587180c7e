"""AdamW with DAFormer's parameter groups and the warmup + poly learning-rate schedule.

DAFormer (mmseg paramwise_cfg): decode head lr x10, no weight decay on normalisation layers.
Schedule (mmcv): linear warmup from ``lr * warmup_ratio`` over ``warmup_iters``, then
``lr * (1 - t / T) ** power`` (poly 1.0).
"""

from __future__ import annotations

import torch
from torch import nn

from clda_deploy.config import TrainConfig

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of every parameter that belongs to a normalisation layer."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            names.update(f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False))
    return names


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Four groups: (encoder | head) x (decay | no decay); ``lr_mult`` is kept for the schedule."""
    norms = norm_parameter_names(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (name.startswith("head."), name in norms)
            groups.setdefault(key, []).append(parameter)
    param_groups = [
        {
            "params": params,
            "lr": cfg.lr * (cfg.head_lr_mult if is_head else 1.0),
            "weight_decay": 0.0 if is_norm else cfg.weight_decay,
        }
        for (is_head, is_norm), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)


def lr_factor(iteration: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at ``iteration`` (0-based): warmup, then poly decay to 0."""
    poly = (1.0 - min(iteration, cfg.iters) / cfg.iters) ** cfg.poly_power
    if iteration < cfg.warmup_iters:
        k = (1.0 - iteration / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
        return poly * (1.0 - k)
    return poly


def lr_share_after(start: int, cfg: TrainConfig) -> float:
    """The share of the run's summed learning rate that falls on iterations ``>= start``: how much of
    the student's training sees a teacher changed by S->T updates that begin at ``start`` (T3)."""
    factors = [lr_factor(iteration, cfg) for iteration in range(cfg.iters)]
    total = sum(factors)
    return sum(factors[max(start, 0) :]) / total if total > 0 else 0.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda iteration: lr_factor(iteration, cfg))
