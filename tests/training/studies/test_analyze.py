"""``python -m training analyze {saliency,cka,pvr,similarity,update-probe}`` end to end on tiny saved models and a
tiny SynthCity."""

import json
from pathlib import Path

import pytest
import torch

from clda_deploy.checkpoint import build_from_config, save_model
from clda_deploy.config import load_config
from training.__main__ import main

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "training" / "configs"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def overrides(root: Path) -> list[str]:
    return [f"data.source.root={root / 'source'}", f"data.target.root={root / 'target'}",
            f"data.val.root={root / 'target'}"]  # fmt: skip


@pytest.fixture(scope="module")
def model_files(tiny_synthcity, tmp_path_factory) -> tuple[Path, Path]:
    """Randomly initialised smoke teacher and smoke student (same stage widths), as model files."""
    folder = tmp_path_factory.mktemp("models")
    paths = []
    for seed, (config, role) in enumerate((("smoke_teacher.yaml", "teacher"), ("smoke_student.yaml", "student"))):
        cfg = load_config(CONFIGS / config, overrides(tiny_synthcity))
        torch.manual_seed(seed)
        paths.append(save_model(folder / f"{role}.safetensors", build_from_config(cfg), cfg, role=role))
    return paths[0], paths[1]


@pytest.mark.parametrize("kind", ["saliency", "cka", "pvr", "similarity"])
def test_analyses_write_png_and_json(model_files, tiny_synthcity, tmp_path, kind) -> None:
    teacher, student = model_files
    out = tmp_path / "analysis"
    args = ["analyze", kind, "--teacher", str(teacher), "--student", str(student), "--out", str(out),
            "--images", "4", "--set", *overrides(tiny_synthcity)]  # fmt: skip
    assert main(args) == 0
    assert (out / f"{kind}.png").stat().st_size > 1000
    assert json.loads((out / f"{kind}.json").read_text())


def test_update_probe_writes_json_png_and_verdict(model_files, tmp_path, capsys) -> None:
    teacher, student = model_files
    out = tmp_path / "analysis"
    argv = ["analyze", "update-probe", "--teacher", str(teacher), "--student", str(student), "--out", str(out),
            "--images", "4", "--weights", "0.5", "1.0", "--set", "clda.nonsalient_threshold=1000"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "update_probe.json").read_text())
    assert (out / "update_probe.png").read_bytes()[:8] == PNG_SIGNATURE
    assert result["weights"] == [0.5, 1.0] and len(result["blocks"]) == 5  # every block is non-salient
    assert result["entries"] and {entry["kind"] for entry in result["entries"]} == {
        "student",
        "shrink",
        "teacher_block",
    }
    for entry in result["entries"]:
        assert entry["delta"] == pytest.approx(entry["miou"] - result["r_full"])
    printed = capsys.readouterr().out
    assert result["summary"]["verdict"] in printed
    assert f"update-probe: {out / 'update_probe.json'} and {out / 'update_probe.png'}" in printed


def test_update_probe_rejects_a_weight_outside_zero_one(model_files, tmp_path, capsys) -> None:
    teacher, student = model_files
    argv = ["analyze", "update-probe", "--teacher", str(teacher), "--student", str(student),
            "--out", str(tmp_path), "--images", "4", "--weights", "1.5"]  # fmt: skip
    assert main(argv) == 2
    assert "w must lie in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "update_probe.json").exists()
