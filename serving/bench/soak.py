"""``python -m serving.bench http --soak MINUTES``: a long, mixed, rate-bounded load on loopback.

Why: the server's bounds (queue, body admission, byte and pixel limits) must hold for hours, not
for one burst. Every ``1 / --soak-rate`` seconds one request goes out, its kind taken in turn from
``PATTERN`` (6 valid, 2 malformed, 1 oversize, 1 slow-body in every 10), whatever the answers to
earlier ones: an open loop, so a slow server meets the same demand instead of a politely waiting
client. The client bounds itself too: at most ``MAX_IN_FLIGHT`` requests and ``--soak-slow`` slow
bodies open, each request cut at ``--timeout``; what those bounds did not send is ``skipped``.
Slow bodies come from their own ``X-Forwarded-For`` address (uvicorn trusts that header from
loopback) so they use up no per-client upload slot of the bench's own address. The server's RSS is
sampled every ``--soak-sample`` seconds. ``soak_results`` keeps the books.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from serving.bench.common import DEFAULT_OUT, BenchError
from serving.bench.http_load import RssSampler
from serving.bench.http_settings import HttpSettings
from serving.bench.server import Server, served_models
from serving.bench.soak_results import SoakRecorder, SoakResult

SOAK_OUT = "docs/results"  # where --soak writes unless --out says otherwise
PATTERN = ("valid", "malformed", "valid", "oversize", "valid", "slow", "valid", "malformed", "valid", "valid")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLOW_BODY_BYTES = 64 * 1024  # what a slow body declares; it sends one byte per second of it
OVERSIZE_DECLARED = 1 << 40  # over any max_bytes: refused from the header alone
CHUNK = 64 * 1024
CHUNKED_LIMIT = 1 << 30  # a chunked oversize body gives up here if the server never refuses it
MAX_IN_FLIGHT = 256


def request_kind(index: int) -> tuple[str, int]:
    """Request ``index``'s kind and variant (0 or 1, alternating per round of ``PATTERN``)."""
    return PATTERN[index % len(PATTERN)], (index // len(PATTERN)) % 2


def malformed_body(body: bytes, variant: int) -> bytes:
    """Variant 0: the valid PNG cut in half (422, its pixels cannot be decoded); 1: no image (415)."""
    return body[: max(len(body) // 2, 64)] if variant == 0 else b"this is not an image " * 8


@dataclass(frozen=True)
class SoakPlan:
    """What to send where: the server, the model, for how long, how often, the client's bounds."""

    url: str
    model: str
    duration_s: float
    rate: float
    sample_s: float
    max_slow: int
    timeout_s: float
    slow_interval_s: float = 1.0

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


def plan_from(settings: HttpSettings, url: str) -> SoakPlan:
    """The plan of ``--soak``; a BenchError naming the flag of a value that cannot run."""
    checks = {"--soak": settings.soak_minutes, "--soak-rate": settings.soak_rate,
              "--soak-sample": settings.soak_sample_s}  # fmt: skip
    for flag, value in checks.items():
        if value is None or value <= 0:
            raise BenchError(f"{flag} must be a positive number, got {value}")
    if settings.overload:
        raise BenchError("--soak and --overload are two different runs: give one of them")
    minutes = settings.soak_minutes or 0.0
    return SoakPlan(url, settings.models[0], minutes * 60.0, settings.soak_rate, settings.soak_sample_s,
                    settings.soak_slow, settings.timeout_s)  # fmt: skip


def _head(plan: SoakPlan, framing: str, client: str | None = None) -> bytes:
    host, port = plan.address
    lines = [f"POST /v1/segment?model={plan.model} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: image/png"]
    lines += [framing, *([f"X-Forwarded-For: {client}"] if client else [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _status(sock: socket.socket) -> str:
    """The status code of the response on ``sock``; ``closed`` when the server closed without one.
    A raw socket, not asyncio streams: when the server answers and closes while the body is still
    being sent, the send fails but the answer is still in the kernel's buffer, and a stream
    transport would drop it with the connection."""
    loop, received = asyncio.get_running_loop(), b""
    while b"\r\n" not in received:
        try:
            chunk = await loop.sock_recv(sock, 4096)
        except ConnectionError:
            chunk = b""
        if not chunk:
            break
        received += chunk
    parts = received.split(b" ", 2)
    return parts[1].decode() if received.startswith(b"HTTP/1.") and len(parts) > 1 else "closed"


async def _raw(plan: SoakPlan, head: bytes, chunks: Any, pause_s: float) -> str:
    """Send ``head``, then each of ``chunks`` (``pause_s`` apart) until the server answers; the status."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setblocking(False)
    answer: asyncio.Future[str] | None = None
    try:
        await loop.sock_connect(sock, plan.address)
        answer = asyncio.ensure_future(_status(sock))
        await loop.sock_sendall(sock, head)
        for chunk in chunks:
            done, _ = await asyncio.wait({answer}, timeout=pause_s)
            if done:
                break
            try:
                await loop.sock_sendall(sock, chunk)
            except ConnectionError:  # the server answered and closed: its answer is still readable
                break
        return await answer
    finally:
        if answer is not None:
            answer.cancel()
        sock.close()


async def send_slow(plan: SoakPlan, index: int) -> str:
    """A body that trickles one byte per ``slow_interval_s`` (expected answer: 408)."""
    head = _head(plan, f"Content-Length: {SLOW_BODY_BYTES}", f"198.19.{index // 256 % 256}.{index % 256}") + PNG_MAGIC
    return await _raw(plan, head, (b"\0" for _ in range(SLOW_BODY_BYTES - len(PNG_MAGIC))), plan.slow_interval_s)


async def send_oversize(plan: SoakPlan, variant: int) -> str:
    """Variant 0 declares 1 TiB (413 from the header); 1 streams a chunked body until refused (413)."""
    if variant == 0:
        return await _raw(plan, _head(plan, f"Content-Length: {OVERSIZE_DECLARED}") + PNG_MAGIC, (), 0.0)
    chunk = f"{CHUNK:x}\r\n".encode() + PNG_MAGIC + bytes(CHUNK - len(PNG_MAGIC)) + b"\r\n"
    chunks = (chunk for _ in range(CHUNKED_LIMIT // CHUNK))
    return await _raw(plan, _head(plan, "Transfer-Encoding: chunked"), chunks, 0.0)


async def send_image(client: httpx.AsyncClient, plan: SoakPlan, data: bytes) -> str:
    response = await client.post("/v1/segment", params={"model": plan.model}, content=data,
                                 headers={"Content-Type": "image/png"})  # fmt: skip
    return str(response.status_code)


async def _timed(recorder: SoakRecorder, kind: str, request: Coroutine[Any, Any, str], limit_s: float) -> None:
    start = time.perf_counter()
    try:
        status = await asyncio.wait_for(request, limit_s)
    except asyncio.TimeoutError:
        status = "timeout"
    except (OSError, httpx.HTTPError) as exc:
        status = f"error:{type(exc).__name__}"
    recorder.record(kind, status, (time.perf_counter() - start) * 1000.0)


def _request(kind: str, variant: int, index: int, plan: SoakPlan, client: httpx.AsyncClient, body: bytes) -> Any:
    if kind == "slow":
        return send_slow(plan, index)
    if kind == "oversize":
        return send_oversize(plan, variant)
    return send_image(client, plan, body if kind == "valid" else malformed_body(body, variant))


async def drive(plan: SoakPlan, body: bytes, recorder: SoakRecorder, sampler: RssSampler) -> float:
    """Send ``plan``'s requests, sample RSS, wait for the last answers; the wall time in seconds."""
    tasks: set[asyncio.Task] = set()
    slow_open = [0]
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=plan.url, timeout=plan.timeout_s, limits=limits, trust_env=False) as client:
        start = time.monotonic()
        index, next_sample = 0, start
        while (now := time.monotonic()) < start + plan.duration_s:
            if now >= next_sample:
                recorder.sample(now - start, sampler.current_mib())
                next_sample += plan.sample_s
            due = start + index / plan.rate
            if due > now:
                await asyncio.sleep(min(due, next_sample, start + plan.duration_s) - now)
                continue
            kind, variant = request_kind(index)
            index += 1
            if len(tasks) >= MAX_IN_FLIGHT or (kind == "slow" and slow_open[0] >= plan.max_slow):
                recorder.record(kind, "skipped", 0.0)
                continue
            slow_open[0] += kind == "slow"
            task = asyncio.create_task(_timed(recorder, kind, _request(kind, variant, index, plan, client, body),
                                              plan.timeout_s))  # fmt: skip
            task.add_done_callback(lambda done, slow=kind == "slow": _finished(done, tasks, slow_open, slow))
            tasks.add(task)
        await asyncio.gather(*tasks)
        recorder.sample(time.monotonic() - start, sampler.current_mib())
        return time.monotonic() - start


def _finished(task: asyncio.Task, tasks: set[asyncio.Task], slow_open: list[int], slow: bool) -> None:
    tasks.discard(task)
    slow_open[0] -= slow


def run_soak(server: Server, settings: HttpSettings, body: bytes, image: dict[str, Any]) -> SoakResult:
    """The soak against ``server`` (spawned or running): its record, bound for ``SOAK_OUT`` by default."""
    plan = plan_from(settings, server.url)
    served = {entry["name"] for entry in served_models(server.url)}
    if plan.model not in served:
        raise BenchError(f"{server.url} does not serve model {plan.model}; it serves {', '.join(sorted(served))}")
    recorder = SoakRecorder()
    sampler = RssSampler(server.pid, interval_s=0.5).start()
    wall_s = asyncio.run(drive(plan, body, recorder, sampler))
    recorder.polled_peak_mib = sampler.stop()["peak_mib"]
    about = {"label": server.label, "url": server.url, "env": server.env, "model": plan.model, "pid": server.pid}
    return SoakResult(settings, about, image, wall_s, recorder, soak_out(settings))


def soak_out(settings: HttpSettings) -> str:
    """``--out``, or ``SOAK_OUT`` when it was not given: a soak's record belongs with the docs."""
    return SOAK_OUT if settings.out == DEFAULT_OUT else settings.out
