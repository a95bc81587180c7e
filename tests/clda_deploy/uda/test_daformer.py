import copy

import torch
from torch import nn

from clda_deploy import build_segmenter
from clda_deploy.config import load_config
from clda_deploy.uda.daformer import DAFormerTask
from clda_deploy.uda.pseudo_label import teacher_logits

SMALL = ["model.encoder=mit_cpu_student", "model.head_channels=32"]


def task_and_images(*extra):
    cfg = load_config(None, [*SMALL, *extra])
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.encoder, cfg.model.head, cfg.model.num_classes, head_channels=32)
    task = DAFormerTask(cfg, model)
    # Running statistics far from any batch's, so batch and running normalisation disagree.
    for module in task.teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.fill_(3.0)
            module.running_var.fill_(9.0)
    return task, torch.randn(2, 3, 64, 64)


def test_teacher_uses_running_statistics_when_batch_stats_are_off():
    task, images = task_and_images("uda.teacher_batch_stats=false")
    with torch.no_grad():
        expected = task.teacher(images)
    torch.testing.assert_close(teacher_logits(task.teacher, images, task.cfg.teacher_batch_stats), expected)


def test_teacher_batch_stats_normalise_with_the_target_batch_and_leave_running_stats():
    task, images = task_and_images()  # the default, as DAFormer's train-mode teacher
    before = copy.deepcopy(task.teacher.state_dict())
    reference = copy.deepcopy(task.teacher)
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.train()  # batch statistics; dropout stays off
    with torch.no_grad():
        expected, running = reference(images), task.teacher(images)
    logits = teacher_logits(task.teacher, images, task.cfg.teacher_batch_stats)
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, running), "batch and running statistics must give different logits here"
    assert not task.teacher.training and not any(m.training for m in task.teacher.modules())
    for name, tensor in task.teacher.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=name)
