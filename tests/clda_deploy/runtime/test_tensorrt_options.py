"""The execution-context helpers the TensorRT predictor calls, against a stand-in ``tensorrt``."""

import sys
from types import SimpleNamespace

import pytest

from clda_deploy.runtime.tensorrt_options import (
    ALLOCATION_STRATEGIES,
    DeviceMemory,
    allocation_strategy,
    create_context,
    needs_device_memory,
)

STRATEGY = SimpleNamespace(STATIC="S", ON_PROFILE_CHANGE="P", USER_MANAGED="U")


@pytest.fixture(autouse=True)
def fake_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(ExecutionContextAllocationStrategy=STRATEGY))


class Engine:
    def __init__(self):
        self.created = []

    def create_execution_context(self, strategy):
        self.created.append(strategy)
        return SimpleNamespace(strategy=strategy)


def test_create_context_passes_the_sidecar_strategy():
    engine = Engine()
    for name, value in zip(ALLOCATION_STRATEGIES, ("S", "P", "U"), strict=True):
        assert create_context(engine, name).strategy == value
    with pytest.raises(ValueError, match="not one of static, on_profile_change, user_managed"):
        create_context(engine, "lazy")


def test_create_context_through_a_runtime_config_when_the_strategy_overload_is_gone():
    class ConfigOnlyEngine:
        def create_runtime_config(self):
            config = SimpleNamespace(strategy=None)
            config.set_execution_context_allocation_strategy = lambda value: setattr(config, "strategy", value)
            return config

        def create_execution_context(self, runtime_config):
            if not hasattr(runtime_config, "set_execution_context_allocation_strategy"):
                raise TypeError("incompatible function arguments")
            return SimpleNamespace(strategy=runtime_config.strategy)

    assert create_context(ConfigOnlyEngine(), "user_managed").strategy == "U"


def test_allocation_strategy_of_a_sidecar():
    assert allocation_strategy({}) == "static"  # sidecars written before the key existed
    assert allocation_strategy({"allocation_strategy": "user_managed"}) == "user_managed"
    with pytest.raises(ValueError, match="'gpu' is not one of"):
        allocation_strategy({"allocation_strategy": "gpu"})
    assert needs_device_memory("user_managed") and not needs_device_memory("static")


class Context:
    def __init__(self, sizes):
        self.sizes, self.bound = list(sizes), []

    def update_device_memory_size_for_shapes(self):
        return self.sizes.pop(0)

    def set_device_memory(self, pointer, size):
        self.bound.append((pointer, size))


def test_device_memory_grows_to_the_largest_shape_and_is_reused():
    allocations = []

    def allocate(size):
        allocations.append(size)
        return SimpleNamespace(data_ptr=lambda: 1000 + len(allocations))

    memory, context = DeviceMemory(allocate), Context([100, 400, 200, 0])
    assert [memory.bind(context) for _ in range(4)] == [100, 400, 400, 400]
    assert allocations == [100, 400]  # the 200-byte shape reuses the 400-byte block
    assert context.bound == [(1001, 100), (1002, 400), (1002, 400), (1002, 400)]


def test_device_memory_on_releases_without_per_shape_sizes():
    context = SimpleNamespace(engine=SimpleNamespace(device_memory_size=300), device_memory=None)
    memory = DeviceMemory(lambda size: SimpleNamespace(data_ptr=lambda: 77))
    assert memory.bind(context) == 300 and context.device_memory == 77
