import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from serving.bench.common import BenchError, backend_of, discover_models, parse_size, select_models
from serving.bench.report import atomic_write, fmt, markdown_table, write_outputs
from serving.bench.timing import time_predictor


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_parse_size():
    assert parse_size("512x1024") == (512, 1024)
    assert parse_size("64X128") == (64, 128)
    for bad in ("512", "0x10", "axb", "1x2x3", "-1x5"):
        with pytest.raises(argparse.ArgumentTypeError, match="HEIGHTxWIDTH"):
            parse_size(bad)


def test_backend_of_suffixes(tmp_path):
    assert backend_of(Path("m.safetensors")) == "torch"
    assert backend_of(Path("student.onnx")) == "onnxruntime"
    assert backend_of(Path("student.fp16.onnx")) == "onnxruntime-fp16"
    assert backend_of(Path("student.plan")) == "tensorrt"
    with pytest.raises(BenchError, match="unknown model file type"):
        backend_of(Path("student.pt"))


def test_discovery_lists_files_and_says_what_is_missing(tmp_path):
    _touch(tmp_path / "teacher" / "model.safetensors")
    _touch(tmp_path / "student" / "model.safetensors")
    _touch(tmp_path / "export" / "student.onnx")
    _touch(tmp_path / "export" / "student.fp16.onnx")
    _touch(tmp_path / "export" / "teacher.onnx")
    files, missing = discover_models(tmp_path)
    assert [(f.name, f.backend) for f in files] == [
        ("teacher", "torch"),
        ("teacher", "onnxruntime"),
        ("student", "torch"),
        ("student", "onnxruntime"),
        ("student", "onnxruntime-fp16"),
    ]
    reasons = {(m["model"], m["backend"]): m["reason"] for m in missing}
    assert set(reasons) == {("teacher", "onnxruntime-fp16"), ("teacher", "tensorrt"), ("student", "tensorrt")}
    assert "teacher.plan" in reasons[("teacher", "tensorrt")]


def test_selection_errors(tmp_path):
    with pytest.raises(BenchError, match="models folder not found"):
        select_models(str(tmp_path / "nowhere"), [], None)
    with pytest.raises(BenchError, match="no model files under"):
        select_models(str(tmp_path), [], None)
    with pytest.raises(BenchError, match="unknown backend 'tensorflow'"):
        select_models(str(tmp_path), [], ["tensorflow"])
    with pytest.raises(BenchError, match="model file not found"):
        select_models(None, [f"student={tmp_path / 'student.onnx'}"], None)
    with pytest.raises(BenchError, match="NAME=PATH"):
        select_models(None, ["student.onnx"], None)
    onnx = _touch(tmp_path / "s.onnx")
    files, missing = select_models(None, [f"student={onnx}"], ["onnxruntime"])
    assert [(f.name, f.backend, f.path) for f in files] == [("student", "onnxruntime", onnx)] and missing == []
    with pytest.raises(BenchError, match="no model file for the backends torch"):
        select_models(None, [f"student={onnx}"], ["torch"])


def test_markdown_and_atomic_outputs(tmp_path, capsys):
    assert fmt(None) == "–" and fmt(1.23456) == "1.23" and fmt(3) == "3" and fmt(True) == "yes"
    table = markdown_table(["a", "b"], [[1.0, None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.00 | – |"]

    def plot(path: Path) -> Path:
        return atomic_write(path, lambda tmp: tmp.write_bytes(b"\x89PNG"))

    paths = write_outputs(tmp_path / "out", "demo", {"value": 1}, "| x |", plot)
    assert json.loads(Path(paths["json"]).read_text())["files"]["plot"].endswith("demo.png")
    assert "| x |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["demo.json", "demo.md", "demo.png"]
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out" / "broken.json", lambda tmp: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert not list((tmp_path / "out").glob("*.tmp")) and not (tmp_path / "out" / "broken.json").exists()


class _Predictor:
    def __init__(self, device: str) -> None:
        self.device, self.calls = device, 0

    def predict(self, images, want_logits=True):
        self.calls += 1


def test_timing_synchronizes_cuda_before_the_clock_stops(monkeypatch):
    import serving.bench.timing as timing

    synced = []
    monkeypatch.setattr(timing, "synchronize", lambda device: synced.append(device))
    predictor = _Predictor("cuda:0")
    times = time_predictor(predictor, np.zeros((1, 3, 8, 8), np.float32), warmup=2, iters=3)
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert predictor.calls == 5 and synced == ["cuda:0"] * 5
    with pytest.raises(BenchError, match="--iters"):
        time_predictor(predictor, np.zeros((1, 3, 8, 8), np.float32), warmup=0, iters=0)


def test_machine_line_flags_a_busy_machine():
    from serving.bench.report import machine_line

    machine = {"cpu": "Test CPU", "usable_cores": 2, "load_average_1m": {"before": 1.5, "after": 2.0}}
    assert "busy" in machine_line(machine, 1) and machine_line(machine, 1).startswith("Test CPU, 1 thread;")
    assert "OMP_WAIT_POLICY=PASSIVE" in machine_line(machine, 1)
    machine["thread_env"] = {"OMP_WAIT_POLICY": "PASSIVE"}
    assert machine_line(machine, 1).count("OMP_WAIT_POLICY") == 1, "the advice goes once the variable is set"
    machine["load_average_1m"]["before"] = 0.2
    assert "busy" not in machine_line(machine, 2) and "2 threads" in machine_line(machine, 2)
