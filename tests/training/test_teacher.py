"""The teacher command end to end on a tiny SynthCity: files, resume, interrupts, baselines, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clda_deploy import load_segmenter
from clda_deploy.artifacts import CHECKPOINT_FILE
from clda_deploy.checkpoint import read_metadata
from clda_deploy.config import load_config
from training.loop import Trainer
from training.teacher import prepare_teacher, train_teacher

REPO = Path(__file__).resolve().parents[2]
SMOKE_TEACHER = str(REPO / "training" / "configs" / "smoke_teacher.yaml")


def data_overrides(root: Path) -> list[str]:
    return [f"data.source.root={root / 'source'}", f"data.target.root={root / 'target'}",
            f"data.val.root={root / 'target'}"]  # fmt: skip


def smoke_config(root, *extra, config=SMOKE_TEACHER):
    return load_config(config, [*data_overrides(root), *extra])


def default_sigint() -> None:
    """In the child: SIGINT as a terminal delivers it. A test run started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "training", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint, **kwargs)  # fmt: skip


def test_teacher_writes_the_run_files(tiny_synthcity, tmp_path):
    run = tmp_path / "teacher"
    result, metrics = train_teacher(smoke_config(tiny_synthcity), run)
    assert result.iteration == 4 and not result.interrupted
    for name in ("config.yaml", CHECKPOINT_FILE, "model.safetensors", "metrics.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1, 2, 3, 4]
    assert {"loss", "source_ce", "mix_ce", "pseudo_weight", "lr", "it_per_s"} <= set(lines[0])
    assert set(metrics) >= {"miou", "per_class_iou", "num_images", "dataset", "checkpoint"}
    model = load_segmenter(str(run / "model.safetensors"))
    torch.testing.assert_close(
        model.state_dict()["head.conv_seg.weight"], result.model.state_dict()["head.conv_seg.weight"]
    )
    assert read_metadata(run / "model.safetensors")["clda_role"] == "teacher"


@pytest.mark.parametrize("config", [SMOKE_TEACHER, SMOKE_TEACHER.replace("smoke_teacher", "smoke_hrda_teacher")])
def test_resume_restores_iteration_model_and_ema_teacher(tiny_synthcity, tmp_path, config):
    """DAFormer, and HRDA with MIC (whose detail-box stream must resume too)."""
    run = tmp_path / "teacher"
    train_teacher(smoke_config(tiny_synthcity, "train.iters=2", config=config), run)
    saved = torch.load(run / CHECKPOINT_FILE, weights_only=False)
    inputs, _ = prepare_teacher(smoke_config(tiny_synthcity, "train.iters=4", config=config), run, resume=True)
    trainer = Trainer(inputs)
    trainer.resume()
    assert trainer.iteration == saved["iteration"] == 2
    assert inputs.task.forward.state_dict().keys() == saved["task"]["forward"].keys()
    for key, value in saved["task"]["forward"].items():
        assert torch.equal(inputs.task.forward.state_dict()[key], value)
    for name, tensor in saved["task"]["teacher"].items():
        torch.testing.assert_close(inputs.task.teacher.state_dict()[name], tensor, rtol=0, atol=0)
    for name, tensor in saved["model"].items():
        torch.testing.assert_close(inputs.model.state_dict()[name], tensor, rtol=0, atol=0)
    assert trainer.scheduler.last_epoch == 2
    result = trainer.run()
    assert result.iteration == 4


def test_resume_refuses_a_different_config(tiny_synthcity, tmp_path):
    from clda_deploy.config import ConfigError

    run = tmp_path / "teacher"
    train_teacher(smoke_config(tiny_synthcity, "train.iters=1"), run)
    with pytest.raises(ConfigError, match=r"train.lr: 0.0006 -> 0.1"):
        prepare_teacher(smoke_config(tiny_synthcity, "train.lr=0.1"), run, resume=True)


def wait_for_checkpoint(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


def test_sigkill_then_resume_reaches_the_iteration_count(tiny_synthcity, tmp_path):
    run = tmp_path / "teacher"
    args = ["teacher", "-c", SMOKE_TEACHER, "--out", str(run), "--set", *data_overrides(tiny_synthcity),
            "train.iters=30", "train.checkpoint_every=3"]  # fmt: skip
    process = run_cli(args)
    wait_for_checkpoint(run / CHECKPOINT_FILE, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = torch.load(run / CHECKPOINT_FILE, weights_only=False)["iteration"]
    assert 3 <= killed_at < 30
    resumed = run_cli([*args, "--resume"])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resumed from {run / CHECKPOINT_FILE} at iteration {killed_at}" in out
    assert read_metadata(run / "model.safetensors")["clda_iteration"] == "30"
    assert torch.load(run / CHECKPOINT_FILE, weights_only=False)["iteration"] == 30


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_writes_a_checkpoint(tiny_synthcity, tmp_path, sig):
    run = tmp_path / "teacher"
    args = ["teacher", "-c", SMOKE_TEACHER, "--out", str(run), "--set", *data_overrides(tiny_synthcity),
            "train.iters=100000", "train.checkpoint_every=2"]  # fmt: skip
    process = run_cli(args)
    wait_for_checkpoint(run / CHECKPOINT_FILE, process)
    first = torch.load(run / CHECKPOINT_FILE, weights_only=False)["iteration"]
    time.sleep(1.0)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "continue with --resume" in out
    assert torch.load(run / CHECKPOINT_FILE, weights_only=False)["iteration"] >= first


def test_model_init_starts_model_and_ema_teacher_from_the_given_weights(tiny_synthcity, tmp_path):
    source_only = tmp_path / "source_only"
    train_teacher(smoke_config(tiny_synthcity, "uda.mode=source_only", "train.iters=2"), source_only)
    init = source_only / "model.safetensors"
    start = load_segmenter(str(init)).state_dict()
    inputs, _ = prepare_teacher(smoke_config(tiny_synthcity, f"model.init={init}"), tmp_path / "daformer", False)
    for name, tensor in start.items():
        torch.testing.assert_close(inputs.model.state_dict()[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(inputs.task.teacher.state_dict()[name], tensor, rtol=0, atol=0)
    fresh, _ = prepare_teacher(smoke_config(tiny_synthcity), tmp_path / "fresh", False)
    name = "head.conv_seg.weight"
    assert not torch.equal(fresh.model.state_dict()[name], start[name]), "without model.init: random init"


@pytest.mark.parametrize("mode", ["source_only", "oracle"])
def test_baselines_train_through_the_same_loop(tiny_synthcity, tmp_path, mode):
    result, metrics = train_teacher(smoke_config(tiny_synthcity, f"uda.mode={mode}", "train.iters=2"), tmp_path / mode)
    assert result.iteration == 2 and 0 <= metrics["miou"] <= 100
    assert read_metadata(tmp_path / mode / "model.safetensors")["clda_uda_mode"] == mode


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["trian.iters=3"], "unknown key 'trian' (did you mean 'train'?)"),
        (["train.iters=three"], "train.iters: expected an integer, got 'three'"),
        (["data.source.root=/nonexistent/gta"], "data.source.root: dataset folder not found: /nonexistent/gta"),
        (["model.init=/nonexistent/model.safetensors"], "model.init: model file not found: /nonexistent/model"),
    ],
)
def test_bad_configs_fail_fast_naming_the_problem(tiny_synthcity, tmp_path, extra, message):
    start = time.monotonic()
    process = run_cli(["teacher", "-c", SMOKE_TEACHER, "--out", str(tmp_path / "r"), "--set",
                       *data_overrides(tiny_synthcity), *extra])  # fmt: skip
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and message in err
    assert time.monotonic() - start < 5, "config errors must surface before any work"
    assert not (tmp_path / "r").exists()


def test_typo_in_yaml_file_names_the_file(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("trian:\n  iters: 5\n")
    process = run_cli(["teacher", "-c", str(config), "--out", str(tmp_path / "r")])
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "unknown key 'trian'" in err and "typo.yaml" in err


@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs a POSIX system")
def test_two_gloo_ranks_end_identical_and_only_rank0_writes(tiny_synthcity, tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               str(worker), str(tiny_synthcity), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "weights0.pt"), torch.load(tmp_path / "weights1.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
    assert (tmp_path / "run0" / "model.safetensors").is_file()
    assert not (tmp_path / "run1").exists(), "rank 1 must not write run files"


def test_same_seed_same_weights_on_cpu(tiny_synthcity, tmp_path):
    first, _ = train_teacher(smoke_config(tiny_synthcity, "train.iters=2", "uda.rcs=true"), tmp_path / "a")
    second, _ = train_teacher(smoke_config(tiny_synthcity, "train.iters=2", "uda.rcs=true"), tmp_path / "b")
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_missing_pretrained_weights_are_one_error_line(tiny_synthcity, tmp_path):
    process = run_cli(["teacher", "-c", SMOKE_TEACHER, "--out", str(tmp_path / "r"), "--set",
                       *data_overrides(tiny_synthcity), "model.pretrained=/nonexistent/w.pth"])  # fmt: skip
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "Traceback" not in err
    assert (
        err.strip().splitlines()[-1]
        == "error: pretrained weights '/nonexistent/w.pth' not found; give a local file or 'timm:<name>'"
    )
