"""fp32 ONNX -> static post-training INT8 as Q/DQ ONNX, in the two forms deployments need.

- ``<name>.int8.onnx`` and ``<name>.int8.xml`` (+ ``.bin``), the **CPU form**, written by NNCF:
  per-channel symmetric int8 weights and uint8 activations on Conv/MatMul inputs, placed where
  OpenVINO's INT8 kernels (AMX-INT8, VNNI) fuse them. ONNX Runtime runs the ONNX file; OpenVINO
  runs the IR, which NNCF quantizes from the same ONNX through OpenVINO itself. OpenVINO also reads
  the Q/DQ ONNX (variant ``openvino-int8-qdq``), but reproduces it less faithfully: 97.8 % of
  pixels agree with fp32 against 99.8 % for the IR and for ONNX Runtime on the ONNX file, and the
  smoke test's worst class lost 4.8 IoU points (docs/results.md "INT8"), so the IR is what serves.
- ``<name>.int8-trt.onnx``, the **TensorRT form**, written by ONNX Runtime's quantizer: symmetric
  int8 activations and weights (zero point 0, as TensorRT's explicit quantization requires),
  per-channel weights and float biases (no int32 bias ``DequantizeLinear``); ``.int8.plan`` is
  built from it. ONNX Runtime runs it on the CPU, which is how the gate checks it without a GPU.

Why two tools (measured on the default student at 512x1024, docs/results.md "INT8"): NNCF's file
runs 2.5x faster than ORT fp32 in OpenVINO, ORT's quantizer's file 2.2x, and OpenVINO agrees better
with fp32 on NNCF's (98.7 % vs 95.5 % of pixels on held-out target-train images); NNCF cannot write
the symmetric-int8-everywhere form TensorRT wants (it emits uint8 for non-negative activations).

What stays float, in every form: LayerNormalization, Softmax, GELU (Erf), Resize, ArgMax and every
reduction read float tensors, never dequantized ones (``check_float_islands``). Only Conv, MatMul and
Gemm inputs are quantized; a quantizer placed in front of a Resize is moved behind it (bilinear
interpolation stays inside the input's range, so the scale is unchanged) and one in front of the
other float ops is removed. Depthwise convolutions stay float: NNCF quantizes their input per
channel and, through MixFFN's Transpose/Reshape, along the token axis (a scale vector as long as the
calibration image's token count, which breaks every other input size); they are cheap anyway.

Calibration reads target-train images (never the target-val images the gate scores) through the
project's loaders and shared preprocessing. Methods: ``minmax`` (the widest range seen),
``mean-minmax`` (each image's range, averaged over images: NNCF's default, ORT's moving average),
``percentile`` (each image's 0.001 % tails clipped) and ``entropy`` (ORT's KL-divergence
calibrator; NNCF has none, so the CPU form refuses it). ``python -m export.calibration_study``
measures them on held-out target-train images; ``auto`` (the default) takes each form's best.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clda_deploy.config import Config
from clda_deploy.runtime.metadata import META_PRECISION
from export import ExportError, write_atomic
from export.to_onnx import INPUT_NAME, check_onnx, set_metadata

log = logging.getLogger("export")

CALIBRATION_METHODS = ("minmax", "mean-minmax", "percentile", "entropy")
AUTO = "auto"  # each form's measured best: DEFAULT_CALIBRATION
# Chosen by ``python -m export.calibration_study`` (docs/results.md "INT8 calibration"): the highest
# agreement with fp32 on held-out target-train images, by 0.02-0.05 points (practically a tie).
DEFAULT_CALIBRATION = {"cpu": "mean-minmax", "tensorrt": "percentile"}
DEFAULT_CALIBRATION_IMAGES = 32
PERCENTILE = 99.999  # both tools: clip 0.001 % of each tail
FORMS = ("cpu", "tensorrt")
FORM_TOOLS = {"cpu": "nncf", "tensorrt": "onnxruntime.quantization"}
FORM_METHODS = {"cpu": ("minmax", "mean-minmax", "percentile"), "tensorrt": CALIBRATION_METHODS}
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
FLOAT_OPS = (
    "LayerNormalization", "Softmax", "Erf", "Gelu", "Resize", "ArgMax",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd", "ReduceLogSumExp",
)  # fmt: skip
RANGE_PRESERVING = ("Resize",)  # a Q/DQ pair in front of these moves behind them
META_CALIBRATION = "clda_int8_calibration"


@dataclass(frozen=True)
class Calibration:
    """How a Q/DQ file was calibrated: recorded in its metadata and in parity.json."""

    method: str
    images: int
    dataset: str  # format:root:split of the calibration images
    form: str
    tool: str

    def as_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def method_for(form: str, method: str) -> str:
    """The calibration method ``form`` uses for ``--calibration method`` (``auto``: its default)."""
    return DEFAULT_CALIBRATION[form] if method == AUTO else method


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """The quantizers print their progress to stdout (ORT: histogram notes; NNCF: progress bars and
    INFO lines): swallow it, so ``python -m export`` prints only its own log and the parity table."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_log.setLevel(level)


