import io
import json
import re
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving_testkit import (
    FakeLoader,
    expected_labels,
    image_bytes,
    make_models_dir,
    make_settings,
    random_image,
    wait_ready,
)

from clda_deploy.data.transforms import resize_image, resize_label
from serving.app import create_app
from serving.registry import NoModelsError


def post_image(client, data, query="", content_type="image/png", multipart=False):
    if multipart:
        return client.post(f"/v1/segment{query}", files={"file": ("upload", data, content_type)})
    return client.post(f"/v1/segment{query}", content=data, headers={"content-type": content_type})


def assert_error(response, status, fragment=""):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == status
    assert fragment in body["error"]["message"], body["error"]["message"]


@pytest.mark.parametrize("multipart", [True, False])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_png_output_is_the_label_map_at_the_input_size(client, multipart, fmt):
    image = random_image(37, 53, seed=3)  # not a multiple of 32: padded for the model, cropped back
    data = image_bytes(image, fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    response = post_image(client, data, content_type=f"image/{fmt.lower()}", multipart=multipart)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model"] == "student" and response.headers["x-backend"] == "onnxruntime"
    assert float(response.headers["x-inference-time-ms"]) >= 0 and float(response.headers["x-queue-time-ms"]) >= 0
    labels = Image.open(io.BytesIO(response.content))
    assert labels.mode == "L" and labels.size == (53, 37)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(labels), expected_labels(decoded))


def test_json_and_overlay_formats(client):
    image = random_image(20, 24, seed=1)
    response = post_image(client, image_bytes(image), "?format=json&model=teacher")
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "teacher" and body["backend"] == "onnxruntime"
    assert (body["width"], body["height"]) == (24, 20)
    expected = np.bincount(expected_labels(image).ravel(), minlength=19)
    assert list(body["histogram"].values()) == expected.tolist() and "road" in body["histogram"]
    assert set(body["timing_ms"]) == {"queue", "compute", "total"}
    overlay = post_image(client, image_bytes(image), "?format=overlay")
    blend = Image.open(io.BytesIO(overlay.content))
    assert overlay.status_code == 200 and blend.mode == "RGB" and blend.size == (24, 20)


def test_resized_inference_maps_labels_back_with_nearest(tmp_path):
    loader = FakeLoader()
    app = create_app(make_settings(tmp_path, infer_height=64, infer_width=96), loader=loader)
    image = np.zeros((30, 45, 3), dtype=np.uint8)
    image[:, 20:] = 255  # two classes: 0 on the left, 18 on the right
    with TestClient(app) as client:
        wait_ready(client)
        response = post_image(client, image_bytes(image))
    labels = np.asarray(Image.open(io.BytesIO(response.content)))
    expected = resize_label(expected_labels(resize_image(image, (64, 96))), (30, 45))  # bilinear in, nearest out
    assert labels.shape == (30, 45) and np.array_equal(labels, expected) and {0, 18} <= set(np.unique(labels))
    assert loader.predictors["student/onnxruntime"].batches[-1] == (1, 3, 64, 96)


