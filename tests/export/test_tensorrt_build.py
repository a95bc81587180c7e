"""The TensorRT build recipe against a stand-in ``tensorrt`` module that records what is called.

The stand-in has only the documented Python API names the builder uses (BuilderFlag, create_network
flags, timing cache calls, ...); on TensorRT 11 it has no FP16/INT8/precision-constraint flags, as
TensorRT 11 does not. The real build runs in test_to_tensorrt.py where TensorRT and a GPU exist.
"""

import argparse
import json
import sys
from types import SimpleNamespace

import pytest

from export import ExportError
from export.to_tensorrt import (
    PRESETS,
    PROFILE_PRESETS,
    TIMING_CACHE_FILE,
    Profile,
    TensorRTOptions,
    add_tensorrt_arguments,
    build_engine,
    check_source,
    check_tensorrt_version,
    profile_from_args,
    source_suffix,
    tensorrt_options,
    version_tuple,
)

STRONGLY_TYPED_BIT = 1


class FakeCache:
    def __init__(self, data):
        self.data = bytes(data)

    def serialize(self):
        return self.data + b"|timed"  # a build adds timings


class FakeConfig:
    def __init__(self):
        self.flags, self.pools, self.profiles, self.cache = {"TF32"}, {}, [], None

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def create_timing_cache(self, data):
        if data and not bytes(data).startswith(b"CACHE"):
            raise RuntimeError("invalid timing cache")
        return FakeCache(data or b"CACHE")

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        self.cache = cache
        return not cache.data.startswith(b"CACHE-other-gpu")

    def get_timing_cache(self):
        return self.cache


class FakeTensor:
    def __init__(self, dtype):
        self.dtype = dtype


class FakeLayer:
    def __init__(self, name, kind, dtype):
        self.name, self.type, self.outputs, self.precision, self.output_types = (
            name,
            kind,
            [FakeTensor(dtype)],
            None,
            {},
        )

    @property
    def num_outputs(self):
        return len(self.outputs)

    def get_output(self, index):
        return self.outputs[index]

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


def fake_tensorrt(version="10.3.0", record=None):
    record = {} if record is None else record
    flags = dict(TF32="TF32", FP16="FP16", INT8="INT8", PREFER_PRECISION_CONSTRAINTS="PREFER")
    flags["OBEY_PRECISION_CONSTRAINTS"] = "OBEY"
    if version.startswith("11"):
        flags = {"TF32": "TF32"}
    kinds = SimpleNamespace(NORMALIZATION="norm", SOFTMAX="softmax", REDUCE="reduce", CONVOLUTION="conv")
    layers = [
        FakeLayer("ln", kinds.NORMALIZATION, "f16"),
        FakeLayer("mean", kinds.REDUCE, "f16"),
        FakeLayer("shape_prod", kinds.REDUCE, "i64"),  # integer shape arithmetic: never pinned
        FakeLayer("conv", kinds.CONVOLUTION, "f16"),
    ]

    class Network:
        num_layers = len(layers)

        def get_layer(self, index):
            return layers[index]

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, network_flags):
            record["network_flags"] = network_flags
            return Network()

        def create_builder_config(self):
            record["config"] = FakeConfig()
            return record["config"]

        def create_optimization_profile(self):
            profile = SimpleNamespace(shapes={})
            profile.set_shape = lambda name, low, mid, high: profile.shapes.update({name: (low, mid, high)})
            return profile

        def build_serialized_network(self, network, config):
            return memoryview(b"engine bytes")

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            record["parsed"] = path
            return True

    record["layers"] = layers
    return SimpleNamespace(
        __version__=version,
        Builder=Builder,
        OnnxParser=OnnxParser,
        BuilderFlag=SimpleNamespace(**flags),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=STRONGLY_TYPED_BIT),
        MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"),
        LayerType=kinds,
        float32="f32",
        float16="f16",
    )


def fake_logger(trt):
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    return trt


@pytest.fixture
def installed(monkeypatch):
    """Install a stand-in TensorRT of a given version; returns what its calls recorded."""

    def install(version="10.3.0"):
        record = {}
        monkeypatch.setitem(sys.modules, "tensorrt", fake_logger(fake_tensorrt(version, record)))
        return record

    return install


def onnx_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"onnx")
    return path


def sidecar_of(plan):
    return json.loads(plan.with_name(plan.name + ".json").read_text())


