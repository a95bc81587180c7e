import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.__main__ import build_settings, main, parse_args
from serving.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_env_vars_with_prefix_and_flags_override_them(monkeypatch):
    monkeypatch.setenv("CLDA_QUEUE_SIZE", "7")
    monkeypatch.setenv("CLDA_BACKENDS", "onnxruntime,torch")
    monkeypatch.setenv("CLDA_TORCH_CHECKPOINTS", "student=runs/s/model.safetensors")
    monkeypatch.setenv("CLDA_MAX_BATCH", "2")
    settings = Settings()
    assert settings.queue_size == 7 and settings.backends == ("onnxruntime", "torch") and settings.max_batch == 2
    assert settings.torch_checkpoints == {"student": Path("runs/s/model.safetensors")}
    flags = build_settings(parse_args(["--queue-size", "3", "--models", "elsewhere", "--torch", "t=x.safetensors"]))
    assert flags.queue_size == 3 and flags.models == Path("elsewhere") and flags.max_batch == 2
    assert flags.torch_checkpoints == {"t": Path("x.safetensors")}


def test_defaults_and_validation():
    settings = Settings()
    assert settings.models == Path("runs/default/export") and (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.infer_size is None and settings.warmup_size == (256, 512)
    assert Settings(infer_height=128, infer_width=256).warmup_size == (128, 256)
    with pytest.raises(ValidationError, match="set both infer_height and infer_width"):
        Settings(infer_height=128)
    with pytest.raises(ValidationError, match="unknown backend"):
        Settings(backends="onnx")
    with pytest.raises(ValidationError, match="NAME=PATH"):
        Settings(torch_checkpoints=["nopath"])
    with pytest.raises(ValidationError):
        Settings(queue_size=0)


def test_body_admission_flags_and_their_consistency():
    flags = "--max-inflight-bytes 4096 --max-uploads-per-client 3 --body-timeout 7.5 --body-idle-timeout 2"
    flags += " --min-body-rate 0 --body-rate-grace 1 --max-bytes 4096"
    settings = build_settings(parse_args(flags.split()))
    assert (settings.max_inflight_bytes, settings.max_uploads_per_client, settings.min_body_rate) == (4096, 3, 0)
    assert (settings.body_timeout_s, settings.body_idle_timeout_s, settings.body_rate_grace_s) == (7.5, 2.0, 1.0)
    defaults = Settings()
    assert (defaults.max_inflight_bytes, defaults.max_uploads_per_client) == (256 * 1024 * 1024, 8)
    assert (defaults.body_idle_timeout_s, defaults.min_body_rate, defaults.body_rate_grace_s) == (10.0, 8192, 5.0)
    with pytest.raises(ValidationError, match=r"max_inflight_bytes \(1000\) must be at least max_bytes \(4096\)"):
        Settings(max_inflight_bytes=1000, max_bytes=4096)


def test_settings_survive_the_trip_through_env_for_worker_processes(monkeypatch):
    original = Settings(
        queue_size=5, backends="onnxruntime", torch_checkpoints={"s": "a.safetensors"}, infer_height=64, infer_width=64
    )
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_no_models_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--models", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no models to serve" in err and str(tmp_path) in err


def test_bad_setting_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("CLDA_MAX_BATCH", "many")
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_batch" in err


def test_module_entry_point_exits_2_without_models(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--models", str(tmp_path / "none")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("python -m serving: error: no models to serve")
