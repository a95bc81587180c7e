"""ONNX -> TensorRT engine ``<name>[.fp16|.int8].plan`` plus its sidecar ``<plan>.json`` (DESIGN §8).

Needs TensorRT >= 10 (JetPack 6.1+ on Jetson). By default the network is **strongly typed**: every
tensor keeps the type the ONNX gives it, so the precision is chosen by which ONNX is built:

- fp32 from ``<name>.onnx``, with TF32 turned off so the fp32 parity gate compares fp32 with fp32;
- fp16 from ``<name>.fp16.onnx``, whose LayerNorm, Softmax and reductions are already float32;
- int8 from ``<name>.int8-trt.onnx``, a Q/DQ graph: strongly typed + Q/DQ is TensorRT's explicit
  quantization (no calibrator, the scales are in the file).

``--weakly-typed`` keeps the old TensorRT 10 path (fp32 ONNX + ``BuilderFlag.FP16`` with fp32 pins,
or the Q/DQ ONNX + ``BuilderFlag.INT8``). TensorRT deprecates it from 10.12 and TensorRT 11 has no
precision builder flags, so it is refused there.

One optimization profile (min/opt/max of ``image``, from a ``--profile`` preset plus overrides),
a workspace limit, and a timing cache kept between builds (``<out>/tensorrt.timing.cache``) so a
rebuild of the same model on the same GPU skips most tactic timing. Engines only run on the
TensorRT version that built them; the sidecar records it with everything else the build chose,
including the execution-context allocation strategy the runtime should use
(``clda_deploy.runtime.tensorrt_options``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clda_deploy.runtime import available_backends
from clda_deploy.runtime.metadata import engine_sidecar
from clda_deploy.runtime.tensorrt_options import ALLOCATION_STRATEGIES
from export import ExportError, write_atomic

log = logging.getLogger("export")

Shape = tuple[int, int, int, int]
DEFAULT_MIN: Shape = (1, 3, 256, 256)
DEFAULT_OPT: Shape = (1, 3, 512, 1024)
DEFAULT_MAX: Shape = (4, 3, 1024, 2048)
DEFAULT_WORKSPACE_GIB = 4.0
PRECISIONS = ("fp32", "fp16", "int8")
MIN_TENSORRT_MAJOR = 10
WEAKLY_TYPED_DEPRECATED = (10, 12)  # TensorRT deprecates weakly typed networks from 10.12
TIMING_CACHE_FILE = "tensorrt.timing.cache"
# The ONNX each precision is built from (strongly typed); the weakly typed fp16 path takes fp32.
SOURCE_SUFFIXES = {"fp32": ".onnx", "fp16": ".fp16.onnx", "int8": ".int8-trt.onnx"}


@dataclass(frozen=True)
class Profile:
    """min <= opt <= max input shapes ``[B,3,H,W]`` of the engine's one optimization profile."""

    min: Shape = DEFAULT_MIN
    opt: Shape = DEFAULT_OPT
    max: Shape = DEFAULT_MAX

    def __post_init__(self) -> None:
        for label, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
                raise ExportError(f"--{label}-shape must be Bx3xHxW with positive sizes, got {shape}")
        if not all(lo <= mid <= hi for lo, mid, hi in zip(self.min, self.opt, self.max, strict=True)):
            raise ExportError(f"TensorRT profile needs min <= opt <= max, got {self.min}, {self.opt}, {self.max}")

    def as_dict(self) -> dict[str, list[int]]:
        """``{"min": [B,3,H,W], "opt": ..., "max": ...}``: the sidecar's and Triton's form."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class Preset:
    """A deployment target: its profile, workspace limit and execution-context allocation strategy."""

    profile: Profile
    workspace_gib: float
    allocation_strategy: str
    description: str


# Orin Nano (8 GB shared by CPU and GPU): batch 1, tuned for and capped at 512x1024 (Cityscapes at
# half resolution, what an edge camera pipeline serves). max = opt so TensorRT times its tactics for
# exactly the served size and the activation memory is bounded by it; a smaller min keeps small
# images working. ``user_managed`` sizes the activation memory per call for the actual input.
# AGX Orin (32/64 GB) affords full-resolution 1024x2048 and a batch of 2.
PRESETS: dict[str, Preset] = {
    "desktop": Preset(Profile(), DEFAULT_WORKSPACE_GIB, "static", "discrete GPU: batch 1-4 up to 1024x2048"),
    "orin-agx": Preset(
        Profile((1, 3, 256, 256), (1, 3, 512, 1024), (2, 3, 1024, 2048)), 2.0, "user_managed", "Jetson AGX Orin"
    ),
    "orin-nano": Preset(
        Profile((1, 3, 256, 256), (1, 3, 512, 1024), (1, 3, 512, 1024)), 1.0, "user_managed", "Jetson Orin Nano/NX"
    ),
}
PROFILE_PRESETS: dict[str, Profile] = {name: preset.profile for name, preset in PRESETS.items()}
DEFAULT_PRESET = "desktop"


def parse_shape(text: str) -> Shape:
    """``"1x3x512x1024"`` -> ``(1, 3, 512, 1024)``."""
    try:
        values = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ExportError(f"a shape looks like 1x3x512x1024, got {text!r}") from None
    if len(values) != 4:
        raise ExportError(f"a shape has four sizes BxCxHxW, got {text!r}")
    return values  # type: ignore[return-value]


def format_shape(shape: tuple[int, ...]) -> str:
    """``(1, 3, 512, 1024)`` -> ``"1x3x512x1024"``."""
    return "x".join(str(size) for size in shape)


def profile_from_args(
    preset: str = DEFAULT_PRESET,
    min_shape: str | None = None,
    opt_shape: str | None = None,
    max_shape: str | None = None,
) -> Profile:
    """The preset's profile with any of min/opt/max replaced by an explicit ``--*-shape``."""
    if preset not in PRESETS:
        raise ExportError(f"--profile {preset!r} is not a preset; choose from {', '.join(PRESETS)}")
    base = PRESETS[preset].profile
    return Profile(
        parse_shape(min_shape) if min_shape else base.min,
        parse_shape(opt_shape) if opt_shape else base.opt,
        parse_shape(max_shape) if max_shape else base.max,
    )


