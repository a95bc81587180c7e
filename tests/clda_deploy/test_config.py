import time

import pytest

from clda_deploy.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    save_config,
)


def test_defaults_validate_and_round_trip():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  iters: 10\n  lr: 1.0e-4\ndata:\n  crop: [64, 96]\n")
    cfg = load_config(path, ["train.iters=20", "model.head=segformer", "data.source.resize=[32, 64]"])
    assert cfg.train.iters == 20
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.data.crop == (64, 96)
    assert cfg.data.source.resize == (32, 64)
    assert cfg.model.head == "segformer"


def test_int_accepted_for_float_and_lists_become_tuples():
    cfg = load_config(None, ["train.lr=1", "eval.stride=[8, 8]"])
    assert isinstance(cfg.train.lr, float) and cfg.eval.stride == (8, 8)


def test_exponent_floats_without_a_dot_are_numbers():
    # PyYAML (YAML 1.1) reads 2e-4 as a string; every user means 0.0002.
    cfg = load_config(None, ["train.lr=2e-4", "uda.ema_alpha=9.9E-1", "train.weight_decay=-1e-2"])
    assert (cfg.train.lr, cfg.uda.ema_alpha, cfg.train.weight_decay) == (2e-4, 0.99, -0.01)
    with pytest.raises(ConfigError, match="train.iters: expected an integer, got '2e3'"):
        load_config(None, ["train.iters=2e3"])
    with pytest.raises(ConfigError, match="train.lr: expected a number, got 'e-4'"):
        load_config(None, ["train.lr=e-4"])


def test_errors_say_whether_the_file_or_set_is_wrong(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"train.lr: expected a number, got 'fast' \(in .*run.yaml\)"):
        load_config(path, ["train.iters=3"])
    path.write_text("train:\n  lr: 0.1\n")
    for overrides in (["train.lr=slow"], ["trian.iters=3"], ["train.itres=3"]):
        with pytest.raises(ConfigError, match=r"\(from --set\)$"):
            load_config(path, overrides)


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train.iters = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["trian.iters=5"], "unknown key 'trian' (did you mean 'train'?)"),
        (["train.itres=5"], "did you mean 'train.iters'"),
        (["train.iters=abc"], "train.iters: expected an integer, got 'abc'"),
        (["train.iters=true"], "train.iters: expected an integer"),
        (["train.amp=1"], "train.amp: expected bool"),
        (["model.encoder=mit_b9"], "choose one of ['mit_b0'"),
        (["model.head=unet"], "model.head: 'unet' is not a valid choice"),
        (["data.source.format=kitti"], "data.source.format"),
        (["data.crop=[1]"], "data.crop: expected a list of 2 ints"),
        (["data.crop=[0, 4]"], "data.crop: must be positive"),
        (["train.lr=-1"], "train.lr: must be positive"),
        (["eval.num_classes_reported=17"], "choose one of [19, 16, 13]"),
        (["train=3"], "train: expected a mapping"),
        (["noequals"], "--set expects key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, fragment):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value)
    assert time.perf_counter() - start < 5


def test_yaml_typo_names_file_and_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("trian:\n  iters: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*typo.yaml"):
        load_config(path)


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(scalar)


def test_parse_overrides_nests_and_parses_yaml():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=null"]) == {"a": {"b": 1, "c": [1, 2]}, "d": None}


def test_save_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.iters=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_partial_section_keeps_parent_defaults():
    cfg = load_config(None, ["data.target.root=/x", "data.val.root=/y"])
    assert cfg.data.target.format == "cityscapes" and cfg.data.target.root == "/x"
    assert cfg.data.val.split == "val" and cfg.data.val.root == "/y"


def test_student_schedule_too_short_for_the_similarity_window_names_the_keys():
    from clda_deploy.config import check_student_schedule, stage_iterations

    short = load_config(None, ["train.iters=6", "clda.t2=0.3", "clda.t3=0.4"])
    assert stage_iterations(short) == (2, 2)
    with pytest.raises(ConfigError, match=r"train.iters=6 is too short .*clda.t2=0.3 and clda.t3=0.4"):
        check_student_schedule(short)
    check_student_schedule(load_config(None, ["train.iters=6", "clda.mapping=none"]))  # no window needed
    check_student_schedule(load_config(None, ["train.iters=600"]))
    assert stage_iterations(load_config(None, ["train.iters=600"])) == (180, 240)


def test_older_files_saliency_labels_key_maps_to_saliency_data():

    assert config_from_dict({"clda": {"saliency_labels": True}}).clda.saliency_data == "val"
    assert config_from_dict({"clda": {"saliency_labels": False}}).clda.saliency_data == "agreement"


def test_the_signed_rule_needs_labelled_saliency_data():
    with pytest.raises(ConfigError, match="signed needs labels"):
        load_config(None, ["clda.saliency_rule=signed", "clda.saliency_data=agreement"])
    assert load_config(None, ["clda.saliency_rule=signed", "clda.saliency_data=heldout"]).clda.saliency_rule == "signed"


def test_the_legacy_key_migrates_per_layer_and_refuses_a_conflict():
    assert load_config(None, ["clda.saliency_labels=false"]).clda.saliency_data == "agreement"
    base = {"clda": {"saliency_labels": True}}  # an older checkpoint's config under a newer --set
    assert load_config(None, ["clda.saliency_data=heldout"], base=base).clda.saliency_data == "heldout"
    with pytest.raises(ConfigError, match="disagree"):
        load_config(None, ["clda.saliency_labels=false", "clda.saliency_data=heldout"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(None, ["clda.saliency_labels=3"])
