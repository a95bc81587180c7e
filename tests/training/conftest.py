from pathlib import Path

import pytest

from clda_deploy.data.synthcity import generate_synthcity


@pytest.fixture(scope="session")
def tiny_synthcity(tmp_path_factory) -> Path:
    """A 40/8/40-image SynthCity at 64x128 (every class appears in source and val)."""
    out = tmp_path_factory.mktemp("bench") / "synthcity"
    generate_synthcity(out, num_source=40, num_target=8, num_val=40, height=64, width=128, workers=1, progress=False)
    return out