@dataclass(frozen=True)
class TensorRTOptions:
    """How to build an engine; ``timing_cache`` None means ``<plan folder>/tensorrt.timing.cache``."""

    profile: Profile = field(default_factory=Profile)
    preset: str = DEFAULT_PRESET
    workspace_gib: float = DEFAULT_WORKSPACE_GIB
    timing_cache: Path | None = None
    weakly_typed: bool = False
    allocation_strategy: str = "static"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ExportError(f"--profile {self.preset!r} is not a preset; choose from {', '.join(PRESETS)}")
        if not (math.isfinite(self.workspace_gib) and self.workspace_gib > 0):
            raise ExportError(f"--workspace-gib must be a positive number, got {self.workspace_gib}")
        if self.allocation_strategy not in ALLOCATION_STRATEGIES:
            raise ExportError(
                f"--allocation-strategy {self.allocation_strategy!r}: choose from {', '.join(ALLOCATION_STRATEGIES)}"
            )
        if self.timing_cache is not None and Path(self.timing_cache).is_dir():
            raise ExportError(f"--timing-cache {self.timing_cache} is a folder; give a file path")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gib * (1 << 30))

    def timing_cache_path(self, plan_path: str | Path) -> Path:
        return Path(self.timing_cache) if self.timing_cache is not None else Path(plan_path).parent / TIMING_CACHE_FILE


