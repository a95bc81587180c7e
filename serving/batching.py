"""Admission control and dynamic micro-batching for one (model, backend), off the event loop.

A request ``reserve``s a slot (non-blocking; ``QueueFullError`` -> the route answers 503 with
Retry-After) once its image is decoded (bodies being read are bounded by ``serving.admission``, so
slow uploads hold no slot), and holds it until its response is built. So ``capacity`` bounds what a
model's admitted requests hold at once: decoded images waiting, the batch being computed. A single
worker thread runs the predictor, so inference never blocks the event loop and a model never runs
two batches at once (its threads are not oversubscribed).

Batching: the worker takes the oldest waiting image, then adds waiting images of the *same shape*
(a batch is one ``[B,3,H,W]`` array) up to ``max_batch``. It waits up to ``max_wait_s`` for more only
while admitted requests have not submitted yet, so a lone request pays no batching delay.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# list of same-shape uint8 images [H,W,3] -> uint8 labels [B,H,W]
BatchPredict = Callable[[list[np.ndarray]], np.ndarray]


class QueueFullError(Exception):
    """Every slot of this model is taken; retry later."""


class BatcherClosedError(Exception):
    """The service is shutting down; the request was not computed."""


@dataclass(frozen=True)
class BatchResult:
    labels: np.ndarray  # uint8 [H,W], this request's own labels
    queue_seconds: float  # submitted -> its batch started
    compute_seconds: float  # the whole batch's predict call
    batch_size: int


@dataclass(eq=False)  # identity semantics: comparing jobs must never compare their image arrays
class _Job:
    image: np.ndarray
    future: concurrent.futures.Future[BatchResult]
    submitted: float = field(default_factory=time.perf_counter)


class Ticket:
    """One reserved slot. ``release`` is idempotent; use it in a ``finally``."""

    def __init__(self, batcher: MicroBatcher) -> None:
        self._batcher = batcher
        self.submitted = False
        self.released = False

    def release(self) -> None:
        self._batcher._release(self)


class MicroBatcher:
    """Bounded admission + a worker thread that runs ``predict`` on same-shape micro-batches."""

    def __init__(
        self,
        predict: BatchPredict,
        capacity: int,
        max_batch: int = 4,
        max_wait_s: float = 0.005,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if capacity < 1 or max_batch < 1 or max_wait_s < 0:
            raise ValueError(
                f"need capacity >= 1, max_batch >= 1, max_wait_s >= 0; got {capacity, max_batch, max_wait_s}"
            )
        self._predict = predict
        self.capacity = capacity
        self.max_batch = max_batch
        self._max_wait = max_wait_s
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._jobs: collections.deque[_Job] = collections.deque()
        self._admitted = 0  # reserved and not yet released
        self._incoming = 0  # reserved and not yet submitted
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests holding a slot right now (reading, decoding, waiting or computing)."""
        return self._admitted

    @property
    def waiting(self) -> int:
        """Decoded images queued for a batch (not yet computing)."""
        return len(self._jobs)

    @property
    def incoming(self) -> int:
        """Admitted requests that have not submitted their image yet."""
        return self._incoming

    def reserve(self) -> Ticket:
        """Take a slot or raise ``QueueFullError`` / ``BatcherClosedError`` at once (never blocks)."""
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the service is shutting down")
            if self._admitted >= self.capacity:
                raise QueueFullError(f"all {self.capacity} slots are taken")
            self._admitted += 1
            self._incoming += 1
            return Ticket(self)

    def _release(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.released:
                return
            ticket.released = True
            self._admitted -= 1
            if not ticket.submitted:
                self._incoming -= 1
            self._cond.notify_all()  # a waiting batch may stop waiting for this request

    def submit(self, ticket: Ticket, image: np.ndarray) -> concurrent.futures.Future[BatchResult]:
        """Queue uint8 ``image`` ``[H,W,3]`` under ``ticket``; the future resolves with its labels."""
        future: concurrent.futures.Future[BatchResult] = concurrent.futures.Future()
        with self._cond:
            if ticket.released or ticket.submitted:
                raise RuntimeError("a ticket submits exactly one image before it is released")
            if self._closed:
                raise BatcherClosedError("the service is shutting down")
            ticket.submitted = True
            self._incoming -= 1
            self._jobs.append(_Job(image, future))
            self._cond.notify_all()
        return future

    async def run(self, ticket: Ticket, image: np.ndarray) -> BatchResult:
        """``submit`` and await the result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(ticket, image))

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current batch; waiting requests fail with ``BatcherClosedError``."""
        with self._cond:
            self._closed = True
            waiting = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosedError("the service is shutting down"))
        self._thread.join(timeout)

    def _take_matching(self, batch: list[_Job]) -> None:
        """Move waiting jobs with the head's shape into ``batch`` (FIFO among them)."""
        shape = batch[0].image.shape
        remaining: collections.deque[_Job] = collections.deque()
        for job in self._jobs:
            if len(batch) < self.max_batch and job.image.shape == shape:
                batch.append(job)
            else:
                remaining.append(job)
        self._jobs = remaining

    def _collect(self) -> list[_Job] | None:
        """Block for the next batch; None once closed."""
        with self._cond:
            while not self._jobs:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._jobs.popleft()]
            deadline = time.monotonic() + self._max_wait
            while len(batch) < self.max_batch:
                self._take_matching(batch)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or self._incoming == 0 or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _work(self) -> None:
        while (batch := self._collect()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]  # skip cancelled requests
        if not live:
            return
        started = time.perf_counter()
        try:
            labels = self._predict([job.image for job in live])
            if labels.shape[0] != len(live):
                raise RuntimeError(f"predictor returned {labels.shape[0]} label maps for a batch of {len(live)}")
        except Exception as exc:  # delivered to each request; the worker keeps serving
            for job in live:
                job.future.set_exception(exc)
            return
        compute = time.perf_counter() - started
        if self._on_batch is not None:
            self._on_batch(len(live), compute)
        for index, job in enumerate(live):
            result = BatchResult(labels[index], started - job.submitted, compute, len(live))
            job.future.set_result(result)
