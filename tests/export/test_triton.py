import re

import pytest

from export import ExportError
from export.triton import write_triton_model


def parse_pbtxt(text):
    """A small reader for protobuf text format: messages, lists, strings, ints and enums."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,]+', text)
    position = 0

    def value():
        nonlocal position
        token = tokens[position]
        position += 1
        if token == "{":
            return message("}")
        if token == "[":
            items = []
            while tokens[position] != "]":
                if tokens[position] == ",":
                    position += 1
                    continue
                items.append(value())
            position += 1
            return items
        if token.startswith('"'):
            return token[1:-1]
        return int(token) if re.fullmatch(r"-?\d+", token) else token

    def message(end):
        nonlocal position
        fields = {}
        while position < len(tokens) and tokens[position] != end:
            key = tokens[position]
            position += 1
            if tokens[position] == ":":
                position += 1
            assert key not in fields, f"repeated field {key}"
            fields[key] = value()
        position += 1
        return fields

    return message(None)


def test_onnx_repository(exported):
    folder = exported["triton"] / "student"
    assert (folder / "1" / "model.onnx").read_bytes() == exported["fp16"].read_bytes()
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert config["name"] == "student" and config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 4 and "max_queue_delay_microseconds" in config["dynamic_batching"]
    (image,) = config["input"]
    assert image == {"name": "image", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}
    logits, labels = config["output"]
    assert logits == {"name": "logits", "data_type": "TYPE_FP32", "dims": [19, -1, -1]}
    assert labels == {"name": "labels", "data_type": "TYPE_UINT8", "dims": [-1, -1]}
    assert "parameters" not in config and config["model_warmup"][0]["inputs"]["key"] == "image"


def write_plan(tmp_path, name="teacher", **settings):
    from export.to_tensorrt import save_engine

    sidecar = {
        "tensorrt_version": "10.3.0",
        "precision": "fp16",
        "profile": {"min": [1, 3, 256, 256], "opt": [1, 3, 512, 1024], "max": [2, 3, 1024, 2048]},
        "allocation_strategy": "user_managed",
        **settings,
    }
    return save_engine(b"serialized engine", tmp_path / f"{name}.fp16.plan", sidecar)


def test_tensorrt_repository(tmp_path):
    plan = write_plan(tmp_path)
    write_triton_model(tmp_path / "repo", "teacher", plan, num_classes=16, max_batch_size=2)
    config = parse_pbtxt((tmp_path / "repo" / "teacher" / "config.pbtxt").read_text())
    assert config["platform"] == "tensorrt_plan" and config["max_batch_size"] == 2
    assert config["output"][0]["dims"] == [16, -1, -1]
    assert (tmp_path / "repo" / "teacher" / "1" / "model.plan").read_bytes() == b"serialized engine"
    parameters = {entry["key"]: entry["value"]["string_value"] for entry in config["parameters"]}
    assert parameters == {
        "tensorrt_version": "10.3.0",
        "profile_min": "1x3x256x256",
        "profile_opt": "1x3x512x1024",
        "profile_max": "2x3x1024x2048",
        "precision": "fp16",
        "execution_context_allocation_strategy": "ON_PROFILE_CHANGE",  # Triton has no user-managed mode
    }
    (warmup,) = config["model_warmup"]
    assert warmup["batch_size"] == 1 and warmup["inputs"]["value"]["dims"] == [3, 512, 1024]


def test_tensorrt_repository_needs_the_sidecar_and_a_batch_the_profile_admits(tmp_path):
    bare = tmp_path / "bare.plan"
    bare.write_bytes(b"x")
    with pytest.raises(ExportError, match="has no sidecar"):
        write_triton_model(tmp_path / "repo", "bare", bare, 19)
    plan = write_plan(tmp_path)
    with pytest.raises(ExportError, match="--triton-max-batch 4 exceeds the batch 2"):
        write_triton_model(tmp_path / "repo", "teacher", plan, 19, max_batch_size=4)
    assert not (tmp_path / "repo").exists()  # refused before anything is written


def test_every_config_parses_with_tritons_own_proto(exported, tmp_path):
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (pip install tritonclient[grpc])"
    )
    from google.protobuf import text_format

    plan = write_plan(tmp_path, "student", allocation_strategy="static")
    write_triton_model(tmp_path / "repo", "student", plan, 19, max_batch_size=2)
    configs = {"onnx": exported["triton"] / "student" / "config.pbtxt", "plan": tmp_path / "repo/student/config.pbtxt"}
    fp32, uint8 = model_config_pb2.DataType.Value("TYPE_FP32"), model_config_pb2.DataType.Value("TYPE_UINT8")
    for kind, path in configs.items():
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == "student" and config.max_batch_size == (4 if kind == "onnx" else 2)
        assert config.platform == {"onnx": "onnxruntime_onnx", "plan": "tensorrt_plan"}[kind]
        (image,) = config.input
        assert (image.name, image.data_type, list(image.dims)) == ("image", fp32, [3, -1, -1])
        outputs = [(output.name, output.data_type, list(output.dims)) for output in config.output]
        assert outputs == [("logits", fp32, [19, -1, -1]), ("labels", uint8, [-1, -1])]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        (warmup,) = config.model_warmup
        zeros = warmup.inputs["image"]
        assert warmup.batch_size == 1 and zeros.zero_data and zeros.data_type == fp32
        assert list(zeros.dims) == [3, 512, 1024]
        parameters = {key: value.string_value for key, value in config.parameters.items()}
        if kind == "onnx":
            assert parameters == {}  # TensorRT parameters only on TensorRT models
        else:
            assert parameters["tensorrt_version"] == "10.3.0" and parameters["profile_max"] == "2x3x1024x2048"
            assert parameters["execution_context_allocation_strategy"] == "STATIC"


def test_bad_inputs(tmp_path):
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"x")
    with pytest.raises(ExportError, match="takes a .onnx or .plan file"):
        write_triton_model(tmp_path / "repo", "m", other, 19)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(ExportError, match="must be >= 1"):
        write_triton_model(tmp_path / "repo", "m", plan, 19, max_batch_size=0)
