"""Body admission (serving/admission.py, issue #16): a request reads its body under its own bounds
and takes a queue slot only once its image is decoded, so slow or numerous uploads cannot starve
the models. Real uvicorn servers on loopback, raw sockets for the slow bodies; distinct clients are
distinct ``X-Forwarded-For`` addresses (uvicorn trusts that header from loopback by default)."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from serving_testkit import (
    PNG_MAGIC,
    FakeLoader,
    SlowUpload,
    image_bytes,
    make_settings,
    random_image,
    running_server,
    wait_until,
)

from serving.admission import BodyLimits, ByteBudget, ClientUploads, TransferClock
from serving.app import create_app
from serving.segment import memory_bound


class Trickler:
    """From a thread: one byte per ``interval_s`` on every upload, answers polled every 0.1 s (so
    their times are exact to that), and the peak RSS of this process (the server runs in it)."""

    def __init__(self, uploads: list[SlowUpload], interval_s: float = 1.0) -> None:
        self.uploads, self.interval_s = uploads, interval_s
        self.rss_peak = psutil.Process().memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last_sent = time.monotonic()
        while not self._stop.wait(min(0.1, self.interval_s)):
            send = time.monotonic() - last_sent >= self.interval_s
            last_sent = time.monotonic() if send else last_sent
            for upload in self.uploads:
                upload.poll()
                if send:
                    upload.send_byte()
            self.rss_peak = max(self.rss_peak, psutil.Process().memory_info().rss)

    def __enter__(self) -> Trickler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for upload in self.uploads:
            upload.close()


def wait_ready(url: str) -> None:
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 20, "/readyz")


def uploading(app) -> int:
    return sum(app.state.admission.uploads.active.values())


def post(url: str, data: bytes, client: str | None = None, **kwargs) -> httpx.Response:
    headers = {"content-type": "image/png", **({"x-forwarded-for": client} if client else {})}
    return httpx.post(f"{url}/v1/segment", content=data, headers=headers, timeout=30, **kwargs)


def test_the_next_chunk_deadline_is_the_earliest_bound():
    limits = BodyLimits(max_bytes=10**6, total_s=30.0, idle_s=10.0, min_rate=1000, grace_s=5.0)
    clock = TransferClock(limits, started=100.0)
    assert clock.deadline() == (105.0, "min_body_rate")  # nothing arrived: the grace is all it gets
    clock.arrived(8000, now=101.0)
    assert clock.deadline() == (108.0, "min_body_rate")  # 8000 bytes at 1000 B/s last until 8 s
    clock.arrived(20000, now=102.0)
    assert clock.deadline() == (112.0, "body_idle_timeout_s")  # 28 s of rate credit, 10 s of patience
    clock.arrived(100000, now=121.0)
    assert clock.deadline() == (130.0, "body_timeout_s")
    assert clock.explain("min_body_rate", 112.5) == (
        "the body arrived slower than min_body_rate = 1000 bytes/s (128000 bytes in 12.5 s)"
    )
    off = TransferClock(BodyLimits(10**6, 30.0, 10.0, 0, 5.0), started=0.0)
    assert off.deadline() == (10.0, "body_idle_timeout_s")  # min_body_rate 0: no rate bound


def test_budget_and_client_counts_give_everything_back():
    budget = ByteBudget(100)
    assert budget.take(60) and not budget.take(41) and budget.take(40) and budget.used == 100
    budget.give_back(100)
    assert budget.used == 0
    uploads = ClientUploads(limit=2)
    assert uploads.begin("a") and uploads.begin("a") and not uploads.begin("a") and uploads.begin("b")
    uploads.end("a"), uploads.end("a"), uploads.end("b")
    assert not uploads.active, "an address with no upload is forgotten"
    assert not ClientUploads(limit=1).active


def test_413_for_a_body_over_max_bytes_or_a_decode_over_the_whole_budget(tmp_path):
    settings = make_settings(tmp_path, max_bytes=64 * 1024, max_inflight_bytes=64 * 1024)
    with TestClient(create_app(settings, loader=FakeLoader())) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="/readyz")
        declared = client.post("/v1/segment", content=PNG_MAGIC + bytes(64 * 1024))
        assert declared.status_code == 413 and declared.headers["connection"] == "close", declared.text
        response = client.post("/v1/segment", content=image_bytes(random_image(100, 100)))
        assert response.status_code == 413, response.text
        assert "decoding the image needs" in response.json()["error"]["message"]
        assert client.post("/v1/segment", content=image_bytes(random_image(8, 8))).status_code == 200
        assert app_budget_used(client) == 0
        metrics = client.get("/metrics").text
        assert 'reason="max_bytes"} 1.0' in metrics and 'reason="max_inflight_bytes"} 1.0' in metrics


def app_budget_used(client: TestClient) -> int:
    return client.app.state.admission.budget.used


def test_per_client_upload_cap_answers_429_and_frees_on_disconnect(tmp_path):
    app = create_app(make_settings(tmp_path, max_uploads_per_client=2, retry_after_s=2), loader=FakeLoader())
    small = image_bytes(random_image(8, 8))
    with running_server(app) as url:
        wait_ready(url)
        slow = [SlowUpload(url, client="198.51.100.7") for _ in range(2)]
        wait_until(lambda: uploading(app) == 2, what="both uploads to be read")
        refused = post(url, small, client="198.51.100.7")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2", refused.text
        assert "max_uploads_per_client = 2" in refused.json()["error"]["message"]
        assert post(url, small, client="198.51.100.8").status_code == 200  # another client is not capped
        for upload in slow:
            upload.close()  # the client leaves mid-body: everything it held comes back
        wait_until(lambda: uploading(app) == 0 and app.state.admission.budget.used == 0, what="release")
        assert post(url, small, client="198.51.100.7").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert 'clda_refusals_total{reason="max_uploads_per_client"} 1.0' in metrics
        assert 'status="400"} 2.0' in metrics  # the two bodies the clients abandoned


def test_global_byte_budget_answers_503_declared_or_chunked(tmp_path):
    kib = 1024
    settings = make_settings(tmp_path, max_bytes=256 * kib, max_inflight_bytes=1024 * kib, retry_after_s=4)
    app = create_app(settings, loader=FakeLoader())
    with running_server(app) as url:
        wait_ready(url)
        holders = [SlowUpload(url, length=200 * kib, client=f"203.0.113.{index}") for index in range(5)]
        wait_until(lambda: app.state.admission.budget.used == 1000 * kib, what="the budget to be held")
        declared = post(url, PNG_MAGIC + bytes(100 * kib))
        assert declared.status_code == 503 and declared.headers["retry-after"] == "4", declared.text
        assert "max_inflight_bytes = 1048576" in declared.json()["error"]["message"]
        chunked = post(url, iter([PNG_MAGIC + bytes(16 * kib)] * 4))  # no Content-Length: reserved as it comes
        assert chunked.status_code == 503 and chunked.headers["retry-after"] == "4", chunked.text
        assert post(url, image_bytes(random_image(8, 8))).status_code == 200  # a small one still fits
        for upload in holders:
            upload.close()
        wait_until(lambda: app.state.admission.budget.used == 0, what="the budget to come back")
        response = post(url, image_bytes(random_image(64, 96)), client="203.0.113.0")
        assert response.status_code == 200, response.text
        metrics = httpx.get(f"{url}/metrics").text
        assert 'clda_refusals_total{reason="max_inflight_bytes"} 2.0' in metrics


@pytest.mark.parametrize(
    ("overrides", "interval_s", "bound"),
    [({"body_idle_timeout_s": 0.3}, 60.0, "body_idle_timeout_s = 0.3 s"),  # stalls after the PNG magic
     ({"min_body_rate": 1000, "body_rate_grace_s": 0.3}, 0.05, "min_body_rate = 1000 bytes/s")],  # 20 bytes/s
)  # fmt: skip
def test_a_stalled_or_slow_body_gets_408_naming_its_bound(tmp_path, overrides, interval_s, bound):
    app = create_app(make_settings(tmp_path, **overrides), loader=FakeLoader())
    with running_server(app) as url:
        wait_ready(url)
        upload = SlowUpload(url)
        with Trickler([upload], interval_s):
            wait_until(lambda: upload.closed, 5, "the 408 and the connection to close")
        assert upload.status == 408 and bound in upload.reply.decode(), upload.reply
        assert b"connection: close" in upload.reply.lower()
        assert upload.answered_after is not None and 0.25 < upload.answered_after < 1.5
        assert post(url, image_bytes(random_image(8, 8))).status_code == 200


def median_latency_ms(url: str, data: bytes, count: int) -> float:
    timings = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            response = client.post("/v1/segment", content=data, headers={"content-type": "image/png"})
            timings.append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, response.text
    return statistics.median(timings)


def test_64_trickling_bodies_do_not_starve_valid_requests(tmp_path):
    timeout_s, connections = 2.5, 64
    settings = make_settings(tmp_path, body_timeout_s=timeout_s, max_bytes=64 * 1024, max_inflight_bytes=1 << 20,
                             max_pixels=64 * 64, queue_size=4)  # fmt: skip
    app = create_app(settings, loader=FakeLoader())
    data = image_bytes(random_image(32, 32))
    with running_server(app) as url:
        wait_ready(url)
        median_latency_ms(url, data, 5)  # warm the connection pool and the code paths
        idle_ms = median_latency_ms(url, data, 15)
        rss_before = psutil.Process().memory_info().rss
        slow = [SlowUpload(url, client=f"192.0.2.{index + 1}") for index in range(connections)]
        with Trickler(slow) as trickler:
            wait_until(lambda: uploading(app) == connections, 5, "every slow body to be read")
            loaded_ms = median_latency_ms(url, data, 15)
            assert uploading(app) == connections, "the slow bodies were still arriving while we measured"
            wait_until(lambda: all(upload.answered_after is not None for upload in slow), 3 * timeout_s, "408s")
        queues = len(app.state.registry.entries)
    assert loaded_ms <= max(2 * idle_ms, idle_ms + 5.0), (idle_ms, loaded_ms)
    assert [upload.status for upload in slow] == [408] * connections, "answered 408, not reset"
    assert all(timeout_s - 0.1 < upload.answered_after < timeout_s + 1.5 for upload in slow)
    # README "Serve": requests hold at most memory_bound; each connection adds uvicorn's read buffer.
    allowed = memory_bound(settings, queues) + connections * 64 * 1024
    assert trickler.rss_peak - rss_before <= allowed, (trickler.rss_peak - rss_before, allowed)
