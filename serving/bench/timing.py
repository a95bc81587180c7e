"""Timing one predictor: warm-up, then ``iters`` timed calls, each stopped only after the device
finished (``torch.cuda.synchronize`` on CUDA: kernels are asynchronous, and a clock stopped at
launch measures the launch, not the work)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from serving.bench.common import BenchError, ModelFile


def runtime_module() -> Any:
    """``clda_deploy.runtime``, or a one-line error naming what is missing."""
    try:
        from clda_deploy import runtime
    except ImportError as exc:
        raise BenchError(
            f"clda_deploy.runtime cannot be imported ({exc}); install the project with `make setup`"
        ) from None
    return runtime


def open_predictor(model: ModelFile, device: str, threads: int | None) -> Any:
    """``load_predictor`` for one model file (errors propagate: callers decide skip or fail)."""
    return runtime_module().load_predictor(
        str(model.path), backend=model.runtime_backend, device=device, threads=threads
    )


def make_batch(height: int, width: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A float32 ``[batch,3,height,width]`` model input made with the shared preprocessing from
    random uint8 pixels (these models' run time does not depend on pixel values)."""
    from clda_deploy.data.transforms import preprocess_numpy

    rng = np.random.default_rng(seed)
    return preprocess_numpy(rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8))


def synchronize(device: str) -> None:
    """Wait for queued CUDA work before the clock stops; a no-op on CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_predictor(
    predictor: Any, images: np.ndarray, warmup: int, iters: int, want_logits: bool = False, progress: Any = None
) -> list[float]:
    """Milliseconds of ``iters`` calls of ``predictor.predict(images)`` after ``warmup`` untimed ones.

    Warm-up matters: the first calls allocate memory, pick kernels and (TensorRT, cuDNN) tune them.
    ``progress`` is an optional tqdm bar advanced once per call.
    """
    if iters < 1:
        raise BenchError(f"--iters must be at least 1, got {iters}")
    device = str(getattr(predictor, "device", "cpu"))
    for _ in range(max(warmup, 0)):
        predictor.predict(images, want_logits=want_logits)
        synchronize(device)
        if progress is not None:
            progress.update(1)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        predictor.predict(images, want_logits=want_logits)
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
        if progress is not None:
            progress.update(1)
    return times


def predictor_details(predictor: Any) -> dict[str, Any]:
    """What actually ran: backend, device and the ORT providers in use (ORT falls back silently)."""
    return {
        "runtime": str(getattr(predictor, "backend", "?")),
        "device": str(getattr(predictor, "device", "?")),
        "providers": list(getattr(predictor, "providers", ()) or ()),
    }
