import json
from pathlib import Path

import pytest

from training.studies.baselines import markdown_table, run_baselines, summarize

CONFIG = str(Path(__file__).resolve().parents[3] / "training" / "configs" / "smoke_teacher.yaml")


def test_summary_golden_values():
    summary = summarize({"source_only": [10.0, 12.0], "daformer": [20.0, 20.0], "oracle": [40.0, 44.0]}, [0, 1])
    assert summary["source_only"]["miou_mean"] == pytest.approx(11.0)
    assert summary["source_only"]["miou_std"] == pytest.approx(2**0.5)
    assert summary["uda"]["seeds"] == [{"seed": 0, "miou": 20.0}, {"seed": 1, "miou": 20.0}]
    table = markdown_table(summary, "python -m training baselines ...")
    assert "oracle − source-only = 31.00 points; UDA − source-only = 9.00 points." in table
    assert "oracle − source-only ≥ 15: met; UDA − source-only ≥ 5: met." in table
    flat = summarize({"source_only": [10.0], "daformer": [11.0], "oracle": [24.0]}, [0])
    assert "oracle − source-only ≥ 15: NOT met; UDA − source-only ≥ 5: NOT met." in markdown_table(flat, "cmd")


def test_finished_runs_are_reused(tmp_path, monkeypatch):
    for mode, value in (("source_only", 5.0), ("daformer", 9.0), ("oracle", 30.0)):
        (tmp_path / f"{mode}-s0").mkdir()
        (tmp_path / f"{mode}-s0" / "metrics.json").write_text(json.dumps({"miou": value}))
    monkeypatch.setattr("training.teacher.run_teacher", lambda *a, **k: pytest.fail("must not retrain"))
    out = tmp_path / "uda_baselines.json"
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n<!-- uda_baselines:start -->\nold\n<!-- uda_baselines:end -->\n\n## Other\n")
    summary = run_baselines(CONFIG, [], [0], str(tmp_path), str(out), str(doc))
    assert json.loads(out.read_text()) == summary
    assert summary["oracle"]["miou_mean"] == 30.0 and not out.with_suffix(".md").exists()
    text = doc.read_text()
    assert "old" not in text and "| oracle | -c | 30.00 ± 0.00 | 30.00 |" in text and text.endswith("## Other\n")


def test_without_a_markdown_file_the_table_goes_next_to_the_json(tmp_path, monkeypatch):
    for mode in ("source_only", "daformer", "oracle"):
        (tmp_path / f"{mode}-s0").mkdir()
        (tmp_path / f"{mode}-s0" / "metrics.json").write_text(json.dumps({"miou": 1.0}))
    monkeypatch.setattr("training.teacher.run_teacher", lambda *a, **k: pytest.fail("must not retrain"))
    out = tmp_path / "uda_baselines.json"
    run_baselines(CONFIG, [], [0], str(tmp_path), str(out))
    assert "| uda | -c | 1.00 ± 0.00 | 1.00 |" in out.with_suffix(".md").read_text()


def test_each_mode_and_seed_trains_with_typed_values_over_the_config(tmp_path, monkeypatch):
    """The baselines drive the teacher command with a Config (no --set strings): the -c file with its
    overrides, plus uda.mode and train.seed."""
    trained = []

    def fake_run_teacher(cfg, run_dir, resume):
        trained.append((cfg.uda.mode, cfg.train.seed, cfg.train.iters, run_dir, resume))
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"miou": 1.0}))

    monkeypatch.setattr("training.teacher.run_teacher", fake_run_teacher)
    run_baselines(CONFIG, ["train.iters=3"], [0, 1], str(tmp_path), str(tmp_path / "b.json"))
    assert [(mode, seed) for mode, seed, *_ in trained] == [
        (mode, seed) for mode in ("source_only", "daformer", "oracle") for seed in (0, 1)
    ]
    assert all(iters == 3 and run == tmp_path / f"{mode}-s{seed}" and not resume
               for mode, seed, iters, run, resume in trained)  # fmt: skip


def test_a_scheme_row_trains_from_its_own_config_and_only_carries_the_other_rows_over(tmp_path, monkeypatch):
    hrda = Path(CONFIG).with_name("smoke_hrda_teacher.yaml")
    out = tmp_path / "uda_baselines.json"
    previous = summarize({"source_only": [10.0, 11.0], "daformer": [20.0, 22.0], "oracle": [40.0, 41.0]}, [0, 1])
    out.write_text(json.dumps(previous))
    trained = []

    def fake_run_teacher(cfg, run_dir, resume):
        trained.append((cfg.uda.method, cfg.uda.mode, cfg.train.seed, run_dir.name))
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"miou": 24.0 + cfg.train.seed}))

    monkeypatch.setattr("training.teacher.run_teacher", fake_run_teacher)
    summary = run_baselines(CONFIG, [], [0, 1], str(tmp_path), str(out), schemes=[f"hrda={hrda}"], only=["hrda"])
    assert trained == [("hrda", "daformer", 0, "hrda-s0"), ("hrda", "daformer", 1, "hrda-s1")]
    assert list(summary) == ["source_only", "uda", "hrda", "oracle"]
    assert summary["uda"] == previous["uda"] and summary["hrda"]["miou_mean"] == 24.5
    assert summary["hrda"]["config"] == str(hrda)
    table = out.with_suffix(".md").read_text()
    assert "| uda (carried over) | -c | 21.00 ± 1.41 |" in table
    assert "hrda − UDA (DAFormer) = +3.50 points" in table and "Welch 95 % CI" in table
    assert f"--scheme hrda={hrda} --only hrda" in table


def test_a_bad_scheme_is_refused(tmp_path):
    from training.errors import UsageError

    with pytest.raises(UsageError, match="--scheme expects NAME=CONFIG"):
        run_baselines(CONFIG, [], [0], str(tmp_path), str(tmp_path / "b.json"), schemes=["uda=x.yaml"])
    with pytest.raises(UsageError, match="config file not found"):
        run_baselines(CONFIG, [], [0], str(tmp_path), str(tmp_path / "b.json"), schemes=["hrda=/nope.yaml"])
