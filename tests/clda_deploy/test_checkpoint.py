import json

import pytest
import torch

from clda_deploy import build_segmenter, load_segmenter
from clda_deploy.checkpoint import (
    CONFIG_KEY,
    CheckpointError,
    atomic_write,
    check_init,
    initialise_from,
    read_config,
    read_role,
    save_model,
    save_torch,
)
from clda_deploy.config import load_config

SMALL = ["model.encoder=mit_cpu_student", "model.head_channels=32"]


def small_model_and_config():
    cfg = load_config(None, SMALL)
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.encoder, cfg.model.head, cfg.model.num_classes, head_channels=32).eval()
    return model, cfg


def test_round_trip_rebuilds_from_file_alone(tmp_path):
    model, cfg = small_model_and_config()
    path = save_model(tmp_path / "model.safetensors", model, cfg, role="student")
    loaded = load_segmenter(str(path))
    assert not loaded.training
    assert read_config(path) == cfg and read_role(path) == "student"
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    assert not list(tmp_path.glob("*.tmp")), "temporary files must not survive"


def test_missing_file_and_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_segmenter(str(tmp_path / "none.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors is not a readable safetensors file"):
        load_segmenter(str(junk))


def test_truncated_file_is_reported(tmp_path):
    model, cfg = small_model_and_config()
    path = save_model(tmp_path / "model.safetensors", model, cfg, role="teacher")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_segmenter(str(truncated))


def test_file_without_config_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=f"no '{CONFIG_KEY}' metadata"):
        load_segmenter(str(path))


def test_weights_not_matching_config_list_keys(tmp_path):
    from safetensors.torch import save_file

    _, cfg = small_model_and_config()
    metadata = {CONFIG_KEY: json.dumps({"model": {"encoder": "mit_cpu_student", "head_channels": 32}})}
    path = tmp_path / "wrong.safetensors"
    save_file({"encoder.unrelated": torch.zeros(1)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"missing keys.*unexpected keys \(e\.g\. encoder\.unrelated\)"):
        load_segmenter(str(path))


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "state.pt"
    save_torch(target, {"iteration": 1})

    def failing(tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert torch.load(target)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write"):
        atomic_write(blocker / "sub" / "model.safetensors", lambda tmp: None)


def test_init_weights_must_describe_the_same_architecture(tmp_path):
    model, cfg = small_model_and_config()
    path = save_model(tmp_path / "model.safetensors", model, cfg, role="teacher")
    other = build_segmenter(cfg.model.encoder, cfg.model.head, cfg.model.num_classes, head_channels=32)
    initialise_from(other, path, cfg)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], tensor, rtol=0, atol=0)
    wider = load_config(None, ["model.encoder=mit_cpu_student", "model.head_channels=64"])
    with pytest.raises(CheckpointError, match="holds model.head_channels=32 but this config has model.head_chan"):
        check_init(path, wider)
    with pytest.raises(CheckpointError, match="model.init: model file not found"):
        check_init(tmp_path / "missing.safetensors", cfg)


def test_tensors_sha256_ignores_metadata_and_sees_every_weight(tmp_path):
    from clda_deploy.checkpoint import file_sha256, save_model, tensors_sha256
    from clda_deploy.config import load_config
    from clda_deploy.models.segmenter import build_segmenter

    model = build_segmenter("mit_cpu_student", head_channels=32)
    cfg = load_config(None, ["model.encoder=mit_cpu_student", "model.head_channels=32"])
    first = save_model(tmp_path / "a.safetensors", model, cfg, role="teacher")
    second = save_model(tmp_path / "b.safetensors", model, cfg, role="teacher", extra={"note": "other metadata"})
    assert file_sha256(first) != file_sha256(second) and tensors_sha256(first) == tensors_sha256(second)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    third = save_model(tmp_path / "c.safetensors", model, cfg, role="teacher")
    assert tensors_sha256(third) != tensors_sha256(first)