def add_tensorrt_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The TensorRT build flags of ``python -m export`` (read back with ``tensorrt_options``)."""
    group = parser.add_argument_group("TensorRT (with --tensorrt)")
    presets = ", ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items())
    group.add_argument("--profile", default=DEFAULT_PRESET, choices=list(PRESETS), help=f"preset ({presets})")
    for label in ("min", "opt", "max"):
        default = format_shape(getattr(PRESETS[DEFAULT_PRESET].profile, label))
        help_text = f"override the preset's {label} shape (desktop: {default})"
        group.add_argument(f"--{label}-shape", default=None, metavar="BxCxHxW", help=help_text)
    group.add_argument("--workspace-gib", type=float, default=None, help="workspace limit (default: the preset's)")
    group.add_argument(
        "--timing-cache", default=None, metavar="PATH", help=f"timing cache file (default <out>/{TIMING_CACHE_FILE})"
    )
    group.add_argument(
        "--allocation-strategy",
        default=None,
        choices=list(ALLOCATION_STRATEGIES),
        help="execution-context memory the runtime uses, recorded in the sidecar (default: the preset's)",
    )
    group.add_argument(
        "--weakly-typed",
        action="store_true",
        help="TensorRT 10 only: FP16/INT8 builder flags instead of a strongly typed network (deprecated in 10.12)",
    )
    return group


def tensorrt_options(args: argparse.Namespace) -> TensorRTOptions:
    """Validated options from ``add_tensorrt_arguments``' flags (call before any work)."""
    preset = getattr(args, "profile", DEFAULT_PRESET) or DEFAULT_PRESET
    profile = profile_from_args(preset, args.min_shape, args.opt_shape, args.max_shape)
    settings = PRESETS[preset]
    workspace = settings.workspace_gib if args.workspace_gib is None else args.workspace_gib
    strategy = getattr(args, "allocation_strategy", None) or settings.allocation_strategy
    cache = Path(args.timing_cache) if args.timing_cache else None
    options = TensorRTOptions(profile, preset, workspace, cache, bool(args.weakly_typed), strategy)
    if options.weakly_typed:
        try:
            import tensorrt as trt
        except Exception:  # no TensorRT here: require_tensorrt reports that
            return options
        check_tensorrt_version(trt.__version__, weakly_typed=True)
    return options


def require_tensorrt() -> None:
    """Fail with one clear line when TensorRT or a CUDA GPU is missing (checked before any work)."""
    reason = available_backends()["tensorrt"]
    if reason is not None:
        raise ExportError(f"--tensorrt needs TensorRT and a CUDA GPU, which this machine lacks ({reason})")


def version_tuple(version: str) -> tuple[int, int]:
    """``"10.3.0.30"`` -> ``(10, 3)``."""
    parts = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def check_tensorrt_version(version: str, weakly_typed: bool) -> None:
    """TensorRT >= 10 builds here; the weakly typed fallback exists on 10 only."""
    major, minor = version_tuple(version)
    if major < MIN_TENSORRT_MAJOR:
        raise ExportError(
            f"TensorRT {version} is installed; --tensorrt needs TensorRT >= {MIN_TENSORRT_MAJOR} (JetPack >= 6.1 on "
            "Jetson); on older releases run the ONNX file with ONNX Runtime instead"
        )
    if weakly_typed and major >= 11:
        raise ExportError(
            f"--weakly-typed: TensorRT {version} has no FP16/INT8 builder flags (every network is strongly typed); "
            "drop --weakly-typed to build from the fp16 or Q/DQ ONNX"
        )
    if weakly_typed and (major, minor) >= WEAKLY_TYPED_DEPRECATED:
        log.warning("--weakly-typed is deprecated from TensorRT 10.12 (installed %s); prefer the default", version)


def source_suffix(precision: str, weakly_typed: bool = False) -> str:
    """The ONNX suffix an engine of ``precision`` is built from (``.fp16.onnx`` for strongly typed fp16)."""
    if precision not in PRECISIONS:
        raise ExportError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return ".onnx" if weakly_typed and precision == "fp16" else SOURCE_SUFFIXES[precision]


