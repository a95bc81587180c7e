"""Resume checkpoints load with ``weights_only=True``: RNG state round-trips, older files with numpy
RNG arrays still load, and a file holding anything else is refused without running it."""

import json
import random

import numpy as np
import pytest
import torch

from clda_deploy.checkpoint import CheckpointError
from training.state import capture_rng, load_checkpoint, restore_rng

CALLED = []


def _side_effect(*args):
    CALLED.append(args)
    return args


class Payload:
    """Unpickling this calls ``_side_effect``: what a hostile checkpoint would do."""

    def __reduce__(self):
        return (_side_effect, ("ran",))


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    state = capture_rng()
    json.dumps(state["numpy"])  # plain values: no numpy object to allow-list
    expected = draws()
    torch.save({"iteration": 3, "rng": state}, tmp_path / "checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    restore_rng(loaded["rng"])
    assert draws() == expected and loaded["iteration"] == 3


def test_older_checkpoints_with_numpy_rng_arrays_still_load(tmp_path):
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = draws()
    torch.save({"iteration": 1, "rng": old}, tmp_path / "checkpoint.pt")
    restore_rng(load_checkpoint(tmp_path / "checkpoint.pt")["rng"])
    assert draws() == expected


def test_a_checkpoint_holding_other_objects_is_refused_unrun(tmp_path):
    torch.save({"iteration": 1, "model": {}, "extra": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"holds objects a resume checkpoint never has \(.*_side_effect"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert CALLED == []
    (tmp_path / "truncated.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="cannot read the resume checkpoint"):
        load_checkpoint(tmp_path / "truncated.pt")