def test_strongly_typed_fp32_turns_tf32_off_and_keeps_a_timing_cache(tmp_path, installed):
    record = installed("10.3.0")
    options = TensorRTOptions(PROFILE_PRESETS["orin-nano"], "orin-nano", 1.0, None, False, "user_managed")
    plan = build_engine(onnx_file(tmp_path, "student.onnx"), tmp_path / "student.plan", "fp32", {"k": "v"}, options)
    assert record["network_flags"] == 1 << STRONGLY_TYPED_BIT
    config = record["config"]
    assert config.flags == set() and config.pools == {"workspace": 1 << 30}  # TF32 cleared, no precision flags
    assert config.profiles[0].shapes["image"] == ((1, 3, 256, 256), (1, 3, 512, 1024), (1, 3, 512, 1024))
    assert plan.read_bytes() == b"engine bytes"
    cache = tmp_path / TIMING_CACHE_FILE
    assert cache.read_bytes() == b"CACHE|timed"
    sidecar = sidecar_of(plan)
    assert sidecar == {
        "tensorrt_version": "10.3.0",
        "precision": "fp32",
        "strongly_typed": True,
        "profile": {"min": [1, 3, 256, 256], "opt": [1, 3, 512, 1024], "max": [1, 3, 512, 1024]},
        "preset": "orin-nano",
        "workspace_bytes": 1 << 30,
        "timing_cache": str(cache),
        "allocation_strategy": "user_managed",
        "onnx": str(tmp_path / "student.onnx"),
        "metadata": {"k": "v"},
        "tf32": False,
        "fp32_pinned_layers": 0,
        "timing_cache_status": "new",
    }
    build_engine(tmp_path / "student.onnx", plan, "fp32", {}, options)  # the second build starts from the file
    assert sidecar_of(plan)["timing_cache_status"] == "reused" and cache.read_bytes() == b"CACHE|timed|timed"


@pytest.mark.parametrize("precision, name", [("fp16", "student.fp16.onnx"), ("int8", "student.int8-trt.onnx")])
def test_strongly_typed_low_precision_comes_from_the_onnx(tmp_path, installed, precision, name):
    record = installed("11.0.0")  # no precision flags exist at all
    plan = build_engine(onnx_file(tmp_path, name), tmp_path / f"student.{precision}.plan", precision, {})
    assert record["config"].flags == {"TF32"} and record["parsed"].endswith(name)
    assert all(layer.precision is None for layer in record["layers"])
    assert sidecar_of(plan)["strongly_typed"] and sidecar_of(plan)["tf32"]


def test_weakly_typed_fp16_prefers_fp32_pins_on_float_layers_only(tmp_path, installed):
    record = installed("10.3.0")
    options = TensorRTOptions(weakly_typed=True)
    plan = build_engine(onnx_file(tmp_path, "student.onnx"), tmp_path / "student.fp16.plan", "fp16", {}, options)
    assert record["network_flags"] == 0
    assert record["config"].flags == {"TF32", "FP16", "PREFER"}  # PREFER, never OBEY
    pinned = {layer.name for layer in record["layers"] if layer.precision == "f32"}
    assert pinned == {"ln", "mean"}
    assert record["layers"][1].output_types == {0: "f32"} and record["layers"][2].output_types == {}
    assert sidecar_of(plan)["fp32_pinned_layers"] == 2 and not sidecar_of(plan)["strongly_typed"]


def test_weakly_typed_int8_sets_the_int8_flag(tmp_path, installed):
    record = installed("10.3.0")
    options = TensorRTOptions(weakly_typed=True)
    build_engine(onnx_file(tmp_path, "m.int8-trt.onnx"), tmp_path / "m.int8.plan", "int8", {}, options)
    assert record["config"].flags == {"TF32", "INT8"}


def test_versions_and_modes_that_cannot_build(tmp_path, installed):
    installed("11.1.0")
    with pytest.raises(ExportError, match="--weakly-typed: TensorRT 11.1.0 has no FP16/INT8"):
        build_engine(
            onnx_file(tmp_path, "m.onnx"), tmp_path / "m.fp16.plan", "fp16", {}, TensorRTOptions(weakly_typed=True)
        )
    with pytest.raises(ExportError, match=r"needs TensorRT >= 10 \(JetPack >= 6.1"):
        check_tensorrt_version("8.6.2", weakly_typed=False)
    check_tensorrt_version("10.13.3", weakly_typed=True)  # deprecated there, still allowed (a warning)
    assert not (tmp_path / "m.fp16.plan").exists()


