"""Pretrained encoder weights: timm and SegFormer naming, containers, strict errors, the hub path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.pvt_v2 import checkpoint_filter_fn

from clda_deploy.models.encoders import MiTEncoder, build_encoder
from clda_deploy.models.pretrained import load_pretrained, to_timm_names

ENCODER = "mit_cpu_student"


def _timm_to_segformer(key: str) -> str:
    """The inverse of the loader's mapping: timm pvt_v2 names -> SegFormer ``mit_bX.pth`` names."""
    key = key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")
    key = re.sub(r"^patch_embed\.", "patch_embed1.", key)
    key = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.", key)
    key = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.", key)
    return re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m.group(1)) + 1}.", key)


@pytest.fixture
def source() -> MiTEncoder:
    torch.manual_seed(0)
    return build_encoder(ENCODER)


def _assert_same_weights(loaded: MiTEncoder, source: MiTEncoder) -> None:
    expected = source.state_dict()
    actual = loaded.state_dict()
    assert list(actual) == list(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_timm_naming_pth_in_a_state_dict_container(source: MiTEncoder, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": source.state_dict(), "meta": {"epoch": 3}}, path)
    torch.manual_seed(1)
    fresh = build_encoder(ENCODER)
    load_pretrained(fresh, str(path))
    _assert_same_weights(fresh, source)


def test_timm_naming_safetensors_with_classifier(source: MiTEncoder, tmp_path: Path) -> None:
    state = {key: value.contiguous() for key, value in source.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)  # ImageNet classifier
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    _assert_same_weights(build_encoder(ENCODER, pretrained=str(path)), source)


@pytest.mark.parametrize("prefix, wrapper", [("", None), ("backbone.", "state_dict"), ("module.", "model")])
def test_segformer_naming(source: MiTEncoder, tmp_path: Path, prefix: str, wrapper: str | None) -> None:
    state = {prefix + _timm_to_segformer(key): value for key, value in source.state_dict().items()}
    assert "block3.1.mlp.dwconv.dwconv.weight" in {key.removeprefix(prefix) for key in state}
    assert f"{prefix}patch_embed4.proj.weight" in state and f"{prefix}norm4.weight" in state
    if prefix == "backbone.":
        state["decode_head.conv_seg.weight"] = torch.zeros(19, 256, 1, 1)  # a whole segmentor's file
    else:
        state[f"{prefix}head.weight"] = torch.zeros(1000, 256)
    path = tmp_path / "mit.pth"
    torch.save({wrapper: state} if wrapper else state, path)
    fresh = build_encoder(ENCODER)
    load_pretrained(fresh, str(path))
    _assert_same_weights(fresh, source)


def test_mapping_agrees_with_timms_filter(source: MiTEncoder) -> None:
    segformer = {_timm_to_segformer(key): value for key, value in source.state_dict().items()}
    assert to_timm_names(segformer).keys() == checkpoint_filter_fn(segformer, None).keys()


def test_missing_key_is_named(source: MiTEncoder, tmp_path: Path) -> None:
    state = source.state_dict()
    del state["stages.2.blocks.1.attn.kv.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing") as error:
        load_pretrained(build_encoder(ENCODER), str(path))
    assert "stages.2.blocks.1.attn.kv.weight" in str(error.value) and str(path) in str(error.value)


def test_wrong_shape_and_unexpected_keys_are_named(source: MiTEncoder, tmp_path: Path) -> None:
    state = source.state_dict()
    state["stages.0.norm.weight"] = torch.ones(7)
    state["stages.9.extra"] = torch.ones(1)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    target = build_encoder(ENCODER)
    before = {key: value.clone() for key, value in target.state_dict().items()}
    with pytest.raises(ValueError, match="shape-mismatched") as error:
        load_pretrained(target, str(path))
    message = str(error.value)
    assert "stages.0.norm.weight (file (7,), model (32,))" in message and "stages.9.extra" in message
    assert all(torch.equal(target.state_dict()[key], value) for key, value in before.items())  # untouched


def test_timm_pvt_v2_b0_does_not_fit_mit_b0(tmp_path: Path) -> None:
    # timm's pvt_v2_b0 uses MLP ratios 8,8,4,4: same keys, other shapes (no download: random init).
    path = tmp_path / "pvt_v2_b0.pth"
    torch.save(timm.create_model("pvt_v2_b0", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="mlp.fc1.weight"):
        load_pretrained(build_encoder("mit_b0"), str(path))


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained(build_encoder(ENCODER), str(tmp_path / "nowhere.pth"))
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        load_pretrained(build_encoder(ENCODER), str(odd))


def test_hub_failure_says_pass_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(timm, "create_model", unreachable)
    with pytest.raises(RuntimeError, match="unreachable") as error:
        load_pretrained(build_encoder(ENCODER), "timm:pvt_v2_b0")
    assert "local file" in str(error.value)
    with pytest.raises(ValueError, match="no model"):
        load_pretrained(build_encoder(ENCODER), "timm:not_a_model")
