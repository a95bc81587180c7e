import json

from bench_testkit import run_bench

EXPECTED_ROW_KEYS = {
    "model",
    "backend",
    "size",
    "batch",
    "runtime",
    "device",
    "providers",
    "latency_ms",
    "times_ms",
    "images_per_s",
    "gflop",
    "achieved_gflops",
    "efficiency_pct",
}


# One tiny size, no warm-up, one timed call: enough to exercise every code path in seconds.
QUICK = "--sizes 32x64 --warmup 0 --iters 1 --threads 1 --device cpu --matmul-size 256".split()


def test_latency_writes_json_markdown_and_plot(tiny_run, tiny_export, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [
        "latency",
        "--models",
        str(tiny_run),
        "--sizes",
        "32x64",
        "64x128",
        "--batches",
        "1",
        "2",
        "--warmup",
        "1",
        "--iters",
        "2",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--matmul-size",
        "256",
        "--backends",
        "torch",
        "onnxruntime",
        "tensorrt",
        "--out",
        str(out),
        "--results-doc",
        str(tmp_path / "results.md"),
    ]
    (tmp_path / "results.md").write_text("# Results\n\nhand-written text\n")
    assert run_bench(argv) == 0
    payload = json.loads((out / "latency.json").read_text())
    doc = (tmp_path / "results.md").read_text()
    assert "hand-written text" in doc and "<!-- bench_latency:start -->" in doc
    assert payload["command"] in doc
    assert payload["command"].startswith("python -m serving.bench latency --models")
    assert {"cpu", "logical_cores", "threads", "torch", "onnxruntime"} <= set(payload["machine"])
    assert payload["machine"]["threads"] == 1 and payload["settings"]["threads"] == 1
    rows = payload["results"]
    # 2 models x (torch, onnxruntime) x 2 sizes x 2 batches
    assert len(rows) == 16 and all(EXPECTED_ROW_KEYS <= set(row) for row in rows)
    assert {row["backend"] for row in rows} == {"torch", "onnxruntime"}
    for row in rows:
        latency = row["latency_ms"]
        assert latency["n"] == 2 and 0 < latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]
        assert row["efficiency_pct"] > 0 and row["gflop"] > 0
    assert {(s["model"], s["backend"]) for s in payload["skipped"]} >= {
        ("student", "tensorrt"),
        ("teacher", "tensorrt"),
    }
    assert payload["matmul"]["gflops"] > 0
    flops = {(f["model"], tuple(f["size"])): f["flops"] for f in payload["flops"]}
    assert 3.5 < flops[("student", (64, 128))] / flops[("student", (32, 64))] < 4.5

    ratios = payload["ratios"]
    assert ratios["primary"] == {"size": [32, 64], "batch": 1, "model": "student"}
    assert len(ratios["ort_vs_torch"]) == 8 and len(ratios["student_vs_teacher"]) == 8
    speedup = ratios["headline"]["ort_vs_torch_speedup"]
    assert speedup["target"] == 2.0 and speedup["speedup"] > 0 and isinstance(speedup["met"], bool)
    efficiency = ratios["headline"]["student_efficiency"]
    assert efficiency["target_pct"] == 40.0 and efficiency["efficiency_pct"] > 0

    markdown = (out / "latency.md").read_text()
    assert "| student | onnxruntime | fp32 | 32x64 | 1 |" in markdown and "ONNX Runtime vs PyTorch eager" in markdown
    assert "- power: no power sensor for device 'cpu'" in markdown
    assert markdown.strip() in capsys.readouterr().out
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_latency_explicit_models_and_clear_errors(tiny_run, tmp_path, capsys):
    out = tmp_path / "bench"
    student = tiny_run / "student" / "model.safetensors"
    argv = [
        "latency",
        "--model",
        f"student={student}",
        *QUICK,
        "--out",
        str(out),
    ]
    assert run_bench(argv) == 0
    payload = json.loads((out / "latency.json").read_text())
    assert [(r["model"], r["backend"]) for r in payload["results"]] == [("student", "torch"), ("student", "torch-bf16")]
    assert payload["ratios"]["headline"]["ort_vs_torch_speedup"] is None
    capsys.readouterr()

    assert run_bench(["latency", "--models", str(tmp_path / "missing"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "models folder not found" in error
    assert run_bench(["latency", "--models", str(tiny_run), "--backends", "tflite", "--out", str(out)]) == 2
    assert "unknown backend 'tflite'" in capsys.readouterr().err


def test_unusable_backend_is_listed_as_skipped(tiny_run, tmp_path):
    broken = tmp_path / "broken.plan"
    broken.write_bytes(b"not an engine")
    out = tmp_path / "bench"
    argv = [
        "latency",
        "--model",
        f"student={tiny_run / 'student' / 'model.safetensors'}",
        "--model",
        f"student={broken}",
        *QUICK,
        "--out",
        str(out),
    ]
    assert run_bench(argv) == 0
    payload = json.loads((out / "latency.json").read_text())
    (skipped,) = payload["skipped"]
    assert skipped["backend"] == "tensorrt" and skipped["reason"]
