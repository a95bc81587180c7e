"""``POST /v1/compare``: both models on one upload, the agreement between their label maps counted by
hand on a teacher that clamps classes, the same refusals as /v1/segment, and the same admission
(serving/admission.py): the body's bounds first, both queue slots only after decoding."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving_testkit import (
    PNG_MAGIC,
    ClampingLoader,
    SlowUpload,
    banded_image,
    expected_labels,
    image_bytes,
    make_models_dir,
    make_settings,
    random_image,
    running_server,
    wait_ready,
    wait_until,
)

from serving.app import create_app
from serving.compare import agreement

# 10 x 20 pixels, red per band: 3 rows of 200 (student truck = 14, clamped teacher terrain = 9),
# 3 rows of 130 (terrain for both), 4 rows of 0 (road for both).
BANDS = ((3, 200), (3, 130), (4, 0))
# By hand: 140 of 200 pixels agree = 70 %; road 80/80, terrain 60 / (60 + 60), truck 0 / 60.
AGREEMENT, PER_CLASS = 70.0, {"road": 100.0, "terrain": 50.0, "truck": 0.0}


def post_compare(client, data, query="", content_type="image/png", multipart=False):
    if multipart:
        return client.post(f"/v1/compare{query}", files={"file": ("upload.png", data, content_type)})
    return client.post(f"/v1/compare{query}", content=data, headers={"content-type": content_type})


def assert_error(response, status, fragment=""):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == status
    assert fragment in body["error"]["message"], body["error"]["message"]


def decode_png(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.fixture
def clamping_client(tmp_path):
    """student = FakePredictor, teacher = ClampedPredictor; queue_size 1 so that one held slot fills a queue."""
    app = create_app(make_settings(tmp_path, queue_size=1, retry_after_s=3), loader=ClampingLoader())
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def test_agreement_golden_values():
    first = np.array([[0, 0], [1, 2]], dtype=np.uint8)
    second = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    # same at 2 of 4 pixels; a: 1 shared of 2 + 1 - 1; b: 1 shared of 1 + 3 - 1; c only in first; d in neither
    assert agreement(first, second, ("a", "b", "c", "d")) == (50.0, {"a": 50.0, "b": 33.333, "c": 0.0})


def test_compare_returns_both_maps_overlays_timings_and_their_agreement(clamping_client):
    image = banded_image(10, 20, BANDS, seed=4)
    response = post_compare(clamping_client, image_bytes(image), multipart=True)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (20, 10)
    assert body["pixel_agreement_pct"] == AGREEMENT and body["class_agreement_pct"] == PER_CLASS
    student, teacher = body["student"], body["teacher"]
    assert (student["model"], teacher["model"]) == ("student", "teacher")
    assert student["backend"] == teacher["backend"] == "onnxruntime"
    expected = {"student": expected_labels(image), "teacher": np.minimum(expected_labels(image), 9)}
    for side in (student, teacher):
        labels = decode_png(side["labels_png"])
        assert labels.mode == "L" and labels.size == (20, 10)
        np.testing.assert_array_equal(np.asarray(labels), expected[side["model"]])
        overlay = decode_png(side["overlay_png"])
        assert overlay.mode == "RGB" and overlay.size == (20, 10)
        assert list(side["histogram"].values()) == np.bincount(expected[side["model"]].ravel(), minlength=19).tolist()
        assert set(side["timing_ms"]) == {"queue", "compute", "total"} and side["batch_size"] == 1
    ratio = teacher["timing_ms"]["compute"] / student["timing_ms"]["compute"]
    assert body["latency_ratio"] == pytest.approx(ratio, abs=1e-3)
    assert body["total_ms"] >= student["timing_ms"]["total"] + teacher["timing_ms"]["total"]
    segment = clamping_client.post("/v1/segment?format=overlay", content=image_bytes(image))
    assert np.array_equal(
        np.asarray(decode_png(student["overlay_png"])), np.asarray(Image.open(io.BytesIO(segment.content)))
    )


def test_compare_refuses_what_segment_refuses(client):
    image = image_bytes(random_image(16, 16))
    assert_error(post_compare(client, image, "?student=nope"), 404, "student: unknown model 'nope'; available models")
    assert_error(post_compare(client, image, "?teacher=nope"), 404, "teacher: unknown model 'nope'")
    assert_error(post_compare(client, image, "?backend=torch"), 404, "student: model 'student' has no backend 'torch'")
    assert_error(post_compare(client, image, "?teacher_backend=torch"), 404, "teacher: model 'teacher' has no backend")
    assert_error(post_compare(client, image, "?teacher=" + "x" * 200), 422, "'teacher'")
    assert_error(post_compare(client, b"hello", content_type="text/plain"), 415, "Content-Type 'text/plain'")
    assert_error(post_compare(client, b"GIF89a" + b"\0" * 20), 415, "GIF")
    assert_error(post_compare(client, image[:60]), 422, "cannot be decoded")
    assert_error(post_compare(client, b""), 422, "empty")
    assert_error(client.post("/v1/compare", files={"other": ("a.png", image, "image/png")}), 422, "no 'file' field")
    same = post_compare(client, image, "?teacher=student")
    assert_error(same, 422, "student and teacher are both model 'student' on 'onnxruntime'")
    assert post_compare(client, image, "?student=teacher&teacher=student").status_code == 200  # any order


def test_one_model_on_two_backends_is_a_valid_comparison(tmp_path):
    folder = make_models_dir(tmp_path, ("student", "student.fp16", "teacher"))
    settings = make_settings(tmp_path, models=folder, backends="onnxruntime", include_fp16=True)
    parity = {"student": {"backends": {"onnxruntime-fp16": {"passed": True}}}}
    (folder / "parity.json").write_text(json.dumps(parity))  # after make_settings, which writes an empty one
    with TestClient(create_app(settings, loader=ClampingLoader())) as client:
        wait_ready(client)
        response = post_compare(
            client, image_bytes(random_image(12, 12)), "?teacher=student&teacher_backend=onnxruntime-fp16"
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["student"]["backend"], body["teacher"]["backend"]) == ("onnxruntime", "onnxruntime-fp16")
    assert body["pixel_agreement_pct"] == 100.0  # the same fake on both backends


def test_a_full_queue_is_a_503_after_decoding_and_frees_the_other_slot(clamping_client):
    registry = clamping_client.app.state.registry
    batchers = {name: registry.entries[(name, "onnxruntime")].batcher for name in ("student", "teacher")}
    image = image_bytes(random_image(8, 8))
    for busy, free in (("teacher", "student"), ("student", "teacher")):
        held = batchers[busy].reserve()  # queue_size 1: this model's queue is now full
        try:
            # admission comes after decoding: a bad upload is refused for what it is, not with a 503
            assert_error(post_compare(clamping_client, b"GIF89a" + b"\0" * 20), 415, "GIF")
            refused = post_compare(clamping_client, image)
            assert_error(refused, 503, f"model {busy!r} (onnxruntime) is busy: all 1 slots are taken")
            assert refused.headers["retry-after"] == "3"
            assert batchers[free].depth == 0  # the slot taken in the other queue was given back
        finally:
            held.release()
        assert post_compare(clamping_client, image).status_code == 200
    assert 'clda_refusals_total{reason="queue_size"} 2.0' in clamping_client.get("/metrics").text


def test_compare_is_counted_in_metrics_listed_in_openapi_and_on_the_page(clamping_client):
    post_compare(clamping_client, image_bytes(random_image(8, 8)))
    post_compare(clamping_client, image_bytes(random_image(8, 8)), "?teacher=nope")
    text = clamping_client.get("/metrics").text
    both = 'student="student",student_backend="onnxruntime",teacher="teacher",teacher_backend="onnxruntime"'
    assert f'clda_compare_requests_total{{status="200",{both}}} 1.0' in text
    assert 'clda_compare_requests_total{status="404",student="none",student_backend="none",teacher="none"' in text
    assert f"clda_compare_seconds_count{{{both}}} 1.0" in text
    for name in ("student", "teacher"):
        assert f'clda_queue_wait_seconds_count{{backend="onnxruntime",model="{name}"}} 1.0' in text
    assert "clda_requests_total{" not in text  # /v1/segment's counter counts only /v1/segment
    operation = clamping_client.get("/openapi.json").json()["paths"]["/v1/compare"]["post"]
    assert [p["name"] for p in operation["parameters"]] == [
        "student", "teacher", "backend", "student_backend", "teacher_backend"
    ]  # fmt: skip
    assert operation["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    assert set(operation["responses"]) == {"200", "400", "404", "408", "413", "415", "422", "429", "503"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/CompareJson")
    assert "/v1/compare" in clamping_client.get("/").text


def queue_depths(app) -> list[int]:
    return [served.batcher.depth for served in app.state.registry.entries.values()]


def test_compare_reads_its_body_under_the_byte_bounds(tmp_path):
    settings = make_settings(tmp_path, max_bytes=64 * 1024, max_inflight_bytes=64 * 1024)
    with TestClient(create_app(settings, loader=ClampingLoader())) as client:
        wait_ready(client)
        declared = post_compare(client, PNG_MAGIC + bytes(64 * 1024))
        assert_error(declared, 413, "the limit is 65536 bytes")
        assert declared.headers["connection"] == "close"
        assert_error(post_compare(client, image_bytes(random_image(100, 100))), 413, "decoding the image needs")
        assert post_compare(client, image_bytes(random_image(8, 8))).status_code == 200
        assert client.app.state.admission.budget.used == 0 and queue_depths(client.app) == [0, 0]
        metrics = client.get("/metrics").text
    assert 'clda_refusals_total{reason="max_bytes"} 1.0' in metrics
    assert 'clda_refusals_total{reason="max_inflight_bytes"} 1.0' in metrics


def test_compare_counts_against_the_clients_upload_cap_and_holds_no_slot_while_reading(tmp_path):
    settings = make_settings(tmp_path, max_uploads_per_client=2, retry_after_s=2)
    app = create_app(settings, loader=ClampingLoader())
    small, headers = image_bytes(random_image(8, 8)), {"content-type": "image/png"}
    with running_server(app) as url:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 20, "/readyz")
        # one slow body per endpoint: the cap is the client's, whichever endpoint it uploads to
        slow = [SlowUpload(url, client="198.51.100.9", path=path) for path in ("/v1/compare", "/v1/segment")]
        wait_until(lambda: sum(app.state.admission.uploads.active.values()) == 2, what="both uploads to be read")
        assert queue_depths(app) == [0, 0], "a body still arriving holds no queue slot"
        refused = httpx.post(f"{url}/v1/compare", content=small, headers={**headers, "x-forwarded-for": "198.51.100.9"})
        assert_error(refused, 429, "max_uploads_per_client = 2")
        assert refused.headers["retry-after"] == "2"
        other = httpx.post(f"{url}/v1/compare", content=small, headers={**headers, "x-forwarded-for": "198.51.100.10"})
        assert other.status_code == 200, other.text
        for upload in slow:
            upload.close()
        wait_until(lambda: not app.state.admission.uploads.active and app.state.admission.budget.used == 0)
        again = httpx.post(f"{url}/v1/compare", content=small, headers={**headers, "x-forwarded-for": "198.51.100.9"})
        assert again.status_code == 200, again.text
        metrics = httpx.get(f"{url}/metrics").text
    assert 'clda_refusals_total{reason="max_uploads_per_client"} 1.0' in metrics
    both = 'student="student",student_backend="onnxruntime",teacher="teacher",teacher_backend="onnxruntime"'
    assert f'clda_compare_requests_total{{status="429",{both}}} 1.0' in metrics
    assert f'clda_compare_requests_total{{status="200",{both}}} 2.0' in metrics


def test_a_stalled_compare_body_gets_408_and_gives_everything_back(tmp_path):
    app = create_app(make_settings(tmp_path, body_idle_timeout_s=0.3), loader=ClampingLoader())
    with running_server(app) as url:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 20, "/readyz")
        upload = SlowUpload(url, path="/v1/compare")  # the PNG magic, then nothing
        try:
            wait_until(lambda: upload.poll() or upload.closed, 5, "the 408 and the connection to close")
        finally:
            upload.close()
        assert upload.status == 408 and b"body_idle_timeout_s = 0.3 s" in upload.reply, upload.reply
        assert b"connection: close" in upload.reply.lower()
        assert upload.answered_after is not None and 0.25 < upload.answered_after < 1.5
        assert app.state.admission.budget.used == 0 and queue_depths(app) == [0, 0]
        small = image_bytes(random_image(8, 8))
        response = httpx.post(f"{url}/v1/compare", content=small, headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        metrics = httpx.get(f"{url}/metrics").text
    assert 'clda_refusals_total{reason="body_idle_timeout_s"} 1.0' in metrics