def check_source(onnx_path: Path, precision: str, weakly_typed: bool = False) -> None:
    """Refuse an ONNX whose kind does not give ``precision``: a strongly typed network computes in
    the ONNX's own types, so an fp32 file would silently give an fp32 engine named fp16."""
    suffix = source_suffix(precision, weakly_typed)
    name = onnx_path.name.lower()
    # A model name has no dots (clda_deploy.artifacts), so "student.fp16.onnx" is not a fp32 ".onnx".
    if not name.endswith(suffix) or "." in name[: -len(suffix)] or len(name) == len(suffix):
        mode = "weakly typed" if weakly_typed else "strongly typed"
        raise ExportError(f"{onnx_path}: a {mode} {precision} engine is built from a <name>{suffix} file")
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path}: no such ONNX file to build the TensorRT engine from")


def fp32_pins(trt: Any, network: Any) -> list[str]:
    """Weakly typed fp16: pin normalization, softmax and *float* reductions to float32 (fp16 LayerNorm
    statistics overflow on transformer activations). Integer reductions (shape arithmetic) and layers
    with a non-float output are left alone: a float32 constraint on them is meaningless and, with
    OBEY, fails the build. Returns the pinned layer names."""
    kinds = (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE)
    floats = (trt.float32, trt.float16)
    pinned = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        outputs = [layer.get_output(output) for output in range(layer.num_outputs)]
        if layer.type not in kinds or not all(tensor.dtype in floats for tensor in outputs):
            continue
        layer.precision = trt.float32
        for output in range(layer.num_outputs):
            layer.set_output_type(output, trt.float32)
        pinned.append(layer.name)
    return pinned


def configure_precision(trt: Any, config: Any, network: Any, precision: str, weakly_typed: bool) -> dict[str, Any]:
    """Builder flags for ``precision``; returns what the sidecar records (tf32, pinned layers)."""
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 rounds matmul inputs to 10 bits: not fp32
    pinned: list[str] = []
    if weakly_typed and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        # PREFER, not OBEY: TensorRT honours the pins where an fp32 kernel exists and warns where
        # a fused pattern has none, instead of failing the whole build; the parity gate catches
        # any accuracy a skipped pin costs.
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        pinned = fp32_pins(trt, network)
    elif weakly_typed and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # weakly typed explicit quantization (Q/DQ) needs the flag
    return {"tf32": bool(config.get_flag(trt.BuilderFlag.TF32)), "fp32_pinned_layers": len(pinned)}


def load_timing_cache(config: Any, path: Path) -> tuple[Any, str]:
    """Attach a timing cache to ``config``: the file's when usable, else a new one. Returns the cache
    and what happened (``new``, ``reused``, ``replaced-corrupt``, ``replaced-mismatch``).

    ``ignore_mismatch=False``: a cache timed on another GPU or TensorRT version is not reused (its
    timings would pick tactics for the wrong device), it is replaced by a fresh one."""
    status, cache = "new", None
    if path.is_file():
        try:
            cache = config.create_timing_cache(path.read_bytes())
            status = "reused"
        except Exception as exc:  # TensorRT raises on a truncated or foreign file
            log.warning("timing cache %s is unreadable (%s); starting a new one", path, exc)
            status = "replaced-corrupt"
    if cache is None:
        cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s was made on another GPU or TensorRT version; starting a new one", path)
        status, cache = "replaced-mismatch", config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    if status == "reused":
        log.info("reusing the TensorRT timing cache %s", path)
    return cache, status