def check_calibration(method: str, forms: Sequence[str], count: int) -> None:
    """Every problem with the calibration settings, before any work."""
    unknown = [form for form in forms if form not in FORMS]
    if unknown or not forms:
        raise ExportError(f"--int8-forms: choose among {', '.join(FORMS)}, got {','.join(forms) or 'nothing'}")
    if method not in (AUTO, *CALIBRATION_METHODS):
        raise ExportError(f"--calibration must be auto or one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    for form in forms:
        if method_for(form, method) not in FORM_METHODS[form]:
            raise ExportError(
                f"--calibration {method}: the {form} INT8 form is written by {FORM_TOOLS[form]}, which offers "
                f"{', '.join(FORM_METHODS[form])}; choose one of those or leave the form out with --int8-forms"
            )
    if count < 1:
        raise ExportError(f"--calibration-images must be >= 1, got {count}")


def calibration_images(cfg: Config, count: int) -> tuple[list[np.ndarray], str]:
    """``count`` target-train images (``[1,3,H,W]`` float32, shared preprocessing), evenly spaced
    over the split, and the ``format:root:split`` they came from. Refuses the val images."""
    from clda_deploy.data import build_dataset, check_roots

    target, val = cfg.data.target, cfg.data.val
    if (Path(target.root).resolve(), target.split) == (Path(val.root).resolve(), val.split):
        raise ExportError(
            f"calibration would read the images the parity gate scores ({val.root}, split {val.split}): "
            "set data.target to the unlabelled target-train split"
        )
    check_roots({"data.target": target})
    dataset = build_dataset(target, train=False, labels=False)
    if len(dataset) == 0:
        raise ExportError(f"data.target ({target.root}, split {target.split}) has no images to calibrate on")
    images = [
        dataset[index]["image"].numpy()[None].astype(np.float32) for index in calibration_indices(len(dataset), count)
    ]
    return images, f"{target.format}:{target.root}:{target.split}"


def calibration_indices(total: int, count: int) -> list[int]:
    """``count`` indexes spread evenly over ``total`` images (every image when there are fewer)."""
    picked = np.linspace(0, total - 1, min(count, total)).round().astype(int)
    return [int(index) for index in dict.fromkeys(picked)]


def depthwise_convolutions(model: Any) -> list[str]:
    """Names of the grouped (depthwise) Conv nodes, which stay float."""
    found = []
    for node in model.graph.node:
        groups = next((attribute.i for attribute in node.attribute if attribute.name == "group"), 1)
        if node.op_type == "Conv" and groups > 1:
            found.append(node.name)
    return found


def _nncf_arguments(method: str) -> dict[str, Any]:
    """NNCF settings of the CPU form, for its ONNX and its OpenVINO backend alike: transformer model
    type (MatMul-aware placement), MIXED preset, SmoothQuant off (measured faster and closer to fp32
    here), the calibration method's activation range estimator."""
    import nncf
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    tail = 1.0 - PERCENTILE / 100.0
    percentile = RangeEstimatorParameters(  # each image's 0.001 % / 99.999 % quantiles, widest over images
        min=StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MIN, quantile_outlier_prob=tail),
        max=StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MAX, quantile_outlier_prob=tail),
    )
    estimators = {"minmax": RangeEstimatorParametersSet.MINMAX, "mean-minmax": RangeEstimatorParametersSet.MEAN_MINMAX,
                  "percentile": percentile}  # fmt: skip
    advanced = nncf.AdvancedQuantizationParameters(
        smooth_quant_alpha=-1.0, activations_range_estimator_params=estimators[method]
    )
    return {"preset": nncf.QuantizationPreset.MIXED, "model_type": nncf.ModelType.TRANSFORMER,
            "advanced_parameters": advanced}  # fmt: skip


def quantize_cpu(model: Any, images: list[np.ndarray], method: str) -> Any:
    """The CPU form's ONNX file with NNCF's ONNX backend."""
    import nncf

    return nncf.quantize(
        model,
        nncf.Dataset(images, lambda image: {INPUT_NAME: image}),
        subset_size=len(images),
        ignored_scope=nncf.IgnoredScope(names=depthwise_convolutions(model), validate=False),
        **_nncf_arguments(method),
    )


