import torch

import training.gpu_check as gpu_check
from training.gpu_check import main

CPU_ARGS = ["--device", "cpu", "--teacher", "mit_cpu_student", "--student", "mit_cpu_student", "--size", "64",
            "--steps", "1", "--infer", "64", "96", "--hrda-size", "64", "--hrda-steps", "1"]  # fmt: skip


def test_gpu_check_code_path_runs_on_cpu(tmp_path, capsys):
    assert main([*CPU_ARGS, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train teacher mit_cpu_student 64x64" in out and "it/s" in out and "ms/image" in out
    assert "student non-finite losses: 0 (target <= 0: met, gate)" in out
    assert "train hrda teacher mit_cpu_student 64x64 (detail 32)" in out and "fits a 24 GB card" in out
    assert "hrda non-finite losses: 0 (target <= 0: met, gate)" in out


def test_the_24_gb_verdict_leaves_room_for_the_cuda_context():
    assert gpu_check.fits_card(20.0) and not gpu_check.fits_card(22.0)


def test_gpu_check_without_cuda_skips_with_the_reason(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 0, "a machine without a GPU skips the check; make gpu-check passes there"
    assert "skipped: no CUDA device" in capsys.readouterr().err


def test_non_finite_training_losses_fail_the_gate(tmp_path, monkeypatch, capsys):
    def diverged(encoder, size, steps, device, run_dir, method="daformer"):
        return {"it_per_s": 1.0, "peak_gib": 1.0, "amp": "torch.bfloat16", "nonfinite_losses": 2}

    monkeypatch.setattr(gpu_check, "check_training", diverged)
    monkeypatch.setattr(gpu_check, "check_inference", lambda *args, **kwargs: {"ms_per_image": 1.0})
    assert main([*CPU_ARGS, "--out", str(tmp_path)]) == 3
    assert "teacher non-finite losses: 2 (target <= 0: NOT met, gate)" in capsys.readouterr().out
