import subprocess
import sys

import pytest

from clda_deploy.runtime import available_backends
from export.__main__ import main


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def assert_one_error(err, *fragments):
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def test_missing_checkpoint(capsys, tmp_path):
    code, err = run(capsys, "--checkpoint", tmp_path / "none.safetensors", "--out", tmp_path / "out", "--no-check")
    assert code == 2
    assert_one_error(err, "checkpoint not found", "none.safetensors")
    assert not (tmp_path / "out").exists()


def test_corrupt_and_truncated_checkpoints(capsys, tmp_path, student_checkpoint):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    truncated = tmp_path / "truncated.safetensors"
    data = student_checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path, message in ((junk, "is not a readable safetensors file"), (truncated, "truncated")):
        out = tmp_path / f"out_{path.stem}"
        code, err = run(capsys, "--checkpoint", path, "--out", out, "--no-check")
        assert code == 2
        assert_one_error(err, path.name, message)
        assert not list(out.glob("*.onnx")) and not list(out.glob(".*.tmp"))


def test_checkpoint_without_config(capsys, tmp_path):
    import torch
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"weight": torch.zeros(2)}, str(bare))
    code, err = run(capsys, "--checkpoint", bare, "--out", tmp_path / "out", "--no-check")
    assert code == 2
    assert_one_error(err, "bare.safetensors", "no 'clda_config' metadata")


def test_unwritable_output_folder(capsys, tmp_path, student_checkpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    code, err = run(capsys, "--checkpoint", student_checkpoint, "--out", blocker / "sub", "--no-check")
    assert code == 2
    assert_one_error(err, "cannot create the output folder", "a_file/sub")


def test_missing_parity_dataset_fails_before_export(capsys, tmp_path, student_checkpoint):
    out = tmp_path / "out"
    code, err = run(capsys, "--checkpoint", student_checkpoint, "--out", out, "--set", f"data.val.root={tmp_path}/nope")
    assert code == 2
    assert_one_error(err, "data.val.root: dataset folder not found", "nope")
    assert list(out.iterdir()) == []


def test_bad_name(capsys, tmp_path, student_checkpoint):
    code, err = run(capsys, "--checkpoint", student_checkpoint, "--out", tmp_path, "--name", "a.b", "--no-check")
    assert code == 2
    assert_one_error(err, "--name", "no dots")


@pytest.mark.skipif(available_backends()["tensorrt"] is None, reason="TensorRT and CUDA are usable here")
def test_tensorrt_without_tensorrt_is_one_clear_line(tmp_path, student_checkpoint):
    command = [sys.executable, "-m", "export", "--checkpoint", str(student_checkpoint), "--out", str(tmp_path / "o")]
    result = subprocess.run([*command, "--tensorrt", "--no-check"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --tensorrt needs TensorRT and a CUDA GPU"), lines
    assert not (tmp_path / "o" / "student.onnx").exists()


def test_no_check_writes_only_the_model(capsys, tmp_path, student_checkpoint):
    code, _ = run(capsys, "--checkpoint", student_checkpoint, "--out", tmp_path, "--name", "edge", "--no-check")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edge.onnx"]
    assert (tmp_path / "edge.onnx").stat().st_mode & 0o044, "exported files are readable by the server's user"
