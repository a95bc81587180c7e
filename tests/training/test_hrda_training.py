"""HRDA and MIC through the training commands on a tiny SynthCity: teacher, resume, two gloo ranks,
config errors, and a CLDA student of an HRDA teacher."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_testkit import CONFIGS, synthcity_overrides

from clda_deploy.artifacts import CHECKPOINT_FILE, MODEL_FILE
from clda_deploy.checkpoint import load_segmenter
from clda_deploy.config import ConfigError, load_config
from clda_deploy.models.hrda import HRDASegmenter
from training.loop import Trainer
from training.student import train_student
from training.teacher import train_teacher

REPO = Path(__file__).resolve().parents[2]


def hrda_config(root: Path, *extra: str):
    return load_config(CONFIGS / "smoke_hrda_teacher.yaml", [*synthcity_overrides(root), *extra])


@pytest.fixture(scope="module")
def hrda_teacher(tiny_synthcity, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("hrda_teacher")
    train_teacher(hrda_config(tiny_synthcity), run)
    return run


def test_hrda_mic_teacher_logs_every_loss_and_writes_an_hrda_model(hrda_teacher):
    lines = [json.loads(line) for line in (hrda_teacher / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3, 4]
    assert {"source_ce", "mix_ce", "masked_ce", "pseudo_weight", "loss"} <= set(lines[0])
    model = load_segmenter(hrda_teacher / MODEL_FILE)
    assert isinstance(model, HRDASegmenter) and model.detail_crop == (32, 32)
    assert 0 <= json.loads((hrda_teacher / "metrics.json").read_text())["miou"] <= 100


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
def test_two_gloo_ranks_train_hrda_mic_identically(tiny_synthcity, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537",
               str(worker), str(tiny_synthcity), str(tmp_path), "uda.method=hrda", "uda.mic=true",
               "uda.mic_block=4"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "weights0.pt"), torch.load(tmp_path / "weights1.pt")
    assert any(name.startswith("attention_head.") for name in rank0)
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.crop=[60,60]"], "data.crop: uda.method hrda needs multiples of hrda.divisible=8"),
        (["hrda.detail_crop=[128,128]"], "hrda.detail_crop [128, 128] must fit inside data.crop [64, 64]"),
        (["hrda.context_scale=1.5"], "hrda.context_scale: must be in (0, 1)"),
        (["hrda.detail_loss_weight=2"], "hrda.detail_loss_weight: must be in [0, 1]"),
        (["uda.method=hrdaa"], "uda.method: 'hrdaa' is not a valid choice; choose one of ['daformer', 'hrda']"),
        (["uda.mic_ratio=1.0"], "uda.mic: need mic_block > 0, 0 <= mic_ratio < 1"),
        (["eval.mode=slide", "eval.stride=[30,30]"], "eval.stride: uda.method hrda needs multiples"),
    ],
)
def test_hrda_and_mic_config_errors_name_the_key(tiny_synthcity, extra, message):
    with pytest.raises(ConfigError) as error:
        hrda_config(tiny_synthcity, *extra)
    assert message in str(error.value)


def test_a_clda_student_learns_from_an_hrda_teacher_and_updates_its_blocks(tiny_synthcity, hrda_teacher, tmp_path):
    cfg = load_config(CONFIGS / "smoke_hrda_student.yaml", [*synthcity_overrides(tiny_synthcity),
                                                               "clda.student_init=teacher"])  # fmt: skip
    run = tmp_path / "student"
    teacher_file = hrda_teacher / MODEL_FILE
    result, student, teacher = train_student(cfg, str(teacher_file), run)
    assert result.iteration == 10 and 0 <= student["miou"] <= 100 and 0 <= teacher["miou"] <= 100
    assert isinstance(load_segmenter(run / MODEL_FILE), HRDASegmenter)
    mapping = json.loads((run / "mapping.json").read_text())
    assert mapping and student["clda"]["mapped_blocks"] == len(mapping)
    before = load_segmenter(teacher_file).state_dict()
    after = load_segmenter(run / "teacher_updated.safetensors").state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(".blocks." in name or "block" in name for name in changed), sorted(changed)[:5]


def test_an_hrda_student_resumes_its_mapping_teacher_and_detail_box_stream(tiny_synthcity, hrda_teacher, tmp_path):
    from training.student import prepare_student

    extra = [*synthcity_overrides(tiny_synthcity), "train.iters=7", "clda.t2=0.3", "clda.t3=0.8"]
    cfg = load_config(CONFIGS / "smoke_hrda_student.yaml", extra)
    run, teacher_file = tmp_path / "student", str(hrda_teacher / MODEL_FILE)
    train_student(cfg, teacher_file, run, evaluate_teacher=False)
    saved = torch.load(run / CHECKPOINT_FILE, weights_only=False)["task"]
    inputs, _ = prepare_student(cfg, teacher_file, run, resume=True)
    Trainer(inputs).resume()
    task = inputs.task
    assert task.picked == saved["picked"] and task.accumulator.state_dict() == saved["accumulator"]
    assert torch.equal(task.forward.generator.get_state(), saved["forward"]["generator"])
    for name, tensor in saved["teacher"].items():
        torch.testing.assert_close(task.teacher.state_dict()[name], tensor, rtol=0, atol=0)
