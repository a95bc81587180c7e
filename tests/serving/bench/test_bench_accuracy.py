import json

import pytest
from bench_testkit import run_bench


def test_accuracy_student_vs_teacher_through_both_runtimes(tiny_run, tiny_export, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [
        "accuracy",
        "--models",
        str(tiny_run),
        "--max-images",
        "3",
        "--warmup",
        "1",
        "--iters",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert run_bench(argv) == 0
    payload = json.loads((out / "accuracy.json").read_text())
    assert payload["command"].startswith("python -m serving.bench accuracy") and payload["machine"]["cpu"]
    assert payload["dataset"]["split"] == "val" and payload["dataset"]["evaluated"] == 3
    assert payload["dataset"]["images"] == 4 and payload["dataset"]["format"] == "cityscapes"
    results = {(r["model"], r["backend"]): r for r in payload["results"]}
    assert set(results) == {(m, b) for m in ("teacher", "student") for b in ("torch", "onnxruntime")}
    for result in results.values():
        assert 0.0 <= result["miou"] <= 100.0 and len(result["per_class_iou"]) == 19
        assert result["num_images"] == 3 and result["size"] == [64, 128] and result["latency_ms"]["n"] == 2
    for model in ("teacher", "student"):  # the exported graph scores like the PyTorch model
        assert results[(model, "onnxruntime")]["miou"] == pytest.approx(results[(model, "torch")]["miou"], abs=0.1)
    comparison = {row["backend"]: row for row in payload["comparison"]}
    assert set(comparison) == {"torch", "onnxruntime"} and payload["reference_backend"] == "torch"
    torch_row = comparison["torch"]
    assert torch_row["delta_miou"] == pytest.approx(torch_row["student_miou"] - torch_row["teacher_miou"])
    assert torch_row["speedup"] > 0
    markdown = (out / "accuracy.md").read_text()
    assert "| class | teacher IoU | student IoU | Δ |" in markdown and "| road |" in markdown
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()


def test_accuracy_config_overrides_and_errors(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "bench")
    base = [
        "accuracy",
        "--models",
        str(tiny_run),
        "--backends",
        "torch",
        "--iters",
        "1",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out",
        out,
    ]
    student = tiny_run / "student" / "model.safetensors"
    assert run_bench([*base, "--set", "eval.max_images=1", "--model", f"student={student}"]) == 0
    payload = json.loads((tmp_path / "bench" / "accuracy.json").read_text())
    assert payload["dataset"]["evaluated"] == 1 and [r["model"] for r in payload["results"]] == ["student"]
    capsys.readouterr()

    assert run_bench([*base, "--set", "data.val.root=/nowhere"]) == 2
    error = capsys.readouterr().err
    assert "dataset folder not found: /nowhere" in error and error.strip().count("\n") == 0
    assert run_bench([*base, "--set", "eval.nonsense=1"]) == 2
    assert "unknown key 'eval.nonsense'" in capsys.readouterr().err
    onnx_only = tmp_path / "model.onnx"
    onnx_only.write_bytes(b"x")
    assert run_bench(["accuracy", "--model", f"student={onnx_only}", "--backends", "onnxruntime", "--out", out]) == 2
    assert "needs a model.safetensors" in capsys.readouterr().err
