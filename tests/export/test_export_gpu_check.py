import export.gpu_check as gpu_check
from export.gpu_check import main, run

CPU_ARGS = ["--device", "cpu", "--encoder", "mit_cpu_student", "--size", "64", "96", "--batch", "1", "--runs", "1"]


def test_export_parity_lines_on_cpu():
    lines, targets = run("mit_cpu_student", 64, 96, batch=1, runs=1, device="cpu")
    assert lines[0].startswith("torch cpu")
    by_name = {line.split(" ")[0]: line for line in lines[1:]}
    assert set(by_name) == {"onnxruntime", "onnxruntime-fp16"}
    fp32_agreement = float(by_name["onnxruntime"].split("pixel agreement ")[1].split(" %")[0])
    assert fp32_agreement >= 99.9
    (gate,) = targets  # fp32 only: fp16 agreement is reported, not gated
    assert gate.name == "onnxruntime pixel agreement" and gate.gate and gate.met and gate.threshold == 99.9


def test_no_cuda_skips_with_one_clear_line(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["--device", "cuda"]) == 0
    assert "skipped: no CUDA device" in capsys.readouterr().err


def test_fp32_disagreement_fails_the_gate(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "pixel_agreement", lambda labels, reference: 99.0)
    assert main(CPU_ARGS) == 3
    assert "onnxruntime pixel agreement: 99 % (target >= 99.9 %: NOT met, gate)" in capsys.readouterr().out


def test_onnx_files_run_on_the_cpu_provider_when_onnxruntime_has_no_cuda(monkeypatch):
    """The GPU machine's CPU build of onnxruntime refuses a CUDA request; the check must not stop."""
    import onnxruntime

    from export.gpu_check import backend_device

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert backend_device("onnxruntime", "cuda") == "cpu"
    assert backend_device("onnxruntime-fp16", "cuda:0") == "cpu"
    assert backend_device("tensorrt", "cuda") == "cuda"
    with_cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: with_cuda)
    assert backend_device("onnxruntime", "cuda") == "cuda"
    assert backend_device("onnxruntime", "cpu") == "cpu"
