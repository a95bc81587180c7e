"""The HTTP benchmark against real servers: a spawned ``python -m serving`` on the tiny ONNX export,
and in-thread uvicorn servers with the service tests' fake predictor (fast, controllable delay)."""

import json

from bench_testkit import run_bench
from serving_testkit import FakeLoader, make_settings, running_server

from serving.app import create_app
from serving.bench.http_load import Outcome, client_address, summarize_cell  # noqa: E402


def test_spawned_server_load_overhead_and_batching(tiny_export, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = [
        "http",
        "--spawn",
        "--models",
        str(tiny_export),
        "--size",
        "64x128",
        "--concurrency",
        "1",
        "2",
        "--requests",
        "4",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--inprocess-iters",
        "3",
        "--ready-timeout",
        "120",
        "--out",
        str(out),
    ]
    assert run_bench(argv) == 0
    payload = json.loads((out / "http.json").read_text())
    assert payload["command"].startswith("python -m serving.bench http --spawn")
    servers = payload["servers"]
    assert [s["label"] for s in servers] == ["max_batch=1", "max_batch=4"]
    assert servers[0]["env"]["CLDA_MAX_BATCH"] == "1" and servers[0]["max_batch"] == 1
    assert servers[1]["max_batch"] == 4 and servers[0]["url"].startswith("http://127.0.0.1:")
    for server in servers:
        assert 0 < server["rss"]["before_mib"] <= server["rss"]["peak_mib"]
        assert [(c["model"], c["concurrency"]) for c in server["cells"]] == [
            ("student", 1),
            ("student", 2),
            ("teacher", 1),
            ("teacher", 2),
        ]
        for cell in server["cells"]:
            assert cell["statuses"] == {"200": 4} and cell["backend"] == "onnxruntime"
            assert cell["throughput_rps"] > 0 and cell["latency_ms"]["p50"] > 0 and cell["mean_batch_size"] >= 1
            assert cell["server_inference_ms"]["p50"] > 0
    assert set(payload["inprocess"]) == {"student", "teacher"}
    assert payload["inprocess"]["student"]["latency_ms"]["n"] == 3 and payload["inprocess"]["student"]["interleaved"]
    assert payload["inprocess"]["student"]["http_latency_ms"]["n"] == 3
    pairs = [
        ("max_batch=1", "student"),
        ("max_batch=1", "teacher"),
        ("max_batch=4", "student"),
        ("max_batch=4", "teacher"),
    ]
    assert [(r["server"], r["model"]) for r in payload["overhead"]] == pairs
    headline = payload["headline"]["overhead"]
    assert headline["model"] == "student" and headline["target_pct"] == 15.0 and isinstance(headline["met"], bool)
    assert headline["method"] == "interleaved"
    assert len(payload["batching"]) == 4 and all(g["speedup"] > 0 for g in payload["batching"])
    assert "HTTP overhead" in (out / "http.md").read_text()
    assert (out / "http.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()


def test_overload_answers_only_200_or_503(tmp_path):
    import os

    app = create_app(make_settings(tmp_path, queue_size=2, max_batch=1), loader=FakeLoader(delay=0.2))
    out = tmp_path / "bench"
    with running_server(app) as url:
        argv = [
            "http",
            "--url",
            url,
            "--overload",
            "--overload-waves",
            "2",
            "--size",
            "32x64",
            "--pid",
            str(os.getpid()),
            "--threads",
            "1",
            "--out",
            str(out),
        ]
        assert run_bench(argv) == 0
    load = json.loads((out / "http_overload.json").read_text())["overload"]
    assert load["queue_capacity"] == 2 and load["requests"] == 8 and len(load["waves"]) == 2
    assert set(load["statuses"]) == {"200", "503"} and sum(load["statuses"].values()) == 16
    assert load["only_200_503"] is True
    assert load["rss"]["peak_mib"] >= load["rss"]["before_mib"] > 0 and load["rss_growth_mib"] >= 0
    assert (out / "http_overload.png").read_bytes().startswith(b"\x89PNG")


def test_hard_deadline_bounds_a_cell(tmp_path):
    app = create_app(make_settings(tmp_path), loader=FakeLoader(delay=1.0))  # warm-up also takes 1 s
    out = tmp_path / "bench"
    with running_server(app) as url:
        argv = [
            "http",
            "--url",
            url,
            "--names",
            "student",
            "--concurrency",
            "1",
            "--requests",
            "4",
            "--warmup",
            "0",
            "--deadline",
            "0.3",
            "--size",
            "32x64",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
        assert run_bench(argv) == 0
    payload = json.loads((out / "http.json").read_text())
    assert payload["servers"][0]["ready_s"] > 0, "the bench waits for /readyz of a running server too"
    (cell,) = payload["servers"][0]["cells"]
    assert cell["wall_s"] < 0.9
    assert cell["statuses"] == {"deadline": 1, "not_sent": 3} and cell["ok"] == 0 and cell["latency_ms"] is None
    assert payload["servers"][0]["rss"]["peak_mib"] is None, "no --pid: RSS unknown, not guessed"
    assert "skipped" in payload["inprocess"]["student"], "placeholder model files cannot run in-process"
    assert payload["headline"]["overhead"] is None


def test_clear_errors(tmp_path, capsys):
    out = str(tmp_path / "bench")
    assert run_bench(["http", "--url", "http://10.1.2.3:8000", "--out", out]) == 2
    assert "loopback" in capsys.readouterr().err
    assert run_bench(["http", "--url", "http://127.0.0.1:9", "--out", out]) == 2
    assert "server not reachable at http://127.0.0.1:9" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_bench(["http", "--spawn", "--models", str(empty), "--ready-timeout", "60", "--out", out]) == 2
    error = capsys.readouterr().err.strip()
    assert "server exited with status 2 before it was ready" in error and "no models to serve" in error
    assert error.count("\n") == 0


def test_cell_summary_golden():
    outcomes = [
        Outcome("200", 10.0, 4.0, 1.0, 1, "onnxruntime"),
        Outcome("200", 30.0, 6.0, 3.0, 2, "onnxruntime"),
        Outcome("503", 1.0),
        Outcome("timeout", 60000.0),
    ]
    cell = summarize_cell(outcomes, wall_s=2.0, requests=5, concurrency=2, model="student")
    assert cell["statuses"] == {"200": 2, "503": 1, "not_sent": 1, "timeout": 1}
    assert cell["ok"] == 2 and cell["throughput_rps"] == 1.0 and cell["backend"] == "onnxruntime"
    assert cell["latency_ms"]["p50"] == 20.0 and cell["server_inference_ms"]["p50"] == 5.0
    assert cell["mean_batch_size"] == 1.5


def test_each_worker_of_a_cell_is_its_own_client():
    # The server caps uploads per client address; a cell's workers stand for separate users.
    addresses = [client_address(worker) for worker in range(4096)]
    assert addresses[:2] == ["198.18.0.1", "198.18.0.2"] and len(set(addresses)) == 4096
