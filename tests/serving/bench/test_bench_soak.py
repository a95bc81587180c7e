"""``python -m serving.bench http --soak``: the mix, the bookkeeping, and a few-second soak against
in-thread uvicorn servers with the service tests' fake predictor (short body bounds, so the slow
bodies end in about a second)."""

import json
import os

import pytest
from bench_testkit import run_bench
from serving_testkit import FakeLoader, make_settings, running_server

from serving.app import create_app
from serving.bench.common import BenchError
from serving.bench.http_settings import HttpSettings
from serving.bench.server import Server, wait_ready
from serving.bench.soak import PATTERN, plan_from, request_kind, soak_out
from serving.bench.soak_results import SoakRecorder, SoakResult


def test_the_mix_and_its_variants():
    kinds = [request_kind(index) for index in range(2 * len(PATTERN))]
    assert [kind for kind, _ in kinds[:10]].count("valid") == 6 and PATTERN.count("malformed") == 2
    assert {kind for kind, _ in kinds} == {"valid", "malformed", "oversize", "slow"}
    assert [variant for _, variant in kinds] == [0] * 10 + [1] * 10  # the forms alternate per round


def test_recorder_counts_gates_and_summarizes():
    recorder = SoakRecorder()
    for status, latency in [("200", 10.0), ("200", 30.0), ("503", 1.0), ("error:ReadError", 5.0)]:
        recorder.record("valid", status, latency)
    recorder.record("slow", "408", 5000.0)
    recorder.record("slow", "skipped", 0.0)
    recorder.record("oversize", "500", 2.0)
    recorder.sample(0.0, 100.0), recorder.sample(10.0, 104.0), recorder.sample(20.0, 102.0)
    recorder.polled_peak_mib = 106.0
    record = recorder.to_json()
    assert record["sent"] == {"valid": 4, "malformed": 0, "oversize": 1, "slow": 2}
    assert record["valid_latency_ms"]["n"] == 2 and record["valid_latency_ms"]["p50"] == 20.0
    assert record["server_errors"] == 2  # the 503 and the 500
    assert record["unexpected"] == {"valid": {"503": 1, "error:ReadError": 1}, "oversize": {"500": 1},
                                    "slow": {"skipped": 1}}  # fmt: skip
    assert record["rss"] == {"start_mib": 100.0, "peak_mib": 106.0, "end_mib": 102.0, "growth_mib": 2.0}
    assert record["rss_mib"][1] == {"t_s": 10.0, "rss_mib": 104.0}
    (gate,) = SoakResult(HttpSettings(), {}, {}, 1.0, recorder, "out").targets()
    assert gate.gate and not gate.met


def test_bad_soak_values_name_their_flag_and_the_record_goes_to_the_docs():
    assert soak_out(HttpSettings()) == "docs/results" and soak_out(HttpSettings(out="elsewhere")) == "elsewhere"
    with pytest.raises(BenchError, match="^--soak-rate must be a positive number"):
        plan_from(HttpSettings(soak_minutes=1.0, soak_rate=0.0), "http://127.0.0.1:1")
    with pytest.raises(BenchError, match="--soak and --overload"):
        plan_from(HttpSettings(soak_minutes=1.0, overload=True), "http://127.0.0.1:1")


def soak_argv(url: str, out, minutes: str) -> list[str]:
    flags = f"--soak {minutes} --soak-rate 20 --soak-sample 1 --names student --size 32x64 --threads 1 --timeout 20"
    return ["http", "--url", url, *flags.split(), "--pid", str(os.getpid()), "--out", str(out)]


def test_a_short_soak_answers_every_kind_as_expected(tmp_path, capsys):
    settings = make_settings(tmp_path, max_bytes=256 * 1024, body_timeout_s=1.0, body_idle_timeout_s=0.5)
    out = tmp_path / "bench"
    with running_server(create_app(settings, loader=FakeLoader())) as url:
        assert run_bench(soak_argv(url, out, "0.05")) == 0  # 3 s at 20 requests/s
    payload = json.loads((out / "soak.json").read_text())
    assert payload["command"].startswith("python -m serving.bench http --url") and payload["server_errors"] == 0
    statuses = payload["statuses"]
    assert set(statuses["valid"]) == {"200"} and statuses["valid"]["200"] >= 30
    assert set(statuses["malformed"]) == {"415", "422"} and set(statuses["oversize"]) == {"413"}
    assert set(statuses["slow"]) == {"408"} and payload["unexpected"] == {}
    assert payload["valid_latency_ms"]["p99"] > 0 and 2.5 < payload["duration_s"] < 10
    assert len(payload["rss_mib"]) >= 4 and payload["rss"]["peak_mib"] >= payload["rss"]["start_mib"] > 0
    assert "5xx answers: 0 (the gate allows none: met)" in (out / "soak.md").read_text()
    assert (out / "soak.png").read_bytes()[:4] == b"\x89PNG"
    assert "| slow |" in capsys.readouterr().out  # the table is printed too


def test_a_5xx_fails_the_soak(tmp_path):
    loader = FakeLoader()
    app = create_app(make_settings(tmp_path, body_timeout_s=1.0), loader=loader)
    out = tmp_path / "bench"
    with running_server(app) as url:
        wait_ready(Server(url), 20.0)  # the predictors exist once the models are loaded

        def broken(images, want_logits=True):
            raise RuntimeError("the GPU fell off")

        loader.predictors["student/onnxruntime"].predict = broken
        assert run_bench(soak_argv(url, out, "0.02")) == 3
    payload = json.loads((out / "soak.json").read_text())
    assert payload["statuses"]["valid"] == {"500": payload["sent"]["valid"]} and payload["server_errors"] > 0
