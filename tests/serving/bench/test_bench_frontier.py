"""``serving.bench frontier``: latency.json joined with parity.json, the Pareto front, the targets."""

import json

from bench_testkit import run_bench

from serving.bench.frontier import FrontierRow, pareto_front


def _row(variant, p50, miou, gate="pass", model="student"):
    return FrontierRow(model, variant, "fp32", p50, miou, 0.0, 0.0, gate, "x", "0" * 64)


def test_pareto_front_keeps_only_undominated_usable_rows():
    rows = [
        _row("torch", 400.0, 22.0, gate="reference"),
        _row("onnxruntime", 200.0, 22.0),
        _row("openvino-bf16", 120.0, 21.9),
        _row("openvino-int8", 80.0, 21.8),
        _row("slow-and-worse", 300.0, 21.0),
        _row("failed", 10.0, 30.0, gate="FAIL"),  # fast and accurate, but failed its gate: not eligible
        _row("ungated", 5.0, None, gate="not gated"),
    ]
    assert {rows[i].variant for i in pareto_front(rows)} == {"onnxruntime", "openvino-bf16", "openvino-int8"}


def _latency_row(model, backend, p50, size=(512, 1024), path="missing.onnx"):
    return {"model": model, "backend": backend, "size": list(size), "batch": 1, "path": path,
            "latency_ms": {"p50": p50}, "precision_used": "int8" if "int8" in backend else "fp32"}  # fmt: skip


def test_frontier_table_targets_and_plot(tmp_path, capsys):
    model_file = tmp_path / "student.int8.xml"
    model_file.write_bytes(b"weights")
    rows = [
        _latency_row("teacher", "onnxruntime", 300.0),
        _latency_row("teacher", "torch", 600.0),
        _latency_row("student", "onnxruntime", 200.0),
        _latency_row("student", "openvino-int8", 80.0, path=str(model_file)),
        _latency_row("student", "openvino-int8-qdq", 70.0),
        _latency_row("student", "onnxruntime", 50.0, size=(256, 512)),  # another size: not in this table
    ]
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps({"command": "python -m serving.bench latency --models runs/x", "results": rows}))

    def record(reference, entries):
        return {"reference": {"miou": reference}, "backends": entries}

    parity = tmp_path / "parity.json"
    parity.write_text(json.dumps({
        "teacher": record(20.0, {"onnxruntime": {"miou": 20.0, "delta_miou": 0.0, "passed": True}}),
        "student": record(22.0, {
            "onnxruntime": {"miou": 22.0, "delta_miou": 0.0, "passed": True, "worst_class_drop": 0.0},
            "openvino-int8": {"miou": 21.9, "delta_miou": -0.1, "passed": True, "worst_class_drop": 0.4},
            "openvino-int8-qdq": {"miou": 20.0, "delta_miou": -2.0, "passed": False, "worst_class_drop": 5.0},
        }),
    }))  # fmt: skip
    out = tmp_path / "bench"
    argv = ["frontier", "--latency", str(latency), "--parity", str(parity), "--out", str(out)]
    assert run_bench(argv) == 0  # targets are informational
    payload = json.loads((out / "frontier.json").read_text())
    by_variant = {(r["model"], r["variant"]): r for r in payload["rows"]}
    assert len(by_variant) == 5
    best = by_variant[("student", "openvino-int8")]
    assert best["vs_student"] == 2.5 and best["vs_teacher"] == 3.75 and best["pareto"] and best["gate"] == "pass"
    assert by_variant[("student", "openvino-int8-qdq")]["gate"] == "FAIL"  # faster, but it failed: not the best
    assert payload["fastest_passing_student"] == "openvino-int8"
    assert [t["met"] for t in payload["targets"]] == [True, True]
    assert by_variant[("teacher", "torch")]["gate"] == "reference" and by_variant[("teacher", "torch")]["miou"] == 20.0
    assert best["sha256"] != "missing" and by_variant[("teacher", "onnxruntime")]["sha256"] == "missing"
    assert (out / "frontier.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "| student | openvino-int8 | int8 | 80.00 | 2.50 | 3.75 |" in table


def test_frontier_errors_say_what_to_run(tmp_path, capsys):
    argv = ["frontier", "--latency", str(tmp_path / "none.json"), "--parity", str(tmp_path / "p.json")]
    assert run_bench([*argv, "--out", str(tmp_path)]) == 2
    assert "run python -m serving.bench latency first" in capsys.readouterr().err
    (tmp_path / "none.json").write_text(json.dumps({"results": [_latency_row("student", "torch", 1.0)]}))
    (tmp_path / "p.json").write_text("{}")
    assert run_bench([*argv, "--size", "100x100", "--out", str(tmp_path)]) == 2
    assert "no latency rows at 100x100" in capsys.readouterr().err
