import numpy as np
import pytest

from clda_deploy.runtime import available_backends, load_predictor
from export import ExportError
from export.to_tensorrt import Profile, parse_shape, require_tensorrt

TENSORRT_REASON = available_backends()["tensorrt"]
needs_tensorrt = pytest.mark.skipif(TENSORRT_REASON is not None, reason=str(TENSORRT_REASON))


def test_profile_validation():
    assert parse_shape("1x3x256x512") == (1, 3, 256, 512)
    with pytest.raises(ExportError, match="four sizes"):
        parse_shape("3x256x512")
    with pytest.raises(ExportError, match="looks like"):
        parse_shape("1x3xHxW")
    with pytest.raises(ExportError, match="min <= opt <= max"):
        Profile((1, 3, 512, 512), (1, 3, 256, 256), (4, 3, 1024, 1024))
    with pytest.raises(ExportError, match="Bx3xHxW"):
        Profile((1, 1, 256, 256), (1, 1, 256, 256), (1, 1, 256, 256))


@pytest.mark.skipif(TENSORRT_REASON is None, reason="TensorRT and CUDA are usable here")
def test_require_tensorrt_names_the_reason():
    with pytest.raises(ExportError, match="--tensorrt needs TensorRT and a CUDA GPU"):
        require_tensorrt()


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnx_runtime(exported, tmp_path, precision):
    import json

    from clda_deploy.artifacts import kind_for, model_file_name
    from export.to_onnx import onnx_metadata
    from export.to_tensorrt import TensorRTOptions, build_engine

    source = exported["fp16"] if precision == "fp16" else exported["onnx"]  # strongly typed: the ONNX's types
    metadata = onnx_metadata(exported["parity"]["reference"]["checkpoint"], "student", precision)
    profile = Profile((1, 3, 64, 64), (2, 3, 128, 256), (3, 3, 256, 512))
    options = TensorRTOptions(profile, workspace_gib=1.0, timing_cache=tmp_path / "timing.cache")
    plan_path = tmp_path / model_file_name("student", kind_for("tensorrt", precision))
    plan = build_engine(source, plan_path, precision, metadata, options)
    sidecar = json.loads((tmp_path / f"{plan.name}.json").read_text())
    assert sidecar["strongly_typed"] and sidecar["tf32"] == (precision != "fp32")
    assert sidecar["timing_cache_status"] == "new" and (tmp_path / "timing.cache").stat().st_size > 0
    engine = load_predictor(plan)
    assert engine.backend == "tensorrt" and engine.info.name == "student" and engine.device.startswith("cuda")
    images = np.random.default_rng(0).standard_normal((3, 3, 200, 300)).astype(np.float32)
    result = engine.predict(images)
    reference = load_predictor(exported["onnx"], device="cpu").predict(images)
    assert result.logits.dtype == np.float32 and result.labels.dtype == np.uint8
    assert (result.labels == reference.labels).mean() >= (0.999 if precision == "fp32" else 0.99)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        engine.predict(np.zeros((4, 3, 64, 64), np.float32))
    engine.close()
    build_engine(source, plan_path, precision, metadata, options)  # a rebuild reuses the cache
    assert json.loads((tmp_path / f"{plan.name}.json").read_text())["timing_cache_status"] == "reused"


def test_engine_and_sidecar_are_written_together(tmp_path, student_checkpoint):
    import json

    from clda_deploy.runtime import info_from_metadata
    from clda_deploy.runtime.tensorrt_backend import _read_sidecar
    from export.to_onnx import onnx_metadata
    from export.to_tensorrt import save_engine

    sidecar = {
        "tensorrt_version": "10.3.0",
        "precision": "fp16",
        "metadata": onnx_metadata(student_checkpoint, "student"),
    }
    plan = save_engine(memoryview(b"serialized engine"), tmp_path / "student.plan", sidecar)
    assert plan.read_bytes() == b"serialized engine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.plan", "student.plan.json"]
    written = _read_sidecar(plan, "10.3.0")
    assert written == json.loads(json.dumps(sidecar))
    info = info_from_metadata(written["metadata"], plan)
    assert info.name == "student" and len(info.classes) == len(info.palette) == 19
