"""Resume state: RNGs, and the atomic ``checkpoint.pt`` (DESIGN §3).

``checkpoint.pt`` is read with ``torch.load(weights_only=True)``: a resume checkpoint holds tensors
and plain values only, so a run folder someone else wrote cannot run code when resumed. The only
non-plain objects older checkpoints hold, numpy's RNG state array, are allow-listed; new ones store
that state as plain integers. Anything else is refused with the names of the objects found.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clda_deploy.checkpoint import CheckpointError, save_torch


def capture_rng() -> dict[str, Any]:
    """Every RNG's state in plain Python values and tensors (``weights_only`` loadable)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = [str(name), [int(key) for key in keys], int(position), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(tuple(state["python"]) if isinstance(state["python"], list) else state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]  # a list, or an older checkpoint's tuple
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(position), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; deterministic given the seed on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: temp file, fsync, rename (a kill mid-write leaves the previous checkpoint)."""
    save_torch(path, payload)


def _numpy_rng_globals() -> list[Any]:
    """What pickling ``np.random.get_state()`` (a uint32 array) needs, and nothing more."""
    import importlib

    core = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
    return [core._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``checkpoint.pt`` without unpickling anything but tensors, plain values and numpy RNG state."""
    import pickle

    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}; start without --resume or pass the run's --out")
    torch.serialization.add_safe_globals(_numpy_rng_globals())
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _unsafe_globals(path)
        raise CheckpointError(
            f"{path} holds objects a resume checkpoint never has ({found or exc}); refusing to unpickle it, "
            "since that could run code: resume only from checkpoints clda-deploy wrote"
        ) from None
    except Exception as exc:  # truncated or foreign file
        raise CheckpointError(f"{path}: cannot read the resume checkpoint ({exc})") from None


def _unsafe_globals(path: Path) -> str:
    """The names of the non-allow-listed objects in ``path`` (empty when torch cannot tell)."""
    lister = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        return ", ".join(lister(path)) if lister is not None else ""
    except Exception:  # a file torch cannot even list
        return ""
