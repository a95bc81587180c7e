"""What a request may hold before it has an inference-queue slot (DESIGN §9, issue #16).

Why this exists: a queue slot used to be taken before the body was read, so 40 clients trickling
their bodies held every slot and every other request got 503 while ``/readyz`` said 200. Now a
request reads its body under the bounds below and takes a queue slot only once its image is
decoded (``serving.segment.read_upload``), so a slow client costs a connection and nothing else:

- ``max_bytes`` per request (413), counted as chunks arrive (a chunked body declares no length);
- ``max_inflight_bytes`` across all requests (503 + Retry-After): a request reserves its declared
  Content-Length up front, or chunk by chunk without one, then what decoding its image will hold;
  it gives everything back when it takes its queue slot or ends, whichever way it ends;
- ``body_timeout_s`` overall, ``body_idle_timeout_s`` between chunks and ``min_body_rate`` on
  average once ``body_rate_grace_s`` passed (408): each wait for a chunk has one deadline, the
  earliest of the three, so a trickle is cut at the first bound it breaks;
- ``max_uploads_per_client`` bodies being read at once per client address (429 + Retry-After),
  keyed on ``request.client.host`` (behind a proxy, uvicorn's ``--forwarded-allow-ips`` /
  ``FORWARDED_ALLOW_IPS`` decide whether that is the proxy or the address it forwards).

A 408 or 413 asks for ``Connection: close``, so the rest of a slow or oversize body is never read;
after a 429 or 503 (retry later) uvicorn discards the rest of the body and keeps the connection
for the retry. The state is only touched from the event loop, never across an ``await``, so it
needs no lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import anyio
from starlette.requests import ClientDisconnect, Request

from serving.errors import ApiError
from serving.metrics import ServiceMetrics
from serving.settings import Settings

CLOSE = {"Connection": "close"}  # a slow or oversize body is not read to its end: the connection goes


@dataclass(frozen=True)
class BodyLimits:
    """The per-request bounds on reading a body (see the module docstring)."""

    max_bytes: int
    total_s: float
    idle_s: float
    min_rate: int  # bytes/s; 0: no minimum
    grace_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        return cls(settings.max_bytes, settings.body_timeout_s, settings.body_idle_timeout_s,
                   settings.min_body_rate, settings.body_rate_grace_s)  # fmt: skip


@dataclass
class TransferClock:
    """When the next chunk of a body must have arrived, and which setting says so."""

    limits: BodyLimits
    started: float
    last: float = field(default=-1.0)
    received: int = 0

    def __post_init__(self) -> None:
        if self.last < 0:
            self.last = self.started

    def deadline(self) -> tuple[float, str]:
        """(time, setting name): the earliest moment the body breaks a bound if nothing more arrives."""
        limits = self.limits
        bounds = [(self.started + limits.total_s, "body_timeout_s"), (self.last + limits.idle_s, "body_idle_timeout_s")]
        if limits.min_rate > 0:
            # received / elapsed >= min_rate holds until started + received / min_rate; not before the grace ends
            bounds.append((self.started + max(limits.grace_s, self.received / limits.min_rate), "min_body_rate"))
        return min(bounds)

    def arrived(self, size: int, now: float) -> None:
        self.received += size
        self.last = now

    def explain(self, bound: str, now: float) -> str:
        """The 408 message for ``bound``: the limit and what actually arrived."""
        got = f"{self.received} bytes in {now - self.started:.1f} s"
        if bound == "body_timeout_s":
            return f"the body did not arrive within body_timeout_s = {self.limits.total_s:g} s ({got})"
        if bound == "body_idle_timeout_s":
            return f"no body bytes arrived for body_idle_timeout_s = {self.limits.idle_s:g} s ({got})"
        return f"the body arrived slower than min_body_rate = {self.limits.min_rate} bytes/s ({got})"


class ByteBudget:
    """``capacity`` bytes shared by every request; ``take`` never waits, it says no."""

    def __init__(self, capacity: int, metrics: ServiceMetrics | None = None) -> None:
        self.capacity = capacity
        self.used = 0
        self._gauge = None if metrics is None else metrics.inflight_bytes

    def take(self, size: int) -> bool:
        if size > self.capacity - self.used:
            return False
        self._set(self.used + size)
        return True

    def give_back(self, size: int) -> None:
        assert 0 <= size <= self.used, f"giving back {size} bytes of {self.used} taken"
        self._set(self.used - size)

    def _set(self, used: int) -> None:
        self.used = used
        if self._gauge is not None:
            self._gauge.set(used)


class ClientUploads:
    """Bodies being read per client address. An address with none is forgotten, so the table holds
    at most one entry per upload in progress, whatever the number of addresses seen."""

    def __init__(self, limit: int, metrics: ServiceMetrics | None = None) -> None:
        self.limit = limit
        self.active: Counter[str] = Counter()
        self._gauge = None if metrics is None else metrics.uploads

    def begin(self, client: str) -> bool:
        if self.active[client] >= self.limit:  # reading a Counter's missing key adds no entry
            return False
        self.active[client] += 1
        if self._gauge is not None:
            self._gauge.inc()
        return True

    def end(self, client: str) -> None:
        assert self.active[client] > 0, f"no upload in progress for {client}"
        self.active[client] -= 1
        if not self.active[client]:
            del self.active[client]
        if self._gauge is not None:
            self._gauge.dec()


class Admission:
    """The process's body budget and per-client upload counts; ``lease`` one per request."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics | None = None) -> None:
        self.limits = BodyLimits.from_settings(settings)
        self.retry_after = {"Retry-After": str(settings.retry_after_s)}
        self.budget = ByteBudget(settings.max_inflight_bytes, metrics)
        self.uploads = ClientUploads(settings.max_uploads_per_client, metrics)
        self._refusals = None if metrics is None else metrics.refusals

    def refuse(self, reason: str, status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
        """The error to raise, counted in ``clda_refusals_total{reason}`` (``reason``: a setting's name)."""
        if self._refusals is not None:
            self._refusals.labels(reason).inc()
        return ApiError(status, message, headers)

    def lease(self, request: Request) -> Lease:
        """Start this request's upload: 413 when it declares more than ``max_bytes``, 429 when its
        client already sends ``max_uploads_per_client`` bodies."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise self.refuse(
                "max_bytes", 413, f"the body is {declared} bytes; the limit is {self.limits.max_bytes} bytes", CLOSE
            )
        client = request.client.host if request.client is not None else "unknown"
        if not self.uploads.begin(client):
            raise self.refuse(
                "max_uploads_per_client",
                429,
                f"client {client} is already sending max_uploads_per_client = {self.uploads.limit} request "
                "bodies; wait for one to finish",
                self.retry_after,
            )
        return Lease(self, client, int(declared) if declared.isdigit() else None)


class Lease:
    """One request's share: its client's upload slot (until its body is read) and its bytes in the
    budget (until it takes a queue slot or ends). ``close`` gives both back and is idempotent."""

    def __init__(self, admission: Admission, client: str, declared: int | None = None) -> None:
        self.admission = admission
        self.client = client
        self.declared = declared  # the Content-Length, None for a chunked body
        self.held = 0
        self.uploading = True

    def reserve(self, size: int, what: str) -> None:
        """``size`` more bytes: 503 + Retry-After while other requests hold the budget, 413 when this
        request alone would need more than all of it."""
        budget = self.admission.budget
        if self.held + size > budget.capacity:
            raise self.admission.refuse(
                "max_inflight_bytes",
                413,
                f"{what} needs {self.held + size} bytes, more than max_inflight_bytes = {budget.capacity} allows "
                "all requests together",
                CLOSE if self.uploading else None,
            )
        if not budget.take(size):
            raise self.admission.refuse(
                "max_inflight_bytes",
                503,
                f"the server is busy: other requests hold {budget.used} of max_inflight_bytes = {budget.capacity} "
                f"bytes and {what} needs {size} more",
                self.admission.retry_after,
            )
        self.held += size

    def end_upload(self) -> None:
        """The body has arrived: the client may start another upload."""
        if self.uploading:
            self.uploading = False
            self.admission.uploads.end(self.client)

    def close(self) -> None:
        """Give everything back (the request took its queue slot, or ended however it ended)."""
        self.end_upload()
        if self.held:
            self.admission.budget.give_back(self.held)
            self.held = 0


async def _next_chunk(chunks: AsyncGenerator[bytes, None], clock: TransferClock, lease: Lease) -> bytes | None:
    """The next chunk, None at the end; 408 past the clock's deadline, 400 when the client left."""
    deadline, bound = clock.deadline()
    with anyio.CancelScope(deadline=deadline):
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return None
        except ClientDisconnect:
            raise ApiError(400, "the client closed the connection before its body was complete") from None
    # Only reached when the scope cancelled the wait: the deadline passed.
    raise lease.admission.refuse(bound, 408, clock.explain(bound, anyio.current_time()), CLOSE)


async def bounded_body(request: Request, lease: Lease) -> AsyncGenerator[bytes, None]:
    """The body's chunks under every bound of the module docstring, reserved in ``lease`` (the
    declared Content-Length at once, else chunk by chunk)."""
    limits = lease.admission.limits
    if lease.declared is not None:
        lease.reserve(lease.declared, f"a body of {lease.declared} bytes")
    clock = TransferClock(limits, anyio.current_time())
    chunks = request.stream()
    try:
        while (chunk := await _next_chunk(chunks, clock, lease)) is not None:
            clock.arrived(len(chunk), anyio.current_time())
            if clock.received > limits.max_bytes:
                raise lease.admission.refuse(
                    "max_bytes", 413, f"the body is larger than the limit of {limits.max_bytes} bytes", CLOSE
                )
            if clock.received > lease.held:  # undeclared (or longer than declared): reserve as it comes
                lease.reserve(clock.received - lease.held, f"a body of {clock.received} bytes so far")
            yield chunk
    finally:
        await chunks.aclose()
