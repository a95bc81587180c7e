"""FLOPs of a model and this machine's fp32 matrix-multiply rate: together they turn a latency into
an efficiency (achieved GFLOP/s over what the hardware does on its best-case kernel), which says
whether a model is slow because it does much work or because it runs badly.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, matmuls,
convolutions and attention only; elementwise ops are not counted, as is customary). Counting runs
on the meta device first: no arithmetic is done, so even the teacher at 512x1024 counts in well
under a second. On CPU tensors PyTorch's counter has no formula for the CPU flash-attention kernel
(``_scaled_dot_product_flash_attention_for_cpu``) and would silently leave attention out, so the
fallback path registers the standard SDPA formula for it; both paths give the same count.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_flash_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _counter() -> FlopCounterMode:
    extra: dict[Any, Any] = {}
    cpu_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is not None:
        extra[cpu_flash] = _cpu_flash_attention_flops
    return FlopCounterMode(display=False, custom_mapping=extra)


@torch.no_grad()
def count_flops(model: torch.nn.Module, height: int, width: int, batch: int = 1, device: str = "meta") -> int:
    """Forward FLOPs of ``model`` on a ``[batch,3,height,width]`` input.

    ``device="meta"`` counts without computing (a copy of the model is moved there); ``"cpu"``
    runs a real forward pass. Should a model hold an op without a meta kernel, the meta count
    falls back to CPU.
    """
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
    counter = _counter()
    with counter:
        model(images)
    return int(counter.get_total_flops())


def matmul_rate(
    threads: int | None = None, size: int = 2048, repeats: int = 5, min_seconds: float = 0.2, device: str = "cpu"
) -> dict[str, Any]:
    """Best-of-``repeats`` fp32 ``torch.matmul`` rate of two ``size x size`` matrices, in GFLOP/s.

    A large square matmul is the fastest thing the hardware does in fp32, so it is the ceiling a
    model's achieved rate is compared with. Each repeat runs the product enough times to last at
    least ``min_seconds`` (short runs are dominated by timer noise); the best repeat is kept
    because interference from other processes only ever makes a run slower. On CUDA the clock
    stops after ``torch.cuda.synchronize`` (TF32 stays off, PyTorch's default for matmul).
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        left = torch.randn(size, size, generator=generator).to(device)
        right = torch.randn(size, size, generator=generator).to(device)
        output = torch.empty(size, size, device=device)
        sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

        def seconds(count: int) -> float:
            sync()
            start = time.perf_counter()
            for _ in range(count):
                torch.matmul(left, right, out=output)
            sync()
            return time.perf_counter() - start

        seconds(1)  # warm-up: page in, pick the kernel
        inner = max(1, int(min_seconds / max(seconds(1), 1e-6)))
        best = min(seconds(inner) / inner for _ in range(repeats))
        gflops = 2.0 * size**3 / best / 1e9
        return {
            "gflops": gflops,
            "size": size,
            "repeats": repeats,
            "seconds_per_matmul": best,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "dtype": "float32",
        }
    finally:
        torch.set_num_threads(previous)
