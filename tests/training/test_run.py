"""training/run.py: the run setup the teacher and student commands share (run folder, config
differences, the resume check, the run folder's config), and the typed overrides it is built with."""

from pathlib import Path

import pytest

from clda_deploy.config import ConfigError, config_to_dict, load_config, override
from training.distributed import DistInfo
from training.run import (
    check_resumable,
    config_differences,
    flatten,
    run_dir_for,
    save_run_config,
)
from training.state import save_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def test_override_sets_typed_values_equal_to_the_same_set_strings():
    base = load_config(CONFIGS / "smoke_student.yaml", ["train.iters=6"])
    typed = override(base, {"train.seed": 3, "clda.alpha": 0.99999, "clda.mapping": "none", "data.crop": [32, 48]})
    parsed = load_config(CONFIGS / "smoke_student.yaml",
                         ["train.iters=6", "train.seed=3", "clda.alpha=0.99999", "clda.mapping=none",
                          "data.crop=[32,48]"])  # fmt: skip
    assert typed == parsed and typed.data.crop == (32, 48) and typed.train.iters == 6
    assert typed.data.target == base.data.target, "untouched sections keep the base's values"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trian.seed": 1}, "did you mean 'train'"),
        ({"train.seed": "one"}, "train.seed: expected an integer"),
        ({"clda.mapping": "diagonal"}, "not a valid choice"),
        ({"clda.alpha": 2.0}, "clda.alpha"),
        ({"train": 1, "train.seed": 1}, "set both as a value and as a section"),
    ],
)
def test_override_validates_like_a_yaml_layer(values, message):
    with pytest.raises(ConfigError, match=message):
        override(load_config(None), values)


def test_run_dir_defaults_to_the_role_under_runs_default(tmp_path):
    assert run_dir_for(None, "teacher") == Path("runs/default/teacher")
    assert run_dir_for(str(tmp_path), "student") == tmp_path


def test_config_differences_names_changed_keys_and_skips_exempt_ones():
    saved = config_to_dict(load_config(None))
    cfg = override(load_config(None), {"train.lr": 0.1, "train.log_every": 7, "eval.max_images": 2})
    assert flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}
    assert config_differences(saved, cfg, ("eval.",), ("train.log_every",)) == "train.lr: 6e-05 -> 0.1"
    assert config_differences(saved, load_config(None)) is None


def test_resume_check_allows_schedule_changes_and_refuses_training_changes(tmp_path):
    cfg = load_config(CONFIGS / "smoke_teacher.yaml")
    save_checkpoint(tmp_path / "checkpoint.pt", {"config": config_to_dict(cfg)})
    check_resumable(override(cfg, {"train.iters": 8, "train.progress": True, "eval.max_images": 1}), tmp_path)
    with pytest.raises(ConfigError, match=r"--resume: the config differs .*uda.rcs: False -> True"):
        check_resumable(override(cfg, {"uda.rcs": True}), tmp_path)


def test_only_rank_zero_writes_the_run_config(tmp_path):
    cfg = load_config(CONFIGS / "smoke_teacher.yaml")
    save_run_config(cfg, tmp_path / "worker", DistInfo(rank=1, world_size=2))
    assert not (tmp_path / "worker").exists()
    save_run_config(cfg, tmp_path / "main", DistInfo())
    assert load_config(tmp_path / "main" / "config.yaml") == cfg
