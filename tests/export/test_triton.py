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


def test_tensorrt_repository(tmp_path):
    plan = tmp_path / "teacher.plan"
    plan.write_bytes(b"serialized engine")
    write_triton_model(tmp_path / "repo", "teacher", plan, num_classes=16, max_batch_size=2)
    config = parse_pbtxt((tmp_path / "repo" / "teacher" / "config.pbtxt").read_text())
    assert config["platform"] == "tensorrt_plan" and config["max_batch_size"] == 2
    assert config["output"][0]["dims"] == [16, -1, -1]
    assert (tmp_path / "repo" / "teacher" / "1" / "model.plan").read_bytes() == b"serialized engine"


def test_bad_inputs(tmp_path):
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"x")
    with pytest.raises(ExportError, match="takes a .onnx or .plan file"):
        write_triton_model(tmp_path / "repo", "m", other, 19)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(ExportError, match="must be >= 1"):
        write_triton_model(tmp_path / "repo", "m", plan, 19, max_batch_size=0)
