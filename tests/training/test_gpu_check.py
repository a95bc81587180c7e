import torch

from training.gpu_check import main


def test_gpu_check_code_path_runs_on_cpu(tmp_path, capsys):
    args = ["--device", "cpu", "--teacher", "mit_cpu_student", "--student", "mit_cpu_student", "--size", "64",
            "--steps", "1", "--infer", "64", "96", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train teacher mit_cpu_student 64x64" in out and "it/s" in out and "ms/image" in out


def test_gpu_check_without_cuda_says_so(capsys):
    if torch.cuda.is_available():
        return
    assert main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