def test_models_health_docs_and_page(client):
    models = client.get("/v1/models").json()
    assert models["default_model"] == "student"
    entry = models["models"][0]
    assert entry["name"] == "student" and entry["backend"] == "onnxruntime" and entry["state"] == "ready"
    assert entry["providers"] == ["CPUExecutionProvider"] and len(entry["classes"]) == 19
    assert entry["queue_capacity"] == 16 and entry["max_batch"] == 1 and entry["default"]  # CPU: no batching
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}
    assert client.get("/readyz").status_code == 200
    segment = client.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]
    body = segment["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["required"] == ["file"]  # as the server enforces (422)
    assert {"image/png", "image/jpeg"} <= set(body)
    assert set(segment["responses"]) == {"200", "400", "404", "408", "413", "415", "422", "429", "503"}  # no key
    assert "max_uploads_per_client" in segment["responses"]["429"]["description"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "/v1/segment" in page.text
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "the page must not load anything external"


def test_every_refusal_is_a_json_4xx(client):
    image = image_bytes(random_image(16, 16))
    assert_error(post_image(client, image, "?format=gif"), 422, "'format'")
    assert_error(post_image(client, image, "?model=" + "x" * 200), 422, "'model'")
    assert_error(post_image(client, image, "?model=nope"), 404, "unknown model 'nope'; available models: student")
    assert_error(post_image(client, image, "?backend=torch"), 404, "no backend 'torch'")
    assert_error(post_image(client, b"hello", content_type="text/plain"), 415, "Content-Type 'text/plain'")
    assert_error(post_image(client, b"GIF89a" + b"\0" * 20), 415, "GIF")
    assert_error(post_image(client, image_bytes(random_image(8, 8), "BMP"), content_type="image/jpeg"), 415, "BMP")
    assert_error(post_image(client, image[:60]), 422, "cannot be decoded")
    assert_error(post_image(client, b""), 422, "empty")
    assert_error(client.post("/v1/segment", files={"other": ("a.png", image, "image/png")}), 422, "no 'file' field")
    assert_error(client.post("/v1/segment", files={"file": (None, b"text")}), 422, "must be a file upload")
    assert_error(post_image(client, b"--x\r\n", content_type="multipart/form-data"), 422, "multipart")
    assert_error(client.get("/v1/nothing"), 404, "no endpoint /v1/nothing")
    assert_error(client.get("/v1/segment"), 405, "method GET")


def test_byte_limit_from_header_and_from_the_stream(tmp_path):
    app = create_app(make_settings(tmp_path, max_bytes=1000), loader=FakeLoader())
    with TestClient(app) as client:
        wait_ready(client)
        big = b"\x89PNG\r\n\x1a\n" + bytes(2000)
        assert_error(post_image(client, big), 413, "the body is 2008 bytes; the limit is 1000 bytes")
        assert_error(post_image(client, big, multipart=True), 413, "limit is 1000 bytes")
        chunked = client.post(
            "/v1/segment", content=iter([big[:600], big[600:]]), headers={"content-type": "image/png"}
        )
        assert "content-length" not in chunked.request.headers
        assert_error(chunked, 413, "larger than the limit of 1000 bytes")
        assert post_image(client, image_bytes(np.zeros((8, 8, 3), np.uint8))).status_code == 200


def test_pixel_limit(tmp_path):
    app = create_app(make_settings(tmp_path, max_pixels=100 * 100), loader=FakeLoader())
    with TestClient(app) as client:
        wait_ready(client)
        assert_error(post_image(client, image_bytes(random_image(101, 100))), 413, "the limit is 10000 pixels")
        assert post_image(client, image_bytes(random_image(100, 100))).status_code == 200


def test_readyz_is_503_until_warm_up_finishes(tmp_path):
    gate = threading.Event()
    app = create_app(make_settings(tmp_path), loader=FakeLoader(gate=gate))
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert_error(ready, 503, "loading student/onnxruntime")
        assert ready.headers["retry-after"] == "1"
        assert client.get("/healthz").status_code == 200
        assert_error(post_image(client, image_bytes(random_image(8, 8))), 503, "still loading")
        assert client.get("/v1/models").json()["models"][0]["state"] == "loading"
        gate.set()
        wait_ready(client)
        assert client.get("/readyz").json()["status"] == "ready"
        assert post_image(client, image_bytes(random_image(8, 8))).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    app = create_app(make_settings(tmp_path), loader=FakeLoader(fail=("teacher",)))
    with TestClient(app) as client:
        app.state.registry._thread.join(5)
        assert_error(client.get("/readyz"), 503, "failed teacher/onnxruntime (RuntimeError:")
        assert_error(post_image(client, image_bytes(random_image(8, 8)), "?model=teacher"), 503, "failed to load")
        assert post_image(client, image_bytes(random_image(8, 8))).status_code == 200  # the student still serves


def test_metrics_count_requests_batches_and_latency(client):
    post_image(client, image_bytes(random_image(8, 8)))
    post_image(client, b"junk")
    post_image(client, image_bytes(random_image(8, 8)), "?model=nope")
    text = client.get("/metrics").text
    assert 'clda_requests_total{backend="onnxruntime",model="student",status="200"} 1.0' in text
    assert 'clda_requests_total{backend="onnxruntime",model="student",status="415"} 1.0' in text
    assert 'clda_requests_total{backend="none",model="none",status="404"} 1.0' in text
    assert 'clda_batch_size_count{backend="onnxruntime",model="student"} 1.0' in text
    assert 'clda_compute_seconds_count{backend="onnxruntime",model="student"} 1.0' in text
    assert 'clda_queue_wait_seconds_count{backend="onnxruntime",model="student"} 1.0' in text
    assert 'clda_queue_depth{backend="onnxruntime",model="student"} 0.0' in text
    assert "clda_ready 1.0" in text


def _parity(folder, verdicts: dict[str, dict[str, bool]]) -> None:
    records = {
        model: {"backends": {v: {"passed": ok} for v, ok in entries.items()}} for model, entries in verdicts.items()
    }
    (folder / "parity.json").write_text(json.dumps(records))


def test_discovery_rules(tmp_path):
    folder = make_models_dir(tmp_path, ("student", "teacher", "student.fp16"))
    (folder / "student.plan").write_bytes(b"engine")  # TensorRT is not installed here: skipped
    (folder / "student.plan.json").write_text("{}")
    loader = FakeLoader()
    settings = make_settings(tmp_path, models=folder, backends="onnxruntime", include_fp16=True)
    _parity(folder, {"student": {"onnxruntime-fp16": True}})
    app = create_app(settings, loader=loader)
    names = [(s.name, s.backend) for s in app.state.registry.specs]
    # student.fp16.onnx is the onnxruntime-fp16 backend of model student, as runtime and bench name it.
    assert names == [("student", "onnxruntime"), ("student", "onnxruntime-fp16"), ("teacher", "onnxruntime")]
    app = create_app(make_settings(tmp_path, models=folder, backends="onnxruntime"), loader=loader)
    assert ("student", "onnxruntime-fp16") not in [(s.name, s.backend) for s in app.state.registry.specs]
    app = create_app(make_settings(tmp_path, models=folder, default_model="teacher"), loader=loader)
    assert [s.name for s in app.state.registry.specs] == ["teacher", "student"]
    with pytest.raises(NoModelsError, match="does not exist"):
        create_app(make_settings(tmp_path, models=tmp_path / "missing"))
    with pytest.raises(NoModelsError, match="holds no model file"):
        create_app(make_settings(tmp_path, models=tmp_path / "export", backends="torch"))


def test_only_variants_that_passed_their_gate_are_served(tmp_path, caplog):
    folder = make_models_dir(tmp_path, ("student", "student.fp16", "student.int8", "teacher"))
    settings = make_settings(tmp_path, models=folder)
    _parity(folder, {"student": {"onnxruntime-fp16": False, "onnxruntime-int8": True, "openvino": True}})
    app = create_app(settings, loader=FakeLoader())
    served = [(s.name, s.backend) for s in app.state.registry.specs]
    # own fp32 kinds without a record are served; a passing record admits int8 and OpenVINO;
    # a failing record (fp16) and a missing one (teacher's OpenVINO, the int8 Q/DQ in OpenVINO) keep them out.
    assert served == [("student", "onnxruntime"), ("student", "openvino"), ("student", "onnxruntime-int8"),
                      ("teacher", "onnxruntime")]  # fmt: skip
    assert "not serving student.fp16.onnx as onnxruntime-fp16: it failed its parity gate" in caplog.text
    _parity(folder, {"student": {"onnxruntime": False}})
    app = create_app(settings, loader=FakeLoader())
    assert ("student", "onnxruntime") not in [(s.name, s.backend) for s in app.state.registry.specs]
    with TestClient(app) as client:
        wait_ready(client)
        entries = client.get("/v1/models").json()["models"]
        assert {(e["name"], e["backend"], e["precision"]) for e in entries} == {("teacher", "onnxruntime", "fp32")}


def test_micro_batching_is_on_by_default_only_on_gpus():
    from serving.registry import effective_max_batch

    assert effective_max_batch(None, "cpu") == 1
    assert effective_max_batch(None, "cuda:0") == 4
    assert effective_max_batch(3, "cpu") == 3 and effective_max_batch(2, "cuda") == 2
