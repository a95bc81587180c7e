"""The CLDA student command end to end on a tiny SynthCity (smoke teacher -> smoke student)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_testkit import CONFIGS, synthcity_overrides

from clda_deploy.artifacts import CHECKPOINT_FILE
from clda_deploy.checkpoint import load_segmenter
from clda_deploy.config import load_config
from training.loop import Trainer
from training.student import prepare_student, train_student


def student_config(root: Path, *extra: str):
    return load_config(CONFIGS / "smoke_student.yaml", [*synthcity_overrides(root), *extra])


def test_student_writes_files_and_only_mapped_blocks_change(tiny_synthcity, smoke_teacher, tmp_path):
    run = tmp_path / "student"
    result, student, teacher = train_student(student_config(tiny_synthcity), str(smoke_teacher), run)
    assert result.iteration == 10 and 0 <= student["miou"] <= 100 and 0 <= teacher["miou"] <= 100
    for name in ("model.safetensors", "teacher_updated.safetensors", "saliency.json", "mapping.json",
                 "metrics.json", "teacher_metrics.json", CHECKPOINT_FILE):  # fmt: skip
        assert (run / name).is_file(), name
    saliency = json.loads((run / "saliency.json").read_text())
    assert {"block", "lsr", "delta", "salient"} <= set(saliency[0]) and len(saliency) == 5
    mapping = json.loads((run / "mapping.json").read_text())
    assert mapping and all(m["teacher_block"][:6] == m["student_block"][:6] for m in mapping), "same stage"
    before, after = load_file(str(smoke_teacher)), load_file(str(run / "teacher_updated.safetensors"))
    teacher_model = load_segmenter(smoke_teacher)
    mapped = tuple(teacher_model.block_state_prefix(m["teacher_block"]) + "." for m in mapping)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "S->T updates must change the mapped blocks"
    assert all(name.startswith(mapped) for name in changed), sorted(changed)


def test_model_init_starts_the_student_from_the_given_weights(tiny_synthcity, smoke_teacher, tmp_path):
    from clda_deploy.checkpoint import build_from_config, save_model

    cfg = student_config(tiny_synthcity)
    torch.manual_seed(123)
    start = build_from_config(cfg)
    path = save_model(tmp_path / "init.safetensors", start, cfg, role="student")
    inputs, _ = prepare_student(student_config(tiny_synthcity, f"model.init={path}"), str(smoke_teacher),
                                tmp_path / "run", False)  # fmt: skip
    for name, tensor in start.state_dict().items():
        torch.testing.assert_close(inputs.model.state_dict()[name], tensor, rtol=0, atol=0)


def test_no_gradient_reaches_the_teacher(tiny_synthcity, smoke_teacher, tmp_path):
    inputs, _ = prepare_student(student_config(tiny_synthcity, "clda.t2=0.0"), str(smoke_teacher), tmp_path, False)
    teacher = inputs.task.teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    batch = {d: next(make(0)) for d, make in inputs.streams.items()}
    losses = inputs.task.losses(inputs.model, batch, iteration=2)  # inside stage 2: attention captured too
    losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in inputs.model.parameters())
    assert inputs.task.accumulator is not None and inputs.task.accumulator.updates == 1


def test_resume_restores_accumulator_mapping_and_teacher(tiny_synthcity, smoke_teacher, tmp_path):
    run = tmp_path / "student"
    train_student(student_config(tiny_synthcity, "train.iters=7", "clda.t2=0.3", "clda.t3=0.8"),
                  str(smoke_teacher), run)  # fmt: skip
    saved = torch.load(run / CHECKPOINT_FILE, weights_only=False)["task"]
    inputs, _ = prepare_student(student_config(tiny_synthcity, "train.iters=7", "clda.t2=0.3", "clda.t3=0.8"),
                                str(smoke_teacher), run, resume=True)  # fmt: skip
    Trainer(inputs).resume()
    task = inputs.task
    assert task.mapping == saved["mapping"] and task.picked == saved["picked"]
    assert task.accumulator.state_dict() == saved["accumulator"]
    for name, tensor in saved["teacher"].items():
        torch.testing.assert_close(task.teacher.state_dict()[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["none", "random", "token"])
def test_mapping_modes(tiny_synthcity, smoke_teacher, tmp_path, mode):
    run = tmp_path / mode
    train_student(student_config(tiny_synthcity, f"clda.mapping={mode}", "train.iters=6"), str(smoke_teacher), run)
    assert (run / "mapping.json").exists() == (mode != "none")


def test_incompatible_widths_fail_at_start_naming_the_stage(tiny_synthcity, smoke_teacher, tmp_path):
    with pytest.raises(ValueError, match="stage 1"):
        prepare_student(student_config(tiny_synthcity, "model.encoder=mit_b1"), str(smoke_teacher), tmp_path, False)


def test_the_student_stage_teacher_uses_target_batch_statistics_and_changes_nothing(tiny_synthcity, smoke_teacher,
                                                                                  tmp_path):  # fmt: skip
    import copy

    from torch import nn

    results = {}
    for flag in ("true", "false"):
        inputs, _ = prepare_student(student_config(tiny_synthcity, f"uda.teacher_batch_stats={flag}"),
                                    str(smoke_teacher), tmp_path / flag, False)  # fmt: skip
        task = inputs.task
        for module in task.teacher.modules():  # running statistics far from any batch's
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.fill_(2.0)
                module.running_var.fill_(9.0)
        before = copy.deepcopy(task.teacher.state_dict())
        images = next(inputs.streams["target"](0))["image"]
        reference = copy.deepcopy(task.teacher)
        if flag == "true":
            for module in reference.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.train()
        with torch.no_grad():
            expected = reference(images)
        logits, _ = task._teacher_forward(images, None)
        torch.testing.assert_close(logits, expected, rtol=0, atol=0)
        for name, tensor in task.teacher.state_dict().items():
            assert torch.equal(tensor, before[name]), name
        assert not any(module.training for module in task.teacher.modules())
        results[flag] = logits
    assert not torch.allclose(results["true"], results["false"]), "batch and running statistics must differ here"


def test_metrics_record_the_teacher_and_the_s_to_t_dose(tiny_synthcity, smoke_teacher, tmp_path):
    from clda_deploy.checkpoint import file_sha256

    run = tmp_path / "student"
    _, student, _ = train_student(student_config(tiny_synthcity, "clda.alpha=0.9"), str(smoke_teacher), run,
                                  evaluate_teacher=False)  # fmt: skip
    record = json.loads((run / "metrics.json").read_text())["clda"]
    assert record == student["clda"] and not (run / "teacher_metrics.json").exists()
    assert record["teacher_sha256"] == file_sha256(smoke_teacher)
    assert record["teacher_miou"] == json.loads((smoke_teacher.parent / "metrics.json").read_text())["miou"]
    assert (record["t2"], record["t3"], record["update_steps"]) == (2, 5, 5)
    assert record["blend_fraction"] == pytest.approx(1 - 0.9**5)
    assert 0 < record["lr_share_after_t3"] < 1 and 0 <= record["pseudo_weight_mean"] <= 1
    assert record["mapping"] and record["saliency_data"] == "heldout"
    saliency = json.loads((run / "saliency.json").read_text())
    assert all(row["delta_source"] is not None and row["rule"] == "abs" for row in saliency)


def test_teacher_init_and_student_mixing_train(tiny_synthcity, smoke_teacher, tmp_path):
    from safetensors.torch import load_file

    inputs, _ = prepare_student(student_config(tiny_synthcity, "clda.student_init=teacher"), str(smoke_teacher),
                                tmp_path / "init", False)  # fmt: skip
    teacher = load_file(str(smoke_teacher))  # the smoke teacher has the student's depths: an exact copy
    for name, tensor in inputs.model.state_dict().items():
        assert torch.equal(tensor, teacher[name]), name
    assert json.loads((tmp_path / "init" / "student_init.json").read_text())["stage3.block01"] == "stage3.block01"
    run = tmp_path / "mixing"
    result, student, _ = train_student(student_config(tiny_synthcity, "clda.student_mixing=true", "train.iters=6"),
                                       str(smoke_teacher), run)  # fmt: skip
    assert result.iteration == 6 and (run / "mapping.json").is_file()
    resumed, _ = prepare_student(student_config(tiny_synthcity, "clda.student_mixing=true", "train.iters=6"),
                                 str(smoke_teacher), run, resume=True)  # fmt: skip
    Trainer(resumed).resume()
    saved = torch.load(run / CHECKPOINT_FILE, weights_only=False)["task"]
    assert torch.equal(resumed.task.generator.get_state(), saved["generator"])


def test_model_init_and_teacher_init_together_are_refused(tiny_synthcity, smoke_teacher):
    from clda_deploy.config import ConfigError
    from training.student import run_student

    cfg = student_config(tiny_synthcity, f"model.init={smoke_teacher}", "clda.student_init=teacher")
    with pytest.raises(ConfigError, match="choose one"):
        run_student(cfg, str(smoke_teacher), Path("unused"))


def test_resume_refuses_another_teacher_file(tiny_synthcity, smoke_teacher, tmp_path):
    from clda_deploy.checkpoint import load_segmenter, read_config, save_model

    run = tmp_path / "student"
    cfg = student_config(tiny_synthcity, "train.iters=4")
    train_student(cfg, str(smoke_teacher), run, evaluate_teacher=False)
    other = save_model(tmp_path / "other.safetensors", load_segmenter(smoke_teacher), read_config(smoke_teacher),
                       role="teacher", extra={"note": "same weights, another file"})  # fmt: skip
    inputs, _ = prepare_student(student_config(tiny_synthcity, "train.iters=6"), str(other), run, resume=True)
    with pytest.raises(ValueError, match="trained from teacher sha256"):
        Trainer(inputs).resume()


def test_heldout_saliency_on_an_unlabelled_target_is_refused_with_the_fix(tiny_synthcity, monkeypatch):
    import clda_deploy.data as data
    from clda_deploy.config import ConfigError
    from training.student import saliency_batches

    build = data.build_dataset
    monkeypatch.setattr(data, "build_dataset", lambda cfg, **kwargs: build(cfg, **{**kwargs, "labels": False}))
    with pytest.raises(ConfigError, match="saliency_data=agreement"):
        saliency_batches(student_config(tiny_synthcity, "clda.saliency_data=heldout"), {})
