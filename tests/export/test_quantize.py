"""INT8 export: Q/DQ placement, both forms, agreement with fp32 on a trained smoke model, the
calibration guard rails, and a bad calibration failing the parity gate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clda_deploy import build_segmenter
from clda_deploy.checkpoint import save_model
from clda_deploy.config import load_config
from clda_deploy.data import build_dataset
from clda_deploy.evaluation import eval_config_for
from clda_deploy.runtime import load_predictor
from export.quantize import DEFAULT_CALIBRATION

pytest.importorskip("onnxruntime")
pytest.importorskip("nncf")

SMALL = ["model.encoder=mit_cpu_student", "model.head_channels=32"]


@pytest.fixture(scope="module")
def synthcity(tmp_path_factory) -> Path:
    from clda_deploy.data.synthcity import generate_synthcity

    out = tmp_path_factory.mktemp("synthcity-int8")
    generate_synthcity(out, num_source=8, num_target=8, num_val=6, height=64, width=128, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(synthcity, tmp_path_factory) -> Path:
    """A CPU student fitted for 60 steps on the source images: confident, non-random labels, so
    agreement with fp32 means something (a random model's logits are all near-ties)."""
    roots = [f"data.source.root={synthcity / 'source'}", f"data.target.root={synthcity / 'target'}",
             f"data.val.root={synthcity / 'target'}"]  # fmt: skip
    cfg = load_config(None, SMALL + roots)
    torch.manual_seed(0)
    model = build_segmenter(cfg.model.encoder, cfg.model.head, cfg.model.num_classes, head_channels=32)
    source = build_dataset(cfg.data.source, train=False)
    images = torch.stack([source[i]["image"] for i in range(len(source))])
    labels = torch.stack([source[i]["label"] for i in range(len(source))]).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(60):
        optimizer.zero_grad()
        logits = model(images)
        F.cross_entropy(logits, labels, ignore_index=255).backward()
        optimizer.step()
    model.eval()
    return save_model(tmp_path_factory.mktemp("trained") / "model.safetensors", model, cfg, role="student")


@pytest.fixture(scope="module")
def int8_export(trained, tmp_path_factory) -> dict:
    """``python -m export --int8`` (both forms), parity on the 6 val images."""
    from export.__main__ import main

    out = tmp_path_factory.mktemp("int8-export")
    code = main(["--checkpoint", str(trained), "--out", str(out), "--int8", "--calibration-images", "8", "--quiet"])
    return {"code": code, "out": out, "parity": json.loads((out / "parity.json").read_text())["student"]}


def qdq_neighbours(path: Path, op_type: str) -> list[tuple[str, str]]:
    """For each ``op_type`` node: (what produces its data input, what consumes its output)."""
    import onnx

    model = onnx.load_model(str(path))
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type == op_type:
            found.append((producers.get(node.input[0], "input"), node.output[0]))
    return found


def test_both_forms_are_written_and_pass_the_gate(int8_export):
    out, parity = int8_export["out"], int8_export["parity"]
    assert int8_export["code"] == 0, parity
    for name in ("student.int8.onnx", "student.int8.xml", "student.int8.bin", "student.int8-trt.onnx"):
        assert (out / name).is_file(), name
    assert "openvino-int8-qdq" in parity["backends"]  # gated and reported, whatever its verdict
    for variant in ("onnxruntime-int8", "openvino-int8", "onnxruntime-int8-trt"):
        entry = parity["backends"][variant]
        assert entry["passed"] and entry["precision"] == "int8"
        assert entry["threshold"]["max_class_drop"] == 3.0 and entry["threshold"]["max_abs_delta_miou"] == 1.0
        assert entry["calibration"]["images"] == 8 and entry["calibration"]["dataset"].endswith(":train")
        form = "tensorrt" if variant.endswith("-trt") else "cpu"
        assert entry["calibration"]["method"] == DEFAULT_CALIBRATION[form]  # --calibration auto
    assert parity["backends"]["openvino-int8"]["precision_used"].startswith("int8")


@pytest.mark.parametrize("suffix", [".int8.onnx", ".int8-trt.onnx"])
def test_float_ops_read_no_dequantized_tensor(int8_export, suffix):
    path = int8_export["out"] / f"student{suffix}"
    for op_type in ("LayerNormalization", "Softmax", "Erf", "Resize", "ArgMax"):
        producers = [producer for producer, _ in qdq_neighbours(path, op_type)]
        assert producers, f"no {op_type} in {path.name}"
        assert "DequantizeLinear" not in producers, f"a {op_type} of {path.name} reads a dequantized tensor"
    import onnx

    model = onnx.load_model(str(path))
    quantized = {node.op_type for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert quantized == {"QuantizeLinear", "DequantizeLinear"}


def test_tensorrt_form_is_symmetric_int8_without_int32_bias(int8_export):
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load_model(str(int8_export["out"] / "student.int8-trt.onnx"))
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    zero_points = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.data_type == TensorProto.INT8 for z in zero_points)
    assert all(not np.any(numpy_helper.to_array(z)) for z in zero_points)
    dequantized = [initializers.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert not any(t is not None and t.data_type == TensorProto.INT32 for t in dequantized)


def test_int8_agrees_with_fp32_on_a_trained_model(int8_export, synthcity):
    out = int8_export["out"]
    val = build_dataset(load_config(None, [f"data.val.root={synthcity / 'target'}"]).data.val, train=False)
    images = torch.stack([val[i]["image"] for i in range(len(val))]).numpy()
    reference = load_predictor(out / "student.onnx", device="cpu").predict(images).labels
    for path, backend in ((out / "student.int8.onnx", "onnxruntime"), (out / "student.int8.xml", "openvino-int8"),
                          (out / "student.int8-trt.onnx", "onnxruntime")):  # fmt: skip
        labels = load_predictor(path, backend, device="cpu").predict(images, want_logits=False).labels
        agreement = 100.0 * float(np.mean(labels == reference))
        assert agreement >= 95.0, f"{path.name} on {backend}: {agreement:.2f} % of pixels agree with fp32"


def test_calibration_refuses_the_scored_images_and_bad_settings(trained):
    from export import ExportError
    from export.quantize import calibration_images, check_calibration

    cfg = eval_config_for(trained, None, [], None)
    same = eval_config_for(trained, None, [f"data.target.root={cfg.data.val.root}", "data.target.split=val"], None)
    with pytest.raises(ExportError, match="calibration would read the images the parity gate scores"):
        calibration_images(same, 4)
    with pytest.raises(ExportError, match="NNCF|nncf"):
        check_calibration("entropy", ["cpu"], 8)
    check_calibration("entropy", ["tensorrt"], 8)
    check_calibration("auto", ["cpu", "tensorrt"], 8)
    from export.quantize import DEFAULT_CALIBRATION, method_for

    assert method_for("cpu", "auto") == DEFAULT_CALIBRATION["cpu"] and method_for("cpu", "minmax") == "minmax"
    with pytest.raises(ExportError, match="--int8-forms"):
        check_calibration("minmax", ["gpu"], 8)
    with pytest.raises(ExportError, match="--calibration-images must be >= 1"):
        check_calibration("minmax", ["cpu"], 0)


def test_a_bad_calibration_fails_the_gate(trained, tmp_path):
    """Constant grey calibration images: every activation range collapses, INT8 labels go wrong,
    and the gate (ΔmIoU and worst class) must say so."""
    from clda_deploy.evaluation import val_dataset
    from export.parity import Tolerances, all_passed, run_parity
    from export.quantize import Calibration, quantize_onnx, tool_version
    from export.to_onnx import export_onnx

    onnx_path = export_onnx(trained, tmp_path / "student.onnx", "student")
    grey = [np.zeros((1, 3, 64, 128), dtype=np.float32) for _ in range(4)]  # mid-grey after normalization
    files = {}
    for form, variant in (("cpu", "onnxruntime-int8"), ("tensorrt", "onnxruntime-int8-trt")):
        suffix = ".int8.onnx" if form == "cpu" else ".int8-trt.onnx"
        calibration = Calibration("minmax", len(grey), "grey", form, tool_version(form))
        files[variant] = (quantize_onnx(onnx_path, tmp_path / f"student{suffix}", grey, calibration), "int8")
    cfg = eval_config_for(trained, None, [], None)
    payload = run_parity(trained, files, val_dataset(cfg), cfg, tmp_path, "cpu", False, "student", Tolerances())
    assert not all_passed(payload)
    for entry in payload["backends"].values():
        assert entry["passed"] is False
        assert abs(entry["delta_miou"]) > 1.0 or entry["worst_class_drop"] > 3.0


def test_int8_tolerance_flags_reach_the_gate(trained):
    from export import ExportError
    from export.parity import Tolerances, parity_targets

    loose = Tolerances.with_int8(delta_miou=5.0, class_drop=10.0)
    assert all(t.met for t in parity_targets(-4.0, 90.0, "int8", 9.0, loose))
    assert not all(t.met for t in parity_targets(-4.0, 90.0, "int8", 9.0, Tolerances()))
    assert [t.name for t in parity_targets(0.0, 100.0, "bf16")] == ["|ΔmIoU|"]
    with pytest.raises(ExportError, match="--int8-tolerance must be >= 0"):
        Tolerances.with_int8(delta_miou=-1.0)
