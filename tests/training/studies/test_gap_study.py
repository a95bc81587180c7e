"""``python -m training gap``: the styles it renders, its scoring, its table and JSON, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from clda_deploy import build_segmenter
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config
from clda_deploy.data.synthcity import render_styled
from clda_deploy.data.synthcity.style import SOURCE_STYLE, STREET_STYLE, STYLE_GROUPS, TARGET_STYLE, with_groups
from training.__main__ import main
from training.studies.gap_study import gap_variants, parse_models, score_style

SIZE = (64, 128)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    cfg = load_config(None, ["model.encoder=mit_cpu_student", "model.head_channels=16", "train.device=cpu"])
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.encoder, cfg.model.head, head_channels=16)
    return save_model(tmp_path_factory.mktemp("run") / "model.safetensors", model, cfg, role="teacher")


def fields_of(group: str) -> set[str]:
    return set(STYLE_GROUPS[group])


def test_variants_remove_or_add_exactly_one_group():
    variants = gap_variants()
    assert len(variants) == 3 + 2 * len(STYLE_GROUPS)
    assert variants["source style"] == SOURCE_STYLE and variants["target (generator default)"] == TARGET_STYLE
    for group in STYLE_GROUPS:
        without, only = variants[f"street without {group}"], variants[f"source with street {group} only"]
        for field in dataclasses.fields(SOURCE_STYLE):
            if field.name == "name":
                continue
            in_group = field.name in fields_of(group)
            assert getattr(without, field.name) == getattr(SOURCE_STYLE if in_group else STREET_STYLE, field.name)
            assert getattr(only, field.name) == getattr(STREET_STYLE if in_group else SOURCE_STYLE, field.name)


def test_groups_cover_every_style_field_once():
    grouped = [field for fields in STYLE_GROUPS.values() for field in fields]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {field.name for field in dataclasses.fields(SOURCE_STYLE)} - {"name"}
    with pytest.raises(ValueError, match="unknown style group"):
        with_groups(SOURCE_STYLE, STREET_STYLE, ("weather",), "x")


def test_score_style_equals_a_hand_computed_miou():
    """A predictor that always says "road": IoU(road) = road pixels / all pixels, every other class
    in the labels scores 0, and the mIoU averages over the classes present."""

    def always_road(images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(images.shape[0], 19, images.shape[2] // 4, images.shape[3] // 4)
        logits[:, 0] = 1.0
        return logits

    labels = np.stack([render_styled(0, index, "val", SOURCE_STYLE, *SIZE)[1] for index in range(3)])
    present = np.unique(labels)
    road_iou = (labels == 0).sum() / labels.size
    expected = 100.0 * road_iou / len(present)
    scores = score_style({"road": always_road}, SOURCE_STYLE, 3, 0, SIZE, 19)
    assert scores["road"] == pytest.approx(expected)


def test_gap_command_prints_the_table_and_writes_json(model_file, tmp_path, capsys):
    out = tmp_path / "gap.json"
    code = main(["gap", "--model", f"a={model_file}", "--model", f"b={model_file}", "--images", "2",
                 "--height", str(SIZE[0]), "--width", str(SIZE[1]), "--json", str(out)])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "| style | a | b |" in table and "| street without colour |" in table
    payload = json.loads(out.read_text())
    assert payload["images"] == 2 and payload["size"] == list(SIZE)
    assert payload["command"].startswith("python -m training gap --model a=")
    assert set(payload["miou"]) == set(gap_variants())
    for scores in payload["miou"].values():
        assert scores["a"] == scores["b"] and 0.0 <= scores["a"] <= 100.0  # same model, same score


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "nameless"], "NAME=PATH"),
        (["--model", "a=/no/such/model.safetensors"], "no such file"),
        (["--model", "a={m}", "--model", "a={m}"], "given twice"),
        (["--model", "a={m}", "--images", "0"], "--images"),
    ],
)
def test_bad_input_is_named(model_file, capsys, arguments, message):
    argv = ["gap", *(argument.format(m=model_file) for argument in arguments)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_no_model_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        parse_models([])


def test_render_styled_matches_the_benchmark_and_names_a_bad_split():
    from clda_deploy.data.synthcity import render_scene
    from clda_deploy.data.synthcity.style import resolve_style

    image, labels = render_styled(0, 3, "target", resolve_style("target", 1.0), *SIZE)
    expected_image, expected_labels = render_scene(0, 3, "target", *SIZE)
    assert np.array_equal(image, expected_image) and np.array_equal(labels, expected_labels)
    with pytest.raises(ValueError, match="split"):
        render_styled(0, 0, "night", SOURCE_STYLE, *SIZE)
