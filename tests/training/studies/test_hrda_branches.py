"""The HRDA branch study: fixing the attention to 1 or 0 scores the detail or the context alone."""

import json

import pytest
import torch

from clda_deploy.checkpoint import save_model, segmenter_from_config
from clda_deploy.config import load_config
from clda_deploy.data.synthcity import generate_synthcity
from training.studies.hrda_branches import main, score_branches


@pytest.fixture(scope="module")
def hrda_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthcity(root, num_source=2, num_target=2, num_val=2, height=64, width=128, workers=1, progress=False)
    cfg = load_config(None, ["uda.method=hrda", "model.encoder=mit_cpu_student", "model.head_channels=16",
                             "data.crop=[64,64]", f"data.val.root={root / 'target'}"])  # fmt: skip
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("m") / "model.safetensors", segmenter_from_config(cfg), cfg, "teacher")


def test_fixed_attention_selects_one_scale(hrda_file):
    from clda_deploy.checkpoint import load_segmenter

    model = load_segmenter(hrda_file)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        with model.fixed_attention(1.0):
            detail = model(image)
        with model.fixed_attention(0.0):
            context = model(image)
        fused = model(image)
        direct = torch.nn.functional.interpolate(model.head(model.encoder(image)), size=(64, 64), mode="bilinear")
    torch.testing.assert_close(detail, direct, rtol=1e-5, atol=1e-5)  # a = 1: the full-scale detail alone
    assert not torch.allclose(context, detail) and not torch.allclose(fused, detail)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"), model.fixed_attention(2.0):
        pass


def test_the_study_scores_three_branches_and_refuses_a_one_scale_model(hrda_file, tmp_path, capsys):
    scores = score_branches(hrda_file)
    assert set(scores) == {"fused", "detail_only", "context_only"} and all(0 <= v <= 100 for v in scores.values())
    assert main(["--checkpoint", str(hrda_file), "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())[str(hrda_file)] == scores
    assert "| model | fused | detail alone (a = 1) | context alone (a = 0) |" in capsys.readouterr().out
    cfg = load_config(None, ["model.encoder=mit_cpu_student", "model.head_channels=16"])
    plain = save_model(tmp_path / "plain.safetensors", segmenter_from_config(cfg), cfg, "teacher")
    assert main(["--checkpoint", str(plain)]) == 2
    assert "is not an HRDA model" in capsys.readouterr().err