def quantize_openvino(src: str | Path, dst: str | Path, images: list[np.ndarray], calibration: Calibration) -> Path:
    """The CPU form's OpenVINO IR: ``src`` (fp32 ONNX) read by OpenVINO, quantized by NNCF's
    OpenVINO backend, saved as ``dst`` (``.xml``) and its ``.bin`` (float weights kept float32)."""
    import os
    import warnings

    import nncf
    import openvino as ov

    dst = Path(dst)
    model = ov.Core().read_model(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with quiet_tools():
                quantized = nncf.quantize(
                    model,
                    nncf.Dataset(images, lambda image: image),
                    subset_size=len(images),
                    ignored_scope=nncf.IgnoredScope(types=["GroupConvolution"], validate=False),  # depthwise: float
                    **_nncf_arguments(calibration.method),
                )
        except Exception as exc:  # NNCF and OpenVINO raise bare RuntimeError on graphs they cannot handle
            raise ExportError(f"{src}: INT8 quantization for OpenVINO failed: {type(exc).__name__}: {exc}") from exc
    quantized.set_rt_info("int8", ["framework", META_PRECISION])
    quantized.set_rt_info(calibration.as_json(), ["framework", META_CALIBRATION])
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=dst.parent) as work:
        xml = Path(work) / "model.xml"
        ov.save_model(quantized, str(xml), compress_to_fp16=False)
        os.replace(xml.with_suffix(".bin"), dst.with_suffix(".bin"))  # the weights first: a reader of the
        os.replace(xml, dst)  # new .xml always finds its .bin
    return dst


