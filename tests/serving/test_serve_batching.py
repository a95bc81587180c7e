import threading
import time

import numpy as np
import pytest

from serving.batching import BatcherClosedError, MicroBatcher, QueueFullError


class GatedPredict:
    """Records each batch's shapes; the first call blocks until ``release`` so others pile up."""

    def __init__(self):
        self.batches: list[list[tuple[int, ...]]] = []
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, images):
        self.batches.append([image.shape for image in images])
        self.started.set()
        assert self.gate.wait(10)
        return np.stack([image[..., 0] for image in images])  # each image's own labels


def image(height, width, value):
    return np.full((height, width, 3), value, dtype=np.uint8)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def test_same_shape_requests_batch_and_different_shapes_never_mix():
    predict = GatedPredict()
    batcher = MicroBatcher(predict, capacity=16, max_batch=3, max_wait_s=0.05)
    first = batcher.submit(batcher.reserve(), image(4, 4, 0))
    assert predict.started.wait(5)  # the first batch is computing (alone) and blocks
    shapes = [(4, 4)] * 5 + [(8, 4)] * 2
    futures = [batcher.submit(batcher.reserve(), image(h, w, 10 + index)) for index, (h, w) in enumerate(shapes)]
    wait_until(lambda: batcher.waiting == len(shapes))
    predict.gate.set()
    results = [future.result(5) for future in futures]
    assert first.result(5).batch_size == 1
    for index, result in enumerate(results):  # every request gets its own labels back
        assert np.all(result.labels == 10 + index) and result.labels.shape == shapes[index]
    sizes = [len(batch) for batch in predict.batches]
    assert sizes == [1, 3, 2, 2], sizes  # head (4,4)x3, then (4,4)x2, then the (8,4) pair
    assert all(len(set(batch)) == 1 for batch in predict.batches)
    batcher.close()


def test_capacity_counts_requests_until_released():
    batcher = MicroBatcher(lambda images: np.zeros((len(images), 2, 2), np.uint8), capacity=2, max_batch=1)
    first, second = batcher.reserve(), batcher.reserve()
    with pytest.raises(QueueFullError, match="all 2 slots"):
        batcher.reserve()
    assert batcher.depth == 2
    first.release()
    first.release()  # idempotent
    third = batcher.reserve()
    assert batcher.submit(third, image(2, 2, 1)).result(5).labels.shape == (2, 2)
    second.release()
    third.release()
    assert batcher.depth == 0
    batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.reserve()


def test_lone_request_does_not_wait_for_a_batch():
    batcher = MicroBatcher(lambda images: np.zeros((len(images), 2, 2), np.uint8), capacity=4, max_wait_s=5.0)
    started = time.perf_counter()
    batcher.submit(batcher.reserve(), image(2, 2, 0)).result(5)
    assert time.perf_counter() - started < 1.0  # nobody else was admitted, so max_wait was not spent
    batcher.close()


def test_waits_for_admitted_requests_still_decoding():
    seen = []
    batcher = MicroBatcher(
        lambda images: seen.append(len(images)) or np.zeros((len(images), 2, 2), np.uint8), 4, 4, 2.0
    )
    late = batcher.reserve()  # admitted, still "decoding"
    future = batcher.submit(batcher.reserve(), image(2, 2, 0))
    time.sleep(0.05)
    batcher.submit(late, image(2, 2, 1))
    assert future.result(5).batch_size == 2 and seen == [2]
    batcher.close()


def test_predictor_errors_reach_every_request_and_the_worker_survives():
    calls = []

    def predict(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return np.ones((len(images), 2, 2), np.uint8)

    batcher = MicroBatcher(predict, capacity=4, max_batch=1)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.submit(batcher.reserve(), image(2, 2, 0)).result(5)
    assert batcher.submit(batcher.reserve(), image(2, 2, 0)).result(5).labels.sum() == 4
    batcher.close()


def test_wrong_batch_length_is_an_error_not_a_mixup():
    batcher = MicroBatcher(lambda images: np.zeros((1, 2, 2), np.uint8), capacity=4, max_batch=4, max_wait_s=1.0)
    tickets = [batcher.reserve() for _ in range(2)]
    futures = [batcher.submit(ticket, image(2, 2, 0)) for ticket in tickets]
    with pytest.raises(RuntimeError, match="1 label maps for a batch of 2"):
        futures[0].result(5)
    batcher.close()


def test_close_fails_waiting_requests_and_skips_cancelled_ones():
    predict = GatedPredict()
    batcher = MicroBatcher(predict, capacity=8, max_batch=1)
    running = batcher.submit(batcher.reserve(), image(2, 2, 0))
    assert predict.started.wait(5)
    cancelled = batcher.submit(batcher.reserve(), image(2, 2, 1))
    waiting = batcher.submit(batcher.reserve(), image(2, 2, 2))
    assert cancelled.cancel()
    closer = threading.Thread(target=batcher.close)
    closer.start()
    with pytest.raises(BatcherClosedError):
        waiting.result(5)
    predict.gate.set()
    closer.join(5)
    assert running.result(5).batch_size == 1 and len(predict.batches) == 1
