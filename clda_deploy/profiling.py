"""Measuring predictors and training steps: timing, FLOPs, this machine's matmul rate, peak memory
and the machine description every measurement is written with (numbers mean nothing without it).

Shared by ``serving.bench``, ``training.studies.cost`` and both ``gpu_check`` commands, so that "warm up,
then time, stopping the clock only after the device finished" is implemented once.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, matmuls,
convolutions and attention only; elementwise ops are not counted, as is customary). Counting runs
on the meta device first: no arithmetic is done, so even the teacher at 512x1024 counts in well
under a second. On CPU tensors PyTorch's counter has no formula for the CPU flash-attention kernel
(``_scaled_dot_product_flash_attention_for_cpu``) and would silently leave attention out, so the
fallback path registers the standard SDPA formula for it; both paths give the same count.

torch is imported where it is used, so that a command line which only parses its flags (``--help``,
a usage error) does not pay for it.
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

# Environment variables that change CPU numbers (recorded with every report).
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "CUDA_VISIBLE_DEVICES")


def synchronize(device: str | torch.device) -> None:
    """Wait for queued CUDA work before a clock stops (kernels are asynchronous: a clock stopped at
    launch measures the launch, not the work); a no-op on CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_calls(
    call: Callable[[], object], warmup: int, iters: int, device: str | torch.device = "cpu", progress: Any = None
) -> list[float]:
    """Milliseconds of ``iters`` calls of ``call`` after ``warmup`` untimed ones, each stopped after
    ``synchronize(device)``.

    Warm-up matters: the first calls allocate memory, pick kernels and (TensorRT, cuDNN) tune them.
    ``progress`` is an optional tqdm bar advanced once per call.
    """
    if iters < 1:
        raise ValueError(f"iters must be at least 1, got {iters}")
    times = []
    for index in range(max(warmup, 0) + iters):
        start = time.perf_counter()
        call()
        synchronize(device)
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
        if progress is not None:
            progress.update(1)
    return times


def time_predictor(
    predictor: Any, images: np.ndarray, warmup: int, iters: int, want_logits: bool = False, progress: Any = None
) -> list[float]:
    """``time_calls`` of ``predictor.predict(images)`` on the predictor's own device."""
    device = str(getattr(predictor, "device", "cpu"))
    return time_calls(lambda: predictor.predict(images, want_logits=want_logits), warmup, iters, device, progress)


def time_alternating(
    first: Callable[[], object], second: Callable[[], object], warmup: int, iters: int, device: str = "cpu"
) -> tuple[list[float], list[float]]:
    """Milliseconds of ``first`` and ``second`` called in turn (A, B, A, B, ...), ``warmup`` untimed
    rounds first. On a shared machine the speed of the same call drifts by 10-20 % within minutes;
    interleaving exposes both series to the same drift, so their ratio stays meaningful."""
    first_ms: list[float] = []
    second_ms: list[float] = []
    for _ in range(max(warmup, 0) + iters):
        first_ms += time_calls(first, 0, 1, device)
        second_ms += time_calls(second, 0, 1, device)
    return first_ms[max(warmup, 0) :], second_ms[max(warmup, 0) :]


def time_round_robin(
    calls: dict[str, Callable[[], object]],
    warmup: int,
    iters: int,
    devices: dict[str, str] | None = None,
    progress: Any = None,
) -> dict[str, list[float]]:
    """Milliseconds of each of ``calls`` over ``iters`` rounds, each round calling every one once
    in turn after ``warmup`` untimed rounds: ``time_alternating`` for any number of calls, so every
    series sees the same drift of a shared machine and their ratios stay meaningful."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(max(warmup, 0) + iters):
        for name, call in calls.items():
            elapsed = time_calls(call, 0, 1, (devices or {}).get(name, "cpu"))
            if index >= warmup:
                times[name] += elapsed
            if progress is not None:
                progress.update(1)
    return times


def predictor_details(predictor: Any) -> dict[str, Any]:
    """What actually ran: backend, device, the ORT providers in use (ORT falls back silently) and
    the precision the runtime reports computing in (OpenVINO may run bf16 where asked for f32)."""
    return {
        "runtime": str(getattr(predictor, "backend", "?")),
        "device": str(getattr(predictor, "device", "?")),
        "providers": list(getattr(predictor, "providers", ()) or ()),
        "precision_used": str(getattr(predictor, "precision_used", "?")),
    }


def random_images(height: int, width: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A float32 ``[batch,3,height,width]`` model input made with the shared preprocessing from
    random uint8 pixels (these models' run time does not depend on pixel values)."""
    from clda_deploy.data.transforms import preprocess_numpy

    rng = np.random.default_rng(seed)
    return preprocess_numpy(rng.integers(0, 256, size=(batch, height, width, 3), dtype=np.uint8))


