import json

from training_testkit import CONFIGS


def test_training_cost_comparison_runs_every_mode(smoke_teacher, tmp_path):
    from training.studies.cost import MODES, compare

    results = compare(str(CONFIGS / "smoke_student.yaml"), str(smoke_teacher), size=64, steps=2, out=tmp_path)
    assert set(results) == set(MODES)
    assert all(r["step_s"] > 0 and r["peak_mib"] > 0 for r in results.values())
    assert json.loads((tmp_path / "cost.json").read_text()) == results
    assert (tmp_path / "cost.md").read_text().count("\n") == 2 + len(MODES)


def test_training_cost_ratios_are_against_kd_only():
    from training.studies.cost import cost_table, relative_to

    measured = {"kd_only": {"step_s": 2.0, "peak_mib": 400.0}, "joint": {"step_s": 5.0, "peak_mib": 1000.0}}
    results = relative_to(measured)
    assert results["joint"]["time_ratio"] == 2.5 and results["joint"]["memory_ratio"] == 2.5
    assert results["kd_only"]["step_s"] == 2.0, "the measurements stay beside their ratios"
    assert cost_table(results).splitlines() == [
        "| mode | step time (s) | × KD-only | peak memory (MiB) | × KD-only |",
        "|---|---|---|---|---|",
        "| kd_only | 2.000 | 1.000 | 400 | 1.000 |",
        "| joint | 5.000 | 2.500 | 1000 | 2.500 |",
    ]
