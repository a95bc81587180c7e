"""Forking student runs (training/fork.py): what the ablation's shared prefix relies on."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clda_deploy.artifacts import CHECKPOINT_FILE
from clda_deploy.config import load_config
from training.fork import fork_student
from training.loop import snapshot_name
from training.state import load_checkpoint
from training.student import train_student
from training.teacher import train_teacher

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
# T2 = 3 and T3 = 5 of 10 steps; the smoke config marks every block non-salient, so blocks get mapped,
# and with q = 1 the teacher's labels (which S->T changes) drive the student.
SCHEDULE = ["train.iters=10", "clda.t2=0.3", "clda.t3=0.5", "uda.pseudo_threshold=0.01"]  # q = 1: labels count


def overrides(root: Path, *extra: str) -> list[str]:
    return [f"data.source.root={root / 'source'}", f"data.target.root={root / 'target'}",
            f"data.val.root={root / 'target'}", *SCHEDULE, *extra]  # fmt: skip


def student_config(root: Path, *extra: str):
    return load_config(CONFIGS / "smoke_student.yaml", overrides(root, *extra))


@pytest.fixture(scope="module")
def teacher(tiny_synthcity, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fork-teacher")
    train_teacher(load_config(CONFIGS / "smoke_teacher.yaml", [*overrides(tiny_synthcity)[:3], "train.iters=2"]), run)
    return run / "model.safetensors"


@pytest.fixture(scope="module")
def prefix(tiny_synthcity, teacher, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("fork-prefix")
    train_student(student_config(tiny_synthcity), str(teacher), run, evaluate_teacher=False, snapshots=(3, 5))
    return run


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_every_mapping_mode_trains_the_student_identically_up_to_t3(tiny_synthcity, teacher, prefix, tmp_path):
    kd_only = tmp_path / "kd_only"
    train_student(student_config(tiny_synthcity, "clda.mapping=none"), str(teacher), kd_only,
                  evaluate_teacher=False, snapshots=(3, 5))  # fmt: skip
    for point in (3, 5):
        channel, plain = (load_checkpoint(run / snapshot_name(point)) for run in (prefix, kd_only))
        for key, tensor in channel["model"].items():
            assert torch.equal(plain["model"][key], tensor), f"iteration {point}: {key}"
        for key, tensor in channel["task"]["teacher"].items():
            assert torch.equal(plain["task"]["teacher"][key], tensor), f"teacher at {point}: {key}"
    assert load_checkpoint(prefix / snapshot_name(5))["task"]["mapping"], "the T3 snapshot holds the mapping"


def fork_and_train(root, teacher, prefix, run, point, *extra) -> Path:
    cfg = student_config(root, *extra)
    fork_student(prefix / snapshot_name(point), cfg, run)
    train_student(cfg, str(teacher), run, resume=True)
    return run


def test_forks_of_one_snapshot_differ_only_in_what_their_configs_change(tiny_synthcity, teacher, prefix, tmp_path):
    root = tiny_synthcity
    none = fork_and_train(root, teacher, prefix, tmp_path / "none", 5, "clda.mapping=none")
    frozen = fork_and_train(root, teacher, prefix, tmp_path / "frozen", 5, "clda.alpha=1.0")  # S->T keeps the teacher
    moving = fork_and_train(root, teacher, prefix, tmp_path / "moving", 5, "clda.alpha=0.5")
    again = fork_and_train(root, teacher, prefix, tmp_path / "again", 5, "clda.alpha=0.5")
    first, second = weights(none / "model.safetensors"), weights(frozen / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first), "alpha 1 must train exactly as KD only"
    third, fourth = weights(moving / "model.safetensors"), weights(again / "model.safetensors")
    assert all(torch.equal(third[k], fourth[k]) for k in third), "a fork is deterministic"
    assert not all(torch.equal(first[k], third[k]) for k in first), "a moving teacher changes the student"
    assert (none / "mapping.json").exists() is False and (moving / "mapping.json").is_file()


def test_random_and_token_forks_run_from_t3_and_t2(tiny_synthcity, teacher, prefix, tmp_path):
    random_run = fork_and_train(tiny_synthcity, teacher, prefix, tmp_path / "random", 5, "clda.mapping=random")
    token_run = fork_and_train(tiny_synthcity, teacher, prefix, tmp_path / "token", 3, "clda.mapping=token")
    assert (random_run / "mapping.json").is_file() and (token_run / "mapping.json").is_file()
    assert load_checkpoint(token_run / CHECKPOINT_FILE)["task"]["mapping"]


def test_a_fork_that_changes_anything_else_is_refused(tiny_synthcity, prefix, tmp_path):
    with pytest.raises(ValueError, match="train.lr"):
        fork_student(prefix / snapshot_name(5), student_config(tiny_synthcity, "train.lr=1e-3"), tmp_path / "x")
    assert not (tmp_path / "x" / CHECKPOINT_FILE).exists()


def test_a_similarity_mode_cannot_fork_after_t2(tiny_synthcity, prefix, tmp_path):
    with pytest.raises(ValueError, match="fork similarity modes at T2"):
        fork_student(prefix / snapshot_name(5), student_config(tiny_synthcity, "clda.mapping=both"), tmp_path / "x")


def test_another_saliency_rule_forks_only_at_t2(tiny_synthcity, teacher, tmp_path):
    labelled = ["clda.saliency_data=heldout", "train.iters=6", "clda.t2=0.34", "clda.t3=0.5"]  # T2 = 2, T3 = 3
    run = tmp_path / "prefix"
    train_student(student_config(tiny_synthcity, *labelled), str(teacher), run, evaluate_teacher=False,
                  snapshots=(2, 3))  # fmt: skip
    signed = student_config(tiny_synthcity, *labelled, "clda.saliency_rule=signed")
    with pytest.raises(ValueError, match="fork at T2"):
        fork_student(run / snapshot_name(3), signed, tmp_path / "late")
    fork_student(run / snapshot_name(2), signed, tmp_path / "signed")
    train_student(signed, str(teacher), tmp_path / "signed", resume=True, evaluate_teacher=False)
    rows = json.loads((tmp_path / "signed" / "saliency.json").read_text())
    assert {row["rule"] for row in rows} == {"signed"}
    # Reusing the prefix's measured deltas gives the very same saliency and pick as measuring again.
    fork_student(run / snapshot_name(2), signed, tmp_path / "reused", saliency_from=run / snapshot_name(3))
    train_student(signed, str(teacher), tmp_path / "reused", resume=True, evaluate_teacher=False)
    assert json.loads((tmp_path / "reused" / "saliency.json").read_text()) == rows
    assert load_checkpoint(tmp_path / "reused" / CHECKPOINT_FILE)["task"]["picked"] == load_checkpoint(
        tmp_path / "signed" / CHECKPOINT_FILE)["task"]["picked"]  # fmt: skip
