"""The CLDA ablation command end to end on a tiny SynthCity (one seed), its statistics and its refusals."""

import json
from pathlib import Path

import pytest

from clda_deploy.config import load_config
from clda_deploy.reporting import section_markers
from training.__main__ import main
from training.teacher import train_teacher

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "training" / "configs"


def data_overrides(root: Path) -> list[str]:
    return [f"data.source.root={root / 'source'}", f"data.target.root={root / 'target'}",
            f"data.val.root={root / 'target'}"]  # fmt: skip


def smoke_teacher(root: Path, run: Path, seed: int = 0) -> Path:
    train_teacher(load_config(CONFIGS / "smoke_teacher.yaml", [*data_overrides(root), f"train.seed={seed}"]), run)
    return run / "model.safetensors"


@pytest.fixture(scope="module")
def finished(tiny_synthcity, tmp_path_factory):
    """One finished one-seed ablation: (teacher, runs folder, results.md, json, args)."""
    tmp = tmp_path_factory.mktemp("ablation")
    teacher = smoke_teacher(tiny_synthcity, tmp / "teacher")
    results, out = tmp / "results.md", tmp / "ablation.json"
    results.write_text("# Results\n\nearlier text\n")
    args = ["ablation", "-c", str(CONFIGS / "smoke_student.yaml"), "--teacher", str(teacher), "--seeds", "1",
            "--extra-seeds", "1", "--signed", "--runs", str(tmp / "runs"), "--out", str(results), "--json", str(out),
            "--set", *data_overrides(tiny_synthcity), "train.iters=6", "clda.student_init=teacher"]  # fmt: skip
    assert main(args) == 0
    return teacher, tmp / "runs", results, out, args


def test_every_row_is_written_with_provenance_and_paired_differences(finished):
    from clda_deploy.checkpoint import file_sha256

    teacher, runs, results, out, _ = finished
    summary = json.loads(out.read_text())
    rows = summary["rows"]
    assert set(rows) == {"independent_student", "kd_only", "clda_random", "clda_channel", "clda_token",
                         "clda_both", "clda_signed", "clda_placebo", "teacher_before", "teacher_after"}  # fmt: skip
    assert set(rows["kd_only"]) == {"random", "teacher"} and set(rows["clda_token"]) == {"teacher"}
    assert summary["teacher"]["sha256"] == file_sha256(teacher)
    seed = rows["clda_channel"]["teacher"]["seeds"][0]
    assert seed["model_sha256"] == file_sha256(Path(seed["run"]) / "model.safetensors")
    assert rows["teacher_before"]["teacher"]["seeds"][0]["miou"] == summary["teacher"]["miou"]
    differences = summary["differences"]
    assert {"clda_channel - kd_only", "clda_channel - independent_student", "teacher_after - teacher_before",
            "kd_only: teacher init - random init", "teacher_before - independent_student"} <= set(
        differences)  # fmt: skip
    diff = differences["clda_channel - kd_only"]["teacher"]
    expected = rows["clda_channel"]["teacher"]["mean"] - rows["kd_only"]["teacher"]["mean"]
    assert diff["mean"] == pytest.approx(expected) and diff["n"] == 1
    assert 0 < summary["schedule"]["blend_fraction"] < 1 and summary["schedule"]["t3"] == 3
    text = results.read_text()
    assert "earlier text" in text and text.count(section_markers("clda_ablation")[0]) == 1
    assert "clda_channel - kd_only" in text and summary["teacher"]["sha256"][:16] in text
    metrics = json.loads((runs / "clda_channel-teacher-s0" / "metrics.json").read_text())["clda"]
    assert metrics["teacher_sha256"] == summary["teacher"]["sha256"] and metrics["student_init"] == "teacher"


def test_finished_runs_are_reused(finished, monkeypatch):
    *_, args = finished
    monkeypatch.setattr("training.student.train_student", lambda *a, **k: pytest.fail("must not retrain"))
    monkeypatch.setattr("training.teacher.run_teacher", lambda *a, **k: pytest.fail("must not retrain"))
    assert main(args) == 0


def test_runs_from_another_teacher_are_refused(finished, tiny_synthcity, tmp_path, capsys):
    teacher, runs, *_, args = finished
    other = smoke_teacher(tiny_synthcity, tmp_path / "other", seed=1)
    changed = list(args)
    changed[changed.index(str(teacher))] = str(other)
    changed[changed.index("--json") + 1] = str(tmp_path / "x.json")
    assert main(changed) == 2
    message = capsys.readouterr().err
    assert "was trained from teacher sha256" in message and str(runs) in message
    assert not (tmp_path / "x.json").exists()


def test_a_bad_shard_is_refused_before_training(finished, capsys):
    *_, args = finished
    assert main([*args, "--shard", "2/2"]) == 2
    assert "--shard expects K/N" in capsys.readouterr().err


def test_a_run_trained_with_another_config_is_refused(finished, capsys):
    *_, args = finished
    assert main([*args, "clda.alpha=0.5"]) == 2
    assert "was trained with another config (clda.alpha" in capsys.readouterr().err


def test_row_configs_are_the_config_plus_typed_row_values():
    """Each row's config is the -c config with its --set pairs plus the row's typed values, equal to what
    the same values as --set strings give (the runs trained before the typed overrides stay reusable)."""
    from training.studies.ablation import Plan, row_config, row_values

    config, sets = str(CONFIGS / "smoke_student.yaml"), ("train.iters=6", "clda.student_init=teacher")
    plan = Plan(config, sets, load_config(config, list(sets)), "teacher.safetensors", (0, 1), (0,), Path("runs"),
                placebo_alpha=0.9, optional_rows=("clda_signed",))  # fmt: skip
    assert plan.config_init == "teacher" and "clda_placebo" in plan.rows_of(0, "teacher")
    for seed, init in plan.groups():
        for row in plan.rows_of(seed, init):
            strings = [*sets, *(f"{key}={value}" for key, value in row_values(plan, row, init, seed).items())]
            assert row_config(plan, row, init, seed) == load_config(config, strings), (row, init, seed)
    placebo = row_config(plan, "clda_placebo", "teacher", 0)
    assert (placebo.clda.alpha, placebo.clda.mapping, placebo.train.seed, placebo.train.iters) == (0.9, "channel", 0, 6)
    assert row_config(plan, "clda_signed", "teacher", 0).clda.saliency_rule == "signed"


def test_rows_and_inits_restrict_the_plan():
    from training.studies.ablation import Plan

    config = str(CONFIGS / "smoke_student.yaml")
    plan = Plan(config, (), load_config(config, []), "teacher.safetensors", (0, 1), (), Path("runs"),
                main_rows=("independent_student", "kd_only", "clda_channel"), inits=("teacher",))  # fmt: skip
    assert plan.groups() == [(0, "teacher"), (1, "teacher")]
    assert plan.rows_of(0, "teacher") == ["independent_student", "kd_only", "clda_channel"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rows", "kd_only", "clda_nope"], "--rows: unknown clda_nope"),
        (["--rows", "kd_only"], "--rows must include clda_channel"),
        (["--inits", "imagenet"], "--inits: unknown imagenet"),
    ],
)
def test_unknown_rows_or_inits_are_refused_before_training(finished, capsys, extra, message):
    *_, args = finished
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err
