"""Backpressure and micro-batching through a real uvicorn server on loopback, with concurrent clients."""

import asyncio
import io
import socket
import threading
import time

import httpx
import numpy as np
from PIL import Image
from serving_testkit import FakeLoader, expected_labels, image_bytes, make_settings, random_image, running_server

from serving.app import create_app


async def post_all(url: str, payloads: list[bytes], while_waiting=None) -> list[httpx.Response]:
    """POST every payload at once, each as its own client (``X-Forwarded-For``, trusted from loopback:
    one address would meet max_uploads_per_client when uploads overlap); ``while_waiting`` (a
    coroutine function) runs alongside."""
    limits = httpx.Limits(max_connections=len(payloads) + 1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        requests = [
            client.post("/v1/segment", content=data, headers={"content-type": "image/png",
                                                              "x-forwarded-for": f"198.18.0.{index + 1}"})
            for index, data in enumerate(payloads)
        ]  # fmt: skip
        if while_waiting is not None:
            requests.append(while_waiting())
        results = await asyncio.gather(*requests)
    return [result for result in results if isinstance(result, httpx.Response)]


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_full_queue_answers_503_with_retry_after_and_refused_images_are_never_computed(tmp_path):
    # The queue slot is taken once the image is decoded (issue #16: before, it was taken before the
    # body was read, so slow bodies could hold every slot); a refused request costs a decode, no inference.
    settings = make_settings(tmp_path, queue_size=2, max_batch=1, retry_after_s=3)
    loader = FakeLoader(delay=0.25)
    app = create_app(settings, loader=loader)
    payloads = [image_bytes(random_image(32, 32, seed)) for seed in range(4 * settings.queue_size)]
    with running_server(app) as url:
        wait_ready(url)
        predictor = loader.predictors["student/onnxruntime"]
        predictor.batches.clear()  # forget the warm-up
        responses = asyncio.run(post_all(url, payloads))
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= settings.queue_size and statuses.count(503) >= 1, statuses
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "3"
                assert "is busy" in response.json()["error"]["message"]
        assert sum(shape[0] for shape in predictor.batches) == statuses.count(200)
        assert httpx.get(f"{url}/readyz").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert f'status="503"}} {float(statuses.count(503))}' in metrics
        assert f'clda_refusals_total{{reason="queue_size"}} {float(statuses.count(503))}' in metrics
        assert "clda_inflight_bytes 0.0" in metrics and "clda_uploads 0.0" in metrics  # all given back


def test_concurrent_requests_are_micro_batched_by_size(tmp_path):
    loader = FakeLoader()
    app = create_app(make_settings(tmp_path, max_batch=4, max_wait_ms=50), loader=loader)
    images = [random_image(32, 32, seed) for seed in range(7)] + [random_image(64, 32, seed) for seed in range(3)]
    with running_server(app) as url:
        wait_ready(url)
        predictor = loader.predictors["student/onnxruntime"]
        batcher = app.state.registry.entries[("student", "onnxruntime")].batcher
        predictor.batches.clear()
        predictor.gate = threading.Event()  # the first batch blocks until every other request is queued

        async def release_when_queued():
            deadline = time.monotonic() + 20
            while batcher.depth < len(images) or batcher.incoming > 0:  # all admitted, all decoded and queued
                assert time.monotonic() < deadline, (batcher.depth, batcher.incoming)
                await asyncio.sleep(0.005)
            predictor.gate.set()

        responses = asyncio.run(post_all(url, [image_bytes(image) for image in images], release_when_queued))
    assert [response.status_code for response in responses] == [200] * len(images)
    for image, response in zip(images, responses, strict=True):  # each request got its own labels
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(response.content))), expected_labels(image))
    sizes = [shape[0] for shape in predictor.batches]
    assert sum(sizes) == len(images) and max(sizes) == 4 and len(sizes) <= 5, predictor.batches
    assert sum(shape[0] for shape in predictor.batches if shape[2] == 64) == 3  # the 64x32 images, never mixed
    assert sorted(int(response.headers["x-batch-size"]) for response in responses)[-1] == 4


def test_a_trickling_upload_holds_no_queue_slot_and_gets_408(tmp_path):
    app = create_app(make_settings(tmp_path, queue_size=1, body_timeout_s=1.0), loader=FakeLoader())
    with running_server(app) as url:
        wait_ready(url)
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            head = "POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
            slow.sendall(head.encode() + b"\x89PNG")  # then nothing: a slow-loris
            deadline = time.monotonic() + 5
            while not app.state.admission.uploads.active:  # its body is being read
                assert time.monotonic() < deadline
                time.sleep(0.005)
            response = httpx.post(f"{url}/v1/segment", content=image_bytes(random_image(8, 8)))
            assert response.status_code == 200  # the only queue slot is free: bodies are read first (#16)
            reply = b""
            while not reply.endswith(b"}}") and (chunk := slow.recv(4096)):
                reply += chunk
            reply = reply.decode("latin-1")
        assert reply.startswith("HTTP/1.1 408") and "body_timeout_s" in reply, reply