def quantize_tensorrt(model: Any, images: list[np.ndarray], method: str) -> Any:
    """The TensorRT form with ONNX Runtime's static quantizer."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{INPUT_NAME: image} for image in images])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    methods = {"minmax": CalibrationMethod.MinMax, "mean-minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="clda-int8-") as work:
        source, prepared, quantized = (Path(work) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save_model(model, str(source))
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_exclude=depthwise_convolutions(onnx.load_model(str(prepared))),
            calibrate_method=methods[method],
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "CalibPercentile": PERCENTILE,
                "CalibMovingAverage": method == "mean-minmax",
            },
        )
        return onnx.load_model(str(quantized))


def _consumers(model: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def keep_float_islands(model: Any) -> int:
    """Make every ``FLOAT_OPS`` node read a float tensor: a ``Q -> DQ`` pair feeding one moves behind
    it (``RANGE_PRESERVING`` ops) or is bypassed (the others). Returns the pairs changed."""
    changed = 0
    while (found := _quantized_float_input(model)) is not None:
        node, quantize, dequantize = found
        consumers = _consumers(model)
        alone = len(consumers.get(dequantize.output[0], [])) == 1 and len(consumers.get(quantize.output[0], [])) == 1
        node.input[0] = quantize.input[0]  # read the float tensor
        if alone and node.op_type in RANGE_PRESERVING:
            _move_pair_behind(model, quantize, dequantize, node)
        elif alone:
            _reorder(model, drop=(quantize, dequantize))
        changed += 1
    if changed:
        _drop_unused_initializers(model)
    return changed


def _drop_unused_initializers(model: Any) -> None:
    """Remove the scales and zero points of removed Q/DQ pairs (ONNX Runtime warns about each)."""
    import onnx

    used = {name for node in model.graph.node for name in node.input}
    kept = []
    for tensor in model.graph.initializer:
        if tensor.name in used:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            kept.append(copy)
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)


def _quantized_float_input(model: Any) -> tuple[Any, Any, Any] | None:
    """The first ``FLOAT_OPS`` node whose data input comes out of an activation ``Q -> DQ`` pair."""
    producers = {output: item for item in model.graph.node for output in item.output}
    for node in model.graph.node:
        if node.op_type not in FLOAT_OPS or not node.input:
            continue
        dequantize = producers.get(node.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = producers.get(dequantize.input[0])
        if quantize is not None and quantize.op_type == "QuantizeLinear":  # not a dequantized weight
            return node, quantize, dequantize
    return None


def _reorder(model: Any, drop: tuple[Any, ...] = (), after: Any = None, insert: tuple[Any, ...] = ()) -> None:
    """Rebuild the node list without ``drop``, with ``insert`` right after ``after`` (topological order)."""
    import onnx

    def copy(node: Any) -> Any:
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        return clone

    dropped = [copy(node) for node in drop]
    inserted = [copy(node) for node in insert]
    anchor = copy(after) if after is not None else None
    order = []
    for node in model.graph.node:
        if node in dropped or node in inserted:
            continue
        order.append(copy(node))
        if anchor is not None and node == anchor:
            order.extend(inserted)
    del model.graph.node[:]
    model.graph.node.extend(order)


def _move_pair_behind(model: Any, quantize: Any, dequantize: Any, node: Any) -> None:
    """``x -> Q -> DQ -> node -> y`` becomes ``x -> node -> Q -> DQ -> y`` (same scale and zero point)."""
    output = node.output[0]
    node.output[0] = f"{output}_float"
    quantize.input[0] = node.output[0]
    dequantize.output[0] = output  # the node's consumers now read the dequantized tensor
    _reorder(model, after=node, insert=(quantize, dequantize))


def check_float_islands(model: Any, where: str) -> None:
    """Fail unless every ``FLOAT_OPS`` node reads float tensors, none of them dequantized."""
    producers = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        if node.op_type in FLOAT_OPS:
            for name in node.input:
                if name in producers and producers[name].op_type == "DequantizeLinear":
                    raise ExportError(f"{where}: {node.op_type} node {node.name} reads the dequantized tensor {name}")


def check_quantized(model: Any, where: str, form: str) -> None:
    """The file really is INT8 (quantizers on Conv/MatMul inputs) and, for TensorRT, in its form."""
    from onnx import TensorProto, numpy_helper

    quantizers = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
    if not quantizers:
        raise ExportError(f"{where}: the quantizer inserted no QuantizeLinear node")
    if form != "tensorrt":
        return
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero_point = initializers.get(node.input[2])
        if zero_point is None:
            continue
        if zero_point.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zero_point) != 0):
            raise ExportError(f"{where}: {node.name} is not symmetric int8 (TensorRT needs zero point 0, int8)")
        if node.op_type == "DequantizeLinear" and initializers.get(node.input[0]) is not None:
            if initializers[node.input[0]].data_type == TensorProto.INT32:
                raise ExportError(f"{where}: {node.name} dequantizes an int32 bias, which TensorRT does not accept")


def quantize_onnx(src: str | Path, dst: str | Path, images: list[np.ndarray], calibration: Calibration) -> Path:
    """``src`` (fp32 ONNX) -> ``dst`` in ``calibration.form``; checked, with provenance metadata."""
    import warnings

    import onnx

    model = onnx.load_model(str(src))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    log.info(
        "INT8 (%s form, %s): calibrating on %d images of %s with %s",
        calibration.form, calibration.tool, calibration.images, calibration.dataset, calibration.method,
    )  # fmt: skip
    quantize = quantize_cpu if calibration.form == "cpu" else quantize_tensorrt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with quiet_tools():
                quantized = quantize(model, images, calibration.method)
        except ExportError:
            raise
        except Exception as exc:  # the tools raise bare RuntimeError/ValueError on graphs they cannot handle
            problem = f"{type(exc).__name__}: {exc}"
            raise ExportError(f"{src}: INT8 quantization ({calibration.tool}) failed: {problem}") from exc
    moved = keep_float_islands(quantized)
    if moved:
        log.info("%s: %d quantizer(s) in front of float-only ops moved or removed", dst, moved)
    set_metadata(quantized, {**metadata, META_PRECISION: "int8", META_CALIBRATION: calibration.as_json()})
    checked = check_onnx(quantized, str(dst))
    check_float_islands(checked, str(dst))
    check_quantized(checked, str(dst), calibration.form)
    return write_atomic(dst, lambda tmp: onnx.save_model(quantized, str(tmp)))


def tool_version(form: str) -> str:
    """``nncf 3.4.0`` / ``onnxruntime.quantization 1.32.0``: recorded with each file."""
    from importlib.metadata import PackageNotFoundError, version

    package = "nncf" if form == "cpu" else "onnxruntime"
    try:
        return f"{FORM_TOOLS[form]} {version(package)}"
    except PackageNotFoundError:
        return FORM_TOOLS[form]


def require_tools(forms: Sequence[str]) -> None:
    """One clear line when a form's quantizer is not installed (checked before any work)."""
    import importlib.util

    modules = {"cpu": "nncf", "tensorrt": "onnxruntime"}
    for form in forms:
        if importlib.util.find_spec(modules[form]) is None:
            raise ExportError(
                f"--int8 ({form} form) needs the module '{modules[form]}': pip install 'clda-deploy[quantize]'"
            )
