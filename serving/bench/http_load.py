"""Bounded concurrent HTTP load (httpx.AsyncClient, one event loop) and the server's memory.

A cell sends exactly ``requests`` requests with at most ``concurrency`` in flight, and stops at a
hard deadline whatever happens: requests still running then are cancelled and counted as
``deadline``, requests never sent as ``not_sent``. Latency percentiles are over 200 answers only:
a fast 503 is a rejection, not a fast inference. Each of a cell's workers is its own client
(``X-Forwarded-For: 198.18.x.y``, the benchmarking address range; uvicorn trusts that header from
loopback), so the server's per-client upload cap sees one upload per client, as from real users,
and a cell measures the queue rather than that cap. Named ``http_load`` so it does not shadow the
standard library's ``http`` package.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import httpx

from clda_deploy.statistics import summarize_timings


@dataclass(frozen=True)
class Outcome:
    """One request: ``status`` is the HTTP code as text, or ``timeout`` / ``deadline`` / ``error:<type>``."""

    status: str
    latency_ms: float
    inference_ms: float | None = None
    queue_ms: float | None = None
    batch_size: int | None = None
    backend: str | None = None


def _header_float(response: httpx.Response, name: str) -> float | None:
    try:
        return float(response.headers[name])
    except (KeyError, ValueError):
        return None


def client_address(worker: int) -> str:
    """The address worker ``worker`` of a cell stands for: 198.18.0.1, 198.18.0.2, ... (RFC 2544)."""
    return f"198.18.{(worker + 1) // 256 % 256}.{(worker + 1) % 256}"


async def _send(
    client: httpx.AsyncClient, params: dict[str, str], body: bytes, limit_s: float, worker: int = 0
) -> Outcome:
    start = time.perf_counter()
    headers = {"Content-Type": "image/png", "X-Forwarded-For": client_address(worker)}
    try:
        response = await asyncio.wait_for(client.post("/v1/segment", params=params, content=body, headers=headers),
                                          limit_s)  # fmt: skip
    except asyncio.TimeoutError:
        return Outcome("timeout", (time.perf_counter() - start) * 1000.0)
    except httpx.HTTPError as exc:
        return Outcome(f"error:{type(exc).__name__}", (time.perf_counter() - start) * 1000.0)
    latency = (time.perf_counter() - start) * 1000.0
    batch = _header_float(response, "X-Batch-Size")
    return Outcome(
        str(response.status_code),
        latency,
        _header_float(response, "X-Inference-Time-Ms"),
        _header_float(response, "X-Queue-Time-Ms"),
        None if batch is None else int(batch),
        response.headers.get("X-Backend"),
    )


async def _load(
    url: str, params: dict[str, str], body: bytes, concurrency: int, requests: int, deadline_s: float, timeout_s: float
) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    claimed = 0
    end = time.monotonic() + deadline_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # trust_env=False: no proxy from the environment may relay loopback traffic elsewhere.
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s, trust_env=False) as client:

        async def worker(index: int) -> None:
            nonlocal claimed
            while claimed < requests and time.monotonic() < end:
                claimed += 1
                remaining = max(end - time.monotonic(), 0.001)
                outcome = await _send(client, params, body, min(timeout_s, remaining), index)
                if outcome.status == "timeout" and remaining < timeout_s:  # stopped by the cell's deadline
                    outcome = replace(outcome, status="deadline")
                outcomes.append(outcome)

        start = time.perf_counter()
        tasks = [asyncio.create_task(worker(index)) for index in range(min(concurrency, requests))]
        _, pending = await asyncio.wait(tasks, timeout=deadline_s + 1.0)
        for task in pending:  # a request the per-request limit did not stop (should not happen)
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall_s = time.perf_counter() - start
    outcomes += [Outcome("deadline", deadline_s * 1000.0)] * (claimed - len(outcomes))
    return outcomes, wall_s


def run_load(
    url: str,
    model: str,
    body: bytes,
    concurrency: int,
    requests: int,
    deadline_s: float,
    timeout_s: float = 60.0,
    output_format: str = "png",
) -> dict[str, Any]:
    """One cell: ``requests`` POSTs of ``body`` to ``model`` with ``concurrency`` in flight."""
    if concurrency < 1 or requests < 1:
        raise ValueError(f"concurrency and requests must be positive, got {concurrency} and {requests}")
    params = {"model": model, "format": output_format}
    outcomes, wall_s = asyncio.run(_load(url, params, body, concurrency, requests, deadline_s, timeout_s))
    return summarize_cell(outcomes, wall_s, requests, concurrency, model)


def summarize_cell(
    outcomes: list[Outcome], wall_s: float, requests: int, concurrency: int, model: str
) -> dict[str, Any]:
    """Status counts, latency of the 200s, throughput and the server-reported time split."""
    ok = [o for o in outcomes if o.status == "200"]
    statuses = Counter(o.status for o in outcomes)
    if len(outcomes) < requests:
        statuses["not_sent"] = requests - len(outcomes)
    backends = sorted({o.backend for o in ok if o.backend})
    cell: dict[str, Any] = {
        "model": model,
        "backend": backends[0] if len(backends) == 1 else (backends or None),
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(ok),
        "statuses": dict(sorted(statuses.items())),
        "wall_s": wall_s,
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else None,
        "latency_ms": summarize_timings([o.latency_ms for o in ok]) if ok else None,
    }
    for key, values in (
        ("server_inference_ms", [o.inference_ms for o in ok]),
        ("server_queue_ms", [o.queue_ms for o in ok]),
    ):
        known = [v for v in values if v is not None]
        cell[key] = summarize_timings(known) if known else None
    sizes = [o.batch_size for o in ok if o.batch_size is not None]
    cell["mean_batch_size"] = sum(sizes) / len(sizes) if sizes else None
    return cell


class RssSampler:
    """Polls the resident set size of a process and its children in a thread; ``stop()`` gives
    before/peak/after in MiB. Peak by polling can miss a spike shorter than ``interval_s``."""

    def __init__(self, pid: int | None, interval_s: float = 0.02) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.before = self.peak = self.after = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int | None:
        if self.pid is None:
            return None
        import psutil

        try:
            process = psutil.Process(self.pid)
            total = process.memory_info().rss
            for child in process.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return None

    def current_mib(self) -> float | None:
        """The RSS now (MiB), also counted towards the peak."""
        value = self._rss()
        if value is None:
            return None
        self.peak = max(self.peak or 0, value)
        return value / 2**20

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = self._rss()
            if value is not None:
                self.peak = max(self.peak or 0, value)

    def start(self) -> RssSampler:
        self.before = self.peak = self._rss()
        if self.pid is not None:
            self._thread = threading.Thread(target=self._poll, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self, settle_s: float = 0.0) -> dict[str, float | None]:
        if settle_s > 0:
            time.sleep(settle_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.after = self._rss()
        if self.after is not None:
            self.peak = max(self.peak or 0, self.after)
        return {
            key: None if value is None else value / 2**20
            for key, value in (("before_mib", self.before), ("peak_mib", self.peak), ("after_mib", self.after))
        }
