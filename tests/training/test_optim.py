import pytest
import torch
from torch import nn

from clda_deploy.config import TrainConfig
from training.optim import build_optimizer, lr_factor, norm_parameter_names


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
        self.head = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))


def test_param_groups_head_lr_and_no_decay_on_norms():
    cfg = TrainConfig(lr=1e-3, weight_decay=0.01, head_lr_mult=10.0)
    model = Tiny()
    assert norm_parameter_names(model) == {"encoder.1.weight", "encoder.1.bias", "head.1.weight", "head.1.bias"}
    optimizer = build_optimizer(model, cfg)
    by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["encoder.0.weight"])]["lr"] == pytest.approx(1e-3)
    assert by_id[id(named["encoder.0.weight"])]["weight_decay"] == 0.01
    assert by_id[id(named["encoder.1.weight"])]["weight_decay"] == 0.0
    assert by_id[id(named["head.0.weight"])]["lr"] == pytest.approx(1e-2)
    assert by_id[id(named["head.1.bias"])]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)


def test_warmup_then_poly_golden_values():
    cfg = TrainConfig(iters=100, warmup_iters=10, warmup_ratio=0.0, poly_power=1.0)
    assert lr_factor(0, cfg) == pytest.approx(0.0)
    # mmcv: regular = (1 - 5/100) = 0.95; warmup k = (1 - 5/10) -> factor 0.95 * 0.5
    assert lr_factor(5, cfg) == pytest.approx(0.475)
    assert lr_factor(10, cfg) == pytest.approx(0.9)
    assert lr_factor(50, cfg) == pytest.approx(0.5)
    assert lr_factor(100, cfg) == pytest.approx(0.0)
    squared = TrainConfig(iters=100, warmup_iters=0, poly_power=2.0)
    assert lr_factor(50, squared) == pytest.approx(0.25)


def test_scheduler_drives_all_groups():
    from training.optim import build_scheduler

    cfg = TrainConfig(lr=1.0, iters=4, warmup_iters=0, head_lr_mult=2.0)
    optimizer = build_optimizer(Tiny(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    optimizer.step()
    scheduler.step()
    lrs = sorted({round(g["lr"], 6) for g in optimizer.param_groups})
    assert lrs == [0.75, 1.5]
    assert torch.is_tensor(optimizer.param_groups[0]["params"][0])


def test_lr_share_after_t3_is_the_summed_schedule_from_that_step() -> None:
    from clda_deploy.config import TrainConfig
    from training.optim import lr_factor, lr_share_after

    cfg = TrainConfig(iters=10, warmup_iters=0, lr=1.0)
    assert lr_share_after(0, cfg) == pytest.approx(1.0) and lr_share_after(10, cfg) == 0.0
    # poly(1.0) without warmup: factors 1.0, 0.9, ..., 0.1 sum to 5.5; from step 4: 0.6 + ... + 0.1 = 2.1
    assert lr_share_after(4, cfg) == pytest.approx(2.1 / 5.5)
    warm = TrainConfig(iters=600, warmup_iters=60, lr=1.0)
    shares = [lr_share_after(start, warm) for start in (0, 120, 180, 240, 600)]
    assert shares == sorted(shares, reverse=True)
    assert shares[2] == pytest.approx(sum(lr_factor(t, warm) for t in range(180, 600)) / sum(
        lr_factor(t, warm) for t in range(600)))  # fmt: skip
