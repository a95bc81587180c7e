from pathlib import Path

import pytest
from training_testkit import CONFIGS, synthcity_overrides

from clda_deploy.artifacts import MODEL_FILE
from clda_deploy.config import load_config
from clda_deploy.data.synthcity import generate_synthcity


@pytest.fixture(scope="session")
def tiny_synthcity(tmp_path_factory) -> Path:
    """A 40/8/40-image SynthCity at 64x128 (every class appears in source and val)."""
    out = tmp_path_factory.mktemp("bench") / "synthcity"
    generate_synthcity(out, num_source=40, num_target=8, num_val=40, height=64, width=128, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def smoke_teacher(tiny_synthcity, tmp_path_factory) -> Path:
    """A smoke teacher trained once on ``tiny_synthcity`` (its model.safetensors)."""
    from training.teacher import train_teacher

    run = tmp_path_factory.mktemp("teacher")
    train_teacher(load_config(CONFIGS / "smoke_teacher.yaml", synthcity_overrides(tiny_synthcity)), run)
    return run / MODEL_FILE
