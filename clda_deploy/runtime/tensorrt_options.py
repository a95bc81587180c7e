"""How a TensorRT execution context gets its activation memory, as the engine's sidecar asks.

An execution context needs a block of device memory for the engine's internal activations. With
TensorRT's default (``static``) it is allocated once, for the largest shape of every profile;
``on_profile_change`` allocates it when a profile is selected (the same size for this project's
one-profile engines); ``user_managed`` lets the caller allocate it, and
``IExecutionContext.update_device_memory_size_for_shapes()`` (TensorRT >= 10.1) tells how much the
*current* input shape needs, so a 512x1024 request on an engine whose profile reaches 1024x2048
does not hold the 1024x2048 amount. That matters on Jetson, where the GPU shares the board's 8 GB.

``python -m export --tensorrt`` records the strategy in the sidecar (``allocation_strategy``); the
predictor calls ``create_context(engine, strategy)`` and, for ``user_managed``, keeps one
``DeviceMemory`` per context and calls ``bind(context)`` after ``set_input_shape`` and before
``execute_async_v3``. Torch-free; ``tensorrt`` is imported only inside ``create_context``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

ALLOCATION_STRATEGIES = ("static", "on_profile_change", "user_managed")
DEFAULT_ALLOCATION_STRATEGY = "static"


def allocation_strategy(settings: Mapping[str, Any]) -> str:
    """The strategy a sidecar asks for (``static`` for sidecars written before it was recorded)."""
    strategy = str(settings.get("allocation_strategy") or DEFAULT_ALLOCATION_STRATEGY)
    if strategy not in ALLOCATION_STRATEGIES:
        raise ValueError(f"allocation_strategy {strategy!r} is not one of {', '.join(ALLOCATION_STRATEGIES)}")
    return strategy


def create_context(engine: Any, strategy: str = DEFAULT_ALLOCATION_STRATEGY) -> Any:
    """An execution context of ``engine`` whose activation memory follows ``strategy``."""
    import tensorrt as trt

    if strategy not in ALLOCATION_STRATEGIES:
        raise ValueError(f"allocation strategy {strategy!r} is not one of {', '.join(ALLOCATION_STRATEGIES)}")
    value = getattr(trt.ExecutionContextAllocationStrategy, strategy.upper())
    try:
        context = engine.create_execution_context(value)
    except TypeError:
        # Releases that only take an IRuntimeConfig (TensorRT 10.14+ added that overload; keep
        # working should the strategy overload go): the same strategy through the runtime config.
        runtime_config = engine.create_runtime_config()
        runtime_config.set_execution_context_allocation_strategy(value)
        context = engine.create_execution_context(runtime_config)
    if context is None:
        raise RuntimeError(f"TensorRT could not create an execution context ({strategy} allocation; see its log)")
    return context


def needs_device_memory(strategy: str) -> bool:
    """Whether the caller must give the context its activation memory (``DeviceMemory.bind``)."""
    return strategy == "user_managed"


class DeviceMemory:
    """The activation memory of one ``user_managed`` context, grown to the largest shape seen so far.

    ``allocate(nbytes)`` returns a device buffer with ``data_ptr()`` (e.g. ``torch.empty(n,
    dtype=torch.uint8, device=...)``); the buffer is kept here, so it lives as long as the context
    may use it. Not thread-safe: call under the same lock as the execution, after the previous
    execution on the stream has finished (the predictor synchronizes its stream each call)."""

    def __init__(self, allocate: Callable[[int], Any]) -> None:
        self._allocate = allocate
        self.buffer: Any = None
        self.size = 0

    def required(self, context: Any) -> int:
        """Bytes the context needs for its current input shapes."""
        update = getattr(context, "update_device_memory_size_for_shapes", None)  # TensorRT >= 10.1
        if update is not None:
            return int(update())
        engine = context.engine  # older: the engine's maximum over the profile
        return int(getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size)

    def bind(self, context: Any) -> int:
        """Give ``context`` enough memory for its current input shapes; returns the bytes bound."""
        need = max(self.required(context), 1)
        if need > self.size:
            self.buffer = None  # free the smaller block before allocating the larger one
            self.buffer, self.size = self._allocate(need), need
        pointer = int(self.buffer.data_ptr())
        if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1: pointer and size
            context.set_device_memory(pointer, self.size)
        else:
            context.device_memory = pointer
        return self.size