def peak_memory_mib(device: str | torch.device = "cpu") -> float:
    """Peak memory so far: ``torch.cuda.max_memory_allocated`` on CUDA (reset it before the part to
    measure), else this process's peak resident set (``ru_maxrss``, KiB on Linux)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_flash_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_counter() -> FlopCounterMode:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    extra: dict[Any, Any] = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        extra[cpu_flash] = _cpu_flash_attention_flops
    return FlopCounterMode(display=False, custom_mapping=extra)


def count_flops(model: torch.nn.Module, height: int, width: int, batch: int = 1, device: str = "meta") -> int:
    """Forward FLOPs of ``model`` on a ``[batch,3,height,width]`` input.

    ``device="meta"`` counts without computing (a copy of the model is moved there); ``"cpu"``
    runs a real forward pass. Should a model hold an op without a meta kernel, the meta count
    falls back to CPU.
    """
    import torch

    if device == "meta":
        try:
            meta_model = copy.deepcopy(model).to("meta").eval()
            return _count(meta_model, torch.empty(batch, 3, height, width, device="meta"))
        except (NotImplementedError, RuntimeError):
            device = "cpu"
    parameter = next(model.parameters(), None)
    model_device = parameter.device if parameter is not None else torch.device(device)
    return _count(model.eval(), torch.zeros(batch, 3, height, width, device=model_device))


def _count(model: torch.nn.Module, images: torch.Tensor) -> int:
    import torch

    counter = _flop_counter()
    with counter, torch.no_grad():
        model(images)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class MatmulRate:
    """The fp32 matmul ceiling a model's achieved GFLOP/s is compared with."""

    gflops: float
    size: int
    repeats: int
    seconds_per_matmul: float
    threads: int
    device: str
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def matmul_rate(
    threads: int | None = None, size: int = 2048, repeats: int = 5, min_seconds: float = 0.2, device: str = "cpu"
) -> MatmulRate:
    """Best-of-``repeats`` fp32 ``torch.matmul`` rate of two ``size x size`` matrices.

    A large square matmul is the fastest thing the hardware does in fp32, so it is the ceiling a
    model's achieved rate is compared with. Each repeat runs the product enough times to last at
    least ``min_seconds`` (short runs are dominated by timer noise); the best repeat is kept
    because interference from other processes only ever makes a run slower. On CUDA the clock
    stops after ``torch.cuda.synchronize`` (TF32 stays off, PyTorch's default for matmul).
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        left = torch.randn(size, size, generator=generator).to(device)
        right = torch.randn(size, size, generator=generator).to(device)
        output = torch.empty(size, size, device=device)

        def product() -> None:
            torch.matmul(left, right, out=output)

        (single_ms,) = time_calls(product, 1, 1, device)  # the warm-up pages in and picks the kernel
        inner = max(1, int(min_seconds * 1000.0 / max(single_ms, 1e-3)))
        repeated = time_calls(lambda: [product() for _ in range(inner)], 0, repeats, device)
        best = min(repeated) / 1000.0 / inner
        return MatmulRate(2.0 * size**3 / best / 1e9, size, repeats, best, torch.get_num_threads(), str(device))
    finally:
        torch.set_num_threads(previous)


def default_threads() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None, load_before: float | None = None) -> dict[str, Any]:
    """CPU model, core counts, memory, library versions, GPU name and the load average before and
    after the run: on a shared machine other processes' load changes every CPU number
    (oversubscribed OpenMP threads in particular), and the reader must be able to see it."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "threads": threads,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m": {"before": load_before, "after": load_average()},
        "thread_env": {key: os.environ[key] for key in THREAD_ENV if key in os.environ},
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info