def test_a_corrupt_or_foreign_timing_cache_is_replaced(tmp_path, installed):
    installed("10.3.0")
    source = onnx_file(tmp_path, "m.onnx")
    cache = tmp_path / "shared" / "trt.cache"
    cache.parent.mkdir()
    options = TensorRTOptions(timing_cache=cache)
    cache.write_bytes(b"\x00garbage")
    plan = build_engine(source, tmp_path / "m.plan", "fp32", {}, options)
    assert sidecar_of(plan)["timing_cache_status"] == "replaced-corrupt" and cache.read_bytes() == b"CACHE|timed"
    cache.write_bytes(b"CACHE-other-gpu")
    build_engine(source, plan, "fp32", {}, options)
    assert sidecar_of(plan)["timing_cache_status"] == "replaced-mismatch" and cache.read_bytes() == b"CACHE|timed"
    assert sorted(path.name for path in cache.parent.iterdir()) == ["trt.cache"]  # no temp file left


def test_source_onnx_must_match_the_precision(tmp_path):
    assert [source_suffix(p) for p in ("fp32", "fp16", "int8")] == [".onnx", ".fp16.onnx", ".int8-trt.onnx"]
    assert source_suffix("fp16", weakly_typed=True) == ".onnx"
    for name, precision in [
        ("s.fp16.onnx", "fp32"),
        ("s.onnx", "fp16"),
        ("s.int8.onnx", "int8"),
        ("s.int8.onnx", "fp32"),
    ]:
        with pytest.raises(ExportError, match=f"{precision} engine is built from a <name>"):
            check_source(onnx_file(tmp_path, name), precision)
    with pytest.raises(ExportError, match="no such ONNX file"):
        check_source(tmp_path / "missing.onnx", "fp32")
    with pytest.raises(ExportError, match="precision must be one of fp32, fp16, int8"):
        source_suffix("bf16")
    assert version_tuple("10.3.0.30") == (10, 3) and version_tuple("11.0.0b1") == (11, 0)


def parse(argv):
    parser = argparse.ArgumentParser()
    add_tensorrt_arguments(parser)
    return tensorrt_options(parser.parse_args(argv))


def test_cli_presets_and_overrides(tmp_path):
    desktop = parse([])
    assert desktop == TensorRTOptions()
    assert desktop.profile == Profile() and desktop.allocation_strategy == "static" and desktop.workspace_gib == 4.0
    nano = parse(["--profile", "orin-nano"])
    assert nano.profile == PRESETS["orin-nano"].profile and nano.profile.max == (1, 3, 512, 1024)
    assert nano.workspace_gib == 1.0 and nano.allocation_strategy == "user_managed" and nano.preset == "orin-nano"
    custom = parse(["--profile", "orin-agx", "--max-shape", "1x3x768x1536", "--workspace-gib", "0.5",
                    "--timing-cache", str(tmp_path / "c.cache"), "--allocation-strategy", "static"])  # fmt: skip
    assert custom.profile == Profile((1, 3, 256, 256), (1, 3, 512, 1024), (1, 3, 768, 1536))
    assert custom.timing_cache == tmp_path / "c.cache" and custom.workspace_bytes == 1 << 29
    assert custom.timing_cache_path(tmp_path / "x" / "m.plan") == tmp_path / "c.cache"
    assert nano.timing_cache_path(tmp_path / "x" / "m.plan") == tmp_path / "x" / TIMING_CACHE_FILE
    with pytest.raises(ExportError, match="min <= opt <= max"):
        parse(["--profile", "orin-nano", "--opt-shape", "1x3x1024x2048"])  # above the preset's max
    with pytest.raises(ExportError, match="--workspace-gib must be a positive number"):
        parse(["--workspace-gib", "0"])
    with pytest.raises(ExportError, match="is a folder"):
        parse(["--timing-cache", str(tmp_path)])
    with pytest.raises(SystemExit):
        parse(["--profile", "raspberry"])
    with pytest.raises(ExportError, match="choose from desktop, orin-agx, orin-nano"):
        profile_from_args("raspberry")


def test_engine_from_a_copied_onnx_on_the_device(tmp_path, installed, monkeypatch, exported):
    """``python -m export.to_tensorrt`` builds from the ONNX alone, with the ONNX's own metadata."""
    import shutil

    import export.to_tensorrt as to_tensorrt

    installed("10.3.0")
    monkeypatch.setattr(to_tensorrt, "require_tensorrt", lambda: None)
    source = tmp_path / "student.fp16.onnx"
    shutil.copyfile(exported["fp16"], source)
    assert to_tensorrt.main([str(source), "--precision", "fp16", "--profile", "orin-nano"]) == 0
    sidecar = sidecar_of(tmp_path / "student.fp16.plan")
    assert sidecar["preset"] == "orin-nano" and sidecar["metadata"]["clda_name"] == "student"
    assert sidecar["metadata"]["clda_precision"] == "fp16" and "clda_classes" in sidecar["metadata"]
    assert to_tensorrt.main([str(source), "--precision", "fp32"]) == 2  # an fp16 file is no fp32 source