def save_timing_cache(config: Any, cache: Any, path: Path) -> Path:
    """Write the (grown) timing cache back atomically, so a concurrent build never reads half a file."""
    current = getattr(config, "get_timing_cache", lambda: None)() or cache
    data = bytes(memoryview(current.serialize()))
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def _parse(trt: Any, builder: Any, onnx_path: Path, strongly_typed: bool, logger: Any) -> Any:
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return network, parser  # the parser owns objects the network refers to: keep both alive


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    precision: str,
    metadata: dict[str, str],
    options: TensorRTOptions | None = None,
) -> Path:
    """Build ``plan_path`` from ``onnx_path`` (the file ``source_suffix(precision)`` names) and write
    the sidecar and timing cache; ``precision`` fp32, fp16 or int8."""
    options = options or TensorRTOptions()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    check_source(onnx_path, precision, options.weakly_typed)
    import tensorrt as trt

    check_tensorrt_version(trt.__version__, options.weakly_typed)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, onnx_path, not options.weakly_typed, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    optimization = builder.create_optimization_profile()
    optimization.set_shape("image", options.profile.min, options.profile.opt, options.profile.max)
    config.add_optimization_profile(optimization)
    chosen = configure_precision(trt, config, network, precision, options.weakly_typed)
    cache_path = options.timing_cache_path(plan_path)
    cache, cache_status = load_timing_cache(config, cache_path)
    mode = "weakly typed" if options.weakly_typed else "strongly typed"
    log.info("building a %s %s TensorRT %s engine from %s (%s)", mode, precision, trt.__version__, onnx_path,
             options.preset)  # fmt: skip
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    log.info("engine built in %.0f s", time.perf_counter() - started)
    save_timing_cache(config, cache, cache_path)
    sidecar = engine_settings(trt.__version__, precision, onnx_path, metadata, options, cache_path)
    sidecar.update(chosen, timing_cache_status=cache_status)
    return save_engine(serialized, plan_path, sidecar)


def engine_settings(
    version: str, precision: str, onnx_path: Path, metadata: dict[str, str], options: TensorRTOptions, cache: Path
) -> dict[str, Any]:
    """The sidecar's build record (``configure_precision`` adds ``tf32``)."""
    return {
        "tensorrt_version": version,
        "precision": precision,
        "strongly_typed": not options.weakly_typed,
        "profile": options.profile.as_dict(),
        "preset": options.preset,
        "workspace_bytes": options.workspace_bytes,
        "timing_cache": str(cache),
        "allocation_strategy": options.allocation_strategy,
        "onnx": str(onnx_path),
        "metadata": metadata,
    }


def save_engine(serialized: Any, plan_path: str | Path, sidecar: dict[str, Any]) -> Path:
    """Write the serialized engine (any buffer) and ``<plan>.json``, each atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            stream.write(serialized)

    plan = write_atomic(plan_path, write)
    write_atomic(engine_sidecar(plan), lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2)))
    return plan


def onnx_file_metadata(onnx_path: Path, precision: str) -> dict[str, str]:
    """The ``clda_*`` metadata an exported ONNX carries, with the engine's precision; lets a Jetson
    build its engine from a copied ONNX without the checkpoint or torch."""
    import onnx

    from clda_deploy.runtime.metadata import META_PRECISION

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends on a damaged file
        raise ExportError(f"cannot read {onnx_path} ({exc}); re-export it with python -m export") from None
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    return {**metadata, META_PRECISION: precision}


def main(argv: list[str] | None = None) -> int:
    """``python -m export.to_tensorrt ONNX --precision P``: an engine from an exported ONNX, on the
    machine that will run it (engines are tied to its GPU and TensorRT version)."""
    import sys

    from clda_deploy.artifacts import ArtifactError, kind_for, model_file_name
    from clda_deploy.errors import CldaError

    parser = argparse.ArgumentParser(prog="python -m export.to_tensorrt", description=main.__doc__.splitlines()[0])
    parser.add_argument("onnx", help="<name>.onnx, <name>.fp16.onnx or <name>.int8-trt.onnx from python -m export")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--out", default=None, help="folder of the engine (default: the ONNX's)")
    add_tensorrt_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="export: %(message)s")
    try:
        options = tensorrt_options(args)
        onnx_path = Path(args.onnx)
        check_source(onnx_path, args.precision, options.weakly_typed)
        require_tensorrt()
        try:
            name = onnx_path.name[: -len(source_suffix(args.precision, options.weakly_typed))]
            plan = Path(args.out or onnx_path.parent) / model_file_name(name, kind_for("tensorrt", args.precision))
        except ArtifactError as exc:
            raise ExportError(str(exc)) from None
        metadata = onnx_file_metadata(onnx_path, args.precision)
        print(build_engine(onnx_path, plan, args.precision, metadata, options))
    except CldaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
